"""Every part of a checkpoint a run goes on from, checked before anything is built from it or loaded into it.

A failure is a UserError of one line naming the file and the part. `check_weights` holds stored weights against the
module their config builds (on the meta device, so nothing is allocated); `check_optimizer` an optimizer's state
against a fresh optimizer of the same parameters; `check_place` where a training run stands, and its generators.
"""
import math
from numbers import Real
from pathlib import Path

import torch
from torch import Tensor, nn

from vqmnist.configuration.errors import UserError, shown
from vqmnist.configuration.limits import MAX_EPOCHS

DAMAGED = "the file was edited or damaged; use a checkpoint vqvae.py wrote, or start a new run with --overwrite"
# A CPU generator's state: torch.get_rng_state() and torch.Generator().get_state() are uint8 tensors of this shape.
GENERATOR_STATE_SHAPE = torch.Generator().get_state().shape
MAX_STEP = MAX_EPOCHS * 60_000  # an epoch has at most one step per training image


def damaged(path: Path, part: str, problem: str, then: str = DAMAGED) -> UserError:
    return UserError(f"{path}: its {part} {problem}: {then}")


def is_plain(tensor: Tensor) -> bool:
    """Whether a tensor holds its values as training leaves them: dense, strided, not nested, with its data (not on
    the meta device)."""
    return tensor.layout == torch.strided and not tensor.is_nested and tensor.device.type != "meta"


def first_non_finite(value, where: str) -> str | None:
    """Where in a nest of dicts, lists and tensors the first NaN or infinity, or tensor that is not plain, sits; None
    if there is none."""
    if isinstance(value, Tensor):
        return where if not is_plain(value) or (value.is_floating_point() and not torch.isfinite(value).all()) \
            else None
    if isinstance(value, float):
        return None if math.isfinite(value) else where
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    for key, item in items:
        found = first_non_finite(item, f"{where}[{shown(key, 30)}]")
        if found is not None:
            return found
    return None


def check_plain_values(config, path: Path, part: str) -> None:
    """Refuse a stored config (a dict, nested at most once, as a bottleneck's is in the model's) holding anything
    but the plain values a config has: booleans, integers of at most 64 bits, finite or infinite floats, short
    strings and lists or tuples of them, None."""
    if not isinstance(config, dict):
        raise damaged(path, part, f"is a {type(config).__name__}, not a dict")
    for key, value in config.items():
        if not isinstance(key, str):
            raise damaged(path, part, f"has a field named {shown(key, 30)}, not a name")
        if isinstance(value, dict) and part.count(".") == 0:
            check_plain_values(value, path, f"{part}.{key}")
            continue
        items = value if type(value) in (list, tuple) else (value,)
        for item in items:
            if item is not None and type(item) not in (bool, int, float, str) or (
                    type(item) is int and not -2 ** 63 <= item < 2 ** 63) or (type(item) is str and len(item) > 100):
                raise damaged(path, part, f"gives {key} the value {shown(value)}, which no config holds")


def check_weights(module: nn.Module, weights, path: Path, part: str = "weights") -> None:
    """Refuse stored weights (a state dict) that `module`, built from their config, could not take as they are: a
    missing or extra key, another shape or dtype (int, bool, complex and float16 copies are not cast), a NaN or an
    infinity, or a buffer no training leaves (a negative BatchNorm variance, or one a module lists in its
    `nonnegative_buffers`)."""
    if not isinstance(weights, dict):
        raise damaged(path, part, f"are a {type(weights).__name__}, not a state dict")
    expected = module.state_dict()
    extra, missing = sorted(map(str, weights.keys() - expected.keys())), sorted(expected.keys() - weights.keys())
    if missing or extra:
        which = f"lack {', '.join(missing[:3])}" if missing else f"hold unknown {', '.join(extra[:3])}"
        raise damaged(path, part, f"do not fit its config: they {which}")
    for name, tensor in expected.items():
        stored = weights[name]
        if not isinstance(stored, Tensor):
            raise damaged(path, part, f"give {name} as a {type(stored).__name__}, not a tensor")
        if not is_plain(stored):
            raise damaged(path, part, f"give {name} as a sparse, nested or empty (meta) tensor, which training never "
                                      "writes")
        if stored.dtype != tensor.dtype:
            raise damaged(path, part, f"give {name} as {stored.dtype} where the model holds {tensor.dtype}")
        if stored.shape != tensor.shape:
            raise damaged(path, part, f"give {name} the shape {tuple(stored.shape)} where its config makes "
                                      f"{tuple(tensor.shape)}")
        if stored.is_floating_point() and not torch.isfinite(stored).all():
            raise damaged(path, part, f"hold a NaN or an infinity in {name}",
                          "the run that wrote it diverged; use another checkpoint, such as best.pt of the run")
    for prefix, submodule in module.named_modules():
        names = list(getattr(submodule, "nonnegative_buffers", ()))
        if isinstance(submodule, nn.modules.batchnorm._BatchNorm) and submodule.track_running_stats:
            names += ["running_var", "num_batches_tracked"]
        for name in names:
            key = f"{prefix}.{name}" if prefix else name
            if key in weights and (weights[key] < 0).any():
                raise damaged(path, part, f"hold a negative {key}, which no training leaves")


def check_optimizer(optimizer: torch.optim.Optimizer, stored, path: Path, part: str = "optimizer state") -> None:
    """Refuse a stored optimizer state that is not one of `optimizer` (freshly made over the model's parameters): of
    another optimizer, for other parameters or shapes, or holding a NaN or an infinity."""
    fresh = optimizer.state_dict()
    if not isinstance(stored, dict) or not isinstance(stored.get("state"), dict) or \
            not isinstance(stored.get("param_groups"), list):
        raise damaged(path, part, "is not an optimizer's state dict")
    groups = stored["param_groups"]
    if len(groups) != len(fresh["param_groups"]) or not all(
            isinstance(group, dict) and group.keys() == expected.keys()
            and group["params"] == expected["params"] for group, expected in zip(groups, fresh["param_groups"])):
        raise damaged(path, part, f"is not that of this run's {type(optimizer).__name__} over its parameters")
    shapes = {index: parameter.shape for index, parameter in
              enumerate(parameter for group in optimizer.param_groups for parameter in group["params"])}
    for index, entry in stored["state"].items():
        if index not in shapes or not isinstance(entry, dict):
            raise damaged(path, part, f"holds state for a parameter {shown(index, 30)} the model does not have")
        for name, value in entry.items():
            if isinstance(value, Tensor) and value.dim() > 0 and value.shape != shapes[index]:
                raise damaged(path, part, f"gives parameter {index} a {name} of shape {tuple(value.shape)}, not "
                                          f"{tuple(shapes[index])}")
    found = first_non_finite(stored, "")
    if found is not None:
        raise damaged(path, part, f"holds a NaN, an infinity or a tensor training never writes at {found}")


def check_count(value, path: Path, part: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise damaged(path, part, f"is {shown(value)}, not an integer from {low:,} to {high:,}")
    return value


def check_generator_state(value, path: Path, part: str) -> None:
    if not isinstance(value, Tensor) or not is_plain(value) or value.dtype != torch.uint8 or value.shape != GENERATOR_STATE_SHAPE:
        raise damaged(path, part, "is not a random-number generator's state")


def check_place(checkpoint: dict, path: Path, epochs: int, steps_per_epoch: int) -> None:
    """Refuse a training checkpoint whose place does not hold together: its epoch, step and batch (of `epochs` of
    `steps_per_epoch`), its "training" entry (schedule, generators, best score) and its validation figures."""
    epoch = check_count(checkpoint["epoch"], path, "epoch", 0, epochs)
    step = check_count(checkpoint["step"], path, "step", 0, MAX_STEP)
    training = checkpoint["training"]
    if not isinstance(training, dict):
        raise damaged(path, "training state", f"is a {type(training).__name__}, not a dict")
    missing = sorted({"schedule", "batches_done", "shuffle_rng", "torch_rng", "cuda_rng", "best_score",
                      "best_epoch"} - training.keys())
    if missing:
        raise damaged(path, "training state", f"lacks {', '.join(missing)}")
    batches = check_count(training["batches_done"], path, "batches done", 0, steps_per_epoch)
    if step < batches or (epoch == epochs and batches):
        raise damaged(path, "step", f"{step} does not fit epoch {epoch}, batch {batches}")
    check_count(training["best_epoch"], path, "best epoch", 0, epoch)
    best = training["best_score"]
    if not isinstance(best, Real) or isinstance(best, bool) or math.isnan(best):
        raise damaged(path, "best score", f"is {shown(best)}, not a number")
    check_generator_state(training["shuffle_rng"], path, "shuffle generator")
    check_generator_state(training["torch_rng"], path, "random-number generator")
    cuda = training["cuda_rng"]
    if cuda is not None and (not isinstance(cuda, Tensor) or not is_plain(cuda) or cuda.dtype != torch.uint8 or cuda.dim() != 1):
        raise damaged(path, "CUDA generator", "is not a random-number generator's state")
    schedule = training["schedule"]
    if not isinstance(schedule, dict) or type(schedule.get("last_epoch")) is not int:
        raise damaged(path, "learning-rate schedule", "is not a schedule's state dict")
    found = first_non_finite(schedule, "")
    if found is not None:
        raise damaged(path, "learning-rate schedule", f"holds a NaN or an infinity at {found}")
    if checkpoint.get("val") is not None and not isinstance(checkpoint.get("val"), dict):
        raise damaged(path, "validation figures", f"are a {type(checkpoint['val']).__name__}, not a dict")
