"""What a checkpoint file holds, written down once with a format number: making, checking, loading and exporting it.

Four kinds of file, all plain dicts read with torch.load(..., weights_only=True):
- a training checkpoint (models/NAME/last.pt after every epoch or stop, best.pt at the best validation epoch):
  TRAINING_KEYS, everything --resume needs;
- best.pt with its prior: the same, plus "prior" (PRIOR_KEYS) once the prior has trained on its codes;
- the prior's training checkpoint (models/NAME/prior_last.pt after every prior epoch or stop):
  PRIOR_TRAINING_KEYS, everything a --resume of the prior needs;
- an exported model (export_model.py): MODEL_KEYS and "prior", without what only --resume needs.
generate.py and evaluate.py read any but the prior's training checkpoint, since each holds MODEL_KEYS;
`vqmnist.checkpoints.loading.load_model` rebuilds the model from one.
"""
import math
import pickle
import shlex
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import Tensor, nn

from prior import CodePrior, PriorConfig
from vqmnist.checkpoints.checks import DAMAGED, check_optimizer, check_plain_values, check_weights
from vqmnist.configuration.errors import UserError, shown
from vqmnist.configuration.limits import check_size
from vqmnist.io.data import DATASETS, NUM_CLASSES
from vqmnist.io.files import read_torch_quietly, save_torch

# Format 1: the files of before this number existed, with the flags' older names in "args". Format 2: one flat
# model config holding every bottleneck's fields, the bottleneck's weights under "quantizer.", "best_recon_loss".
# Format 3: the prior's NLL given the no-class token stored as "val_nll_bits_unconditional".
FORMAT = 4
MODEL_KEYS = ("format", "config", "model", "epoch", "step", "val", "args")
TRAINING_KEYS = MODEL_KEYS + ("optimizer", "training")
EXPORT_KEYS = MODEL_KEYS + ("prior",)
PRIOR_KEYS = ("config", "model", "epoch", "val_nll_bits", "val_nll_bits_no_class_token")
PRIOR_TRAINING_KEYS = ("format", "prior", "optimizer", "training", "epoch", "step", "settings", "autoencoder_step")
# Format 1 named these training flags after the flag instead of the config field they set.
FORMAT_1_ARG_NAMES = {"k": "num_embeddings", "codebook": "codebook_update", "decay": "ema_decay",
                      "init": "codebook_init", "prior_layers": "prior_num_layers", "prior_heads": "prior_num_heads"}
# Formats 1 and 2 kept each bottleneck's settings among the autoencoder's: these were each one's.
FORMAT_2_AUTOENCODER_FIELDS = ("in_channels", "hidden_size", "num_residual_blocks", "decoder_output", "bottleneck")
FORMAT_2_BOTTLENECK_FIELDS = {
    "vq": ("num_embeddings", "code_dim", "codebook_update", "ema_decay", "codebook_init", "restart_threshold",
           "cosine", "beta"),
    "fsq": ("fsq_levels",),
    "gaussian": ("code_dim", "kl_weight"),
}


@dataclass
class RunState:
    """Where a training run stands: `epoch` epochs done, then `batches_done` batches of the next, whose batch order
    comes from the shuffle generator's state `shuffle_rng` (taken at the start of that epoch); the best validation
    score so far (lower is better) and its epoch."""

    epoch: int = 0
    step: int = 0
    batches_done: int = 0
    best_score: float = math.inf
    best_epoch: int = 0
    shuffle_rng: Tensor | None = None


def training_state(state: RunState, schedule, device: torch.device) -> dict:
    """The "training" entry of a training checkpoint: the schedule, where the run stands, the random-number
    generators' states."""
    return {
        "schedule": schedule.state_dict(),
        "batches_done": state.batches_done,
        "shuffle_rng": state.shuffle_rng,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "best_score": state.best_score,
        "best_epoch": state.best_epoch,
    }


def restore_training_state(training: dict, epoch: int, step: int, schedule, device: torch.device) -> RunState:
    """Load a "training" entry into the schedule and the generators; returns where the run stands."""
    schedule.load_state_dict(training["schedule"])
    torch.set_rng_state(training["torch_rng"])
    if device.type == "cuda" and training["cuda_rng"] is not None:
        torch.cuda.set_rng_state(training["cuda_rng"], device)
    return RunState(epoch=epoch, step=step, batches_done=training["batches_done"],
                    best_score=training["best_score"], best_epoch=training["best_epoch"],
                    shuffle_rng=training["shuffle_rng"])


def training_checkpoint(model: nn.Module, optimizer, schedule, state: RunState, args: dict, val: dict | None,
                        device: torch.device) -> dict:
    """A training checkpoint (TRAINING_KEYS) of the run as it stands, the random-number generators included."""
    return {"format": FORMAT, "config": asdict(model.config), "model": model.state_dict(), "epoch": state.epoch,
            "step": state.step, "val": val, "args": args, "optimizer": optimizer.state_dict(),
            "training": training_state(state, schedule, device)}


def restore_training(checkpoint: dict, weights: dict, module: nn.Module, optimizer, schedule, device: torch.device,
                     path: Path, what: str = "optimizer state") -> RunState:
    """Load a training checkpoint's whole state (last.pt's or prior_last.pt's): `weights` into the module, its
    optimizer state (checked first, `what` naming it) into the optimizer, then the schedule and generators."""
    check_optimizer(optimizer, checkpoint["optimizer"], path, what)
    module.load_state_dict(weights)
    optimizer.load_state_dict(checkpoint["optimizer"])
    return restore_training_state(checkpoint["training"], checkpoint["epoch"], checkpoint["step"], schedule, device)


def prior_entry(prior: CodePrior, epoch: int, val_nll_bits: float, val_nll_bits_no_class_token: float) -> dict:
    """The "prior" of best.pt (PRIOR_KEYS): its validation NLL given the class, and given the no-class token."""
    return {"config": asdict(prior.config), "model": prior.state_dict(), "epoch": epoch,
            "val_nll_bits": val_nll_bits, "val_nll_bits_no_class_token": val_nll_bits_no_class_token}


def prior_training_checkpoint(prior: CodePrior, optimizer, schedule, state: RunState, settings: dict,
                              autoencoder_step: int, device: torch.device) -> dict:
    """The prior's training checkpoint (PRIOR_TRAINING_KEYS): its weights, optimizer and place, its settings, and
    the step of the autoencoder whose codes it models (best.pt's), so that it resumes only on those codes."""
    return {"format": FORMAT, "prior": {"config": asdict(prior.config), "model": prior.state_dict()},
            "optimizer": optimizer.state_dict(), "training": training_state(state, schedule, device),
            "epoch": state.epoch, "step": state.step, "settings": settings, "autoencoder_step": autoencoder_step}


def exported(checkpoint: dict) -> dict:
    """The checkpoint without what only --resume needs (EXPORT_KEYS, "prior" where it has one)."""
    return {key: checkpoint[key] for key in EXPORT_KEYS if key in checkpoint}


def save_checkpoint(path, checkpoint: dict) -> None:
    """Write a checkpoint atomically: a crash mid-save leaves the previous file intact."""
    save_torch(path, checkpoint)


def _upgrade(checkpoint: dict, path: Path) -> dict:
    """The checkpoint in the current format; a file from a newer version of the project is refused."""
    version = checkpoint.get("format", 1)
    if not isinstance(version, int) or not 1 <= version <= FORMAT:
        raise UserError(f"{path} is a checkpoint of format {version!r}, which this version of the project (format "
                        f"{FORMAT}) cannot read: update the code, or use a checkpoint it wrote")
    if version == 1 and isinstance(checkpoint.get("args"), dict):
        checkpoint["args"] = {FORMAT_1_ARG_NAMES.get(name, name): value for name, value in checkpoint["args"].items()}
    if version <= 2:
        config = checkpoint["config"]
        if isinstance(config, dict):
            name = config.get("bottleneck", "vq")
            checkpoint["config"] = {
                **{key: value for key, value in config.items() if key in FORMAT_2_AUTOENCODER_FIELDS},
                "bottleneck_config": {key: config[key] for key in FORMAT_2_BOTTLENECK_FIELDS.get(name, ())
                                      if key in config}}
        if isinstance(checkpoint["model"], dict):
            checkpoint["model"] = {("bottleneck." + key.removeprefix("quantizer.") if key.startswith("quantizer.")
                                    else key): value for key, value in checkpoint["model"].items()}
        if isinstance(checkpoint.get("training"), dict) and "best_recon_loss" in checkpoint["training"]:
            checkpoint["training"]["best_score"] = checkpoint["training"].pop("best_recon_loss")
    prior = checkpoint.get("prior")
    if version <= 3 and isinstance(prior, dict) and "val_nll_bits_unconditional" in prior:
        # Format 3 called the NLL given the no-class token "unconditional", the word evaluate.py keeps for the class
        # summed out.
        prior["val_nll_bits_no_class_token"] = prior.pop("val_nll_bits_unconditional")
    checkpoint["format"] = FORMAT
    return checkpoint


def load_checkpoint(path, device="cpu") -> dict:
    """Read a checkpoint with weights_only=True, which refuses pickles that would run code, in the current format;
    a file that lacks one of MODEL_KEYS is refused with one line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}: train one with `python vqvae.py` or pass --model PATH")
    try:
        checkpoint = read_torch_quietly(path, device)
    except pickle.UnpicklingError:
        raise UserError(f"{path} is not a checkpoint written by vqvae.py (or it would run code when loaded, "
                        "which is refused)") from None
    except (RuntimeError, EOFError, ValueError, OSError) as error:
        raise UserError(f"{path} is truncated or corrupt ({type(error).__name__}): use another checkpoint, such "
                        "as last.pt beside it") from None
    if not isinstance(checkpoint, dict) or not {"config", "model"} <= checkpoint.keys():
        raise UserError(f"{path} is not a VQ-VAE checkpoint of this project (it holds no model config and weights)")
    checkpoint = _upgrade(checkpoint, path)
    missing = [key for key in MODEL_KEYS if key not in checkpoint]
    if missing:
        raise UserError(f"{path} is an incomplete checkpoint (it lacks {', '.join(missing)}): use another one, "
                        "such as last.pt or best.pt of the run, or train again")
    return checkpoint


def trained_dataset(checkpoint: dict, path) -> str:
    """The --dataset the checkpoint's run trained on: mnist for a run from before the flag; one line for a stored
    value that is none of DATASETS."""
    stored = checkpoint["args"].get("dataset", "mnist") if isinstance(checkpoint["args"], dict) else "mnist"
    if stored not in DATASETS:
        raise UserError(f"{path}: its stored --dataset {shown(stored)} is none of {', '.join(DATASETS)}: {DAMAGED}")
    return stored


def trained_val_size(checkpoint: dict, path, default: int) -> int:
    """The --val-size the checkpoint's run held out (its validation split), `default` (vqvae.py's) for a run from
    before the flag; one line for a stored value that is not a whole number."""
    stored = checkpoint["args"].get("val_size", default) if isinstance(checkpoint["args"], dict) else default
    if type(stored) is not int:
        raise UserError(f"{path} stores a --val-size of {shown(stored)}, not a whole number: {DAMAGED}")
    return stored


def load_prior_training(path: Path) -> dict | None:
    """The prior's training checkpoint at path (PRIOR_TRAINING_KEYS), or None where there is none; one that cannot
    be read, or of another format, is refused in one line."""
    if not path.is_file():
        return None
    try:
        checkpoint = read_torch_quietly(path)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as error:
        raise UserError(f"{path} is not a readable prior training checkpoint ({type(error).__name__}): delete it "
                        "and train the prior again with --prior-only") from None
    # Format 3's prior training checkpoints hold what format 4's do.
    if not isinstance(checkpoint, dict) or checkpoint.get("format") not in (3, FORMAT) or \
            not all(key in checkpoint for key in PRIOR_TRAINING_KEYS):
        raise UserError(f"{path} is not a prior training checkpoint of this version: delete it and train the prior "
                        "again with --prior-only")
    if isinstance(checkpoint["settings"], dict):
        # Written before --prior-distorted: its prior trained on the training set's own grids alone.
        checkpoint["settings"].setdefault("distorted", 0.0)
    return checkpoint


def prior_hint(path: Path) -> str:
    """How to give the checkpoint at path a prior: --prior-only for the run folder it sits in, models/NAME (NAME may
    hold a slash, as models/study/NAME does); for a file elsewhere, how to make it one."""
    try:
        run = path.resolve().parent.relative_to(Path("models").resolve())
    except ValueError:
        run = None
    if run is not None and run.parts and path.name == "best.pt":
        return f"train one for it with `python vqvae.py --output-folder {shlex.quote(str(run))} --prior-only`"
    return ("copy it to models/NAME/best.pt and train one for it with `python vqvae.py --output-folder NAME "
            "--prior-only`")


def check_prior_fits(config: PriorConfig, autoencoder: nn.Module, path) -> None:
    """Refuse a prior whose config does not model the code grids of `autoencoder` (a VQVAE) and MNIST's classes."""
    bottleneck = autoencoder.bottleneck
    for name, ours, what in (("num_embeddings", bottleneck.num_embeddings, "codes"),
                             ("levels", bottleneck.code_levels, "codes a position"),
                             ("grid_size", autoencoder.latent_side, "positions a side of the code grid"),
                             ("num_classes", NUM_CLASSES, "classes")):
        if getattr(config, name) != ours:
            raise UserError(f"{path}: its prior models {getattr(config, name)} {what} but the autoencoder's have "
                            f"{ours}; retrain it with `python vqvae.py --prior-only`")


def stored_prior(stored, path: Path, autoencoder: nn.Module, keys=("config", "model")) -> CodePrior:
    """The prior a checkpoint stores (best.pt's "prior", with `keys` PRIOR_KEYS; prior_last.pt's, its config and
    weights), built on the meta device: its config buildable, no larger than this project builds and modelling the
    code grids of `autoencoder`, its weights fitting it as they are (check_weights), its class frequencies summing
    to 1. Anything else is one line naming the file."""
    retrain = "retrain it with `python vqvae.py --prior-only`"
    missing = [key for key in keys if key not in stored] if isinstance(stored, dict) else list(keys)
    if missing:
        raise UserError(f"{path}: its prior lacks {', '.join(missing)}; {retrain}")
    check_plain_values(stored["config"], path, "prior's config")
    try:
        unknown = stored["config"].keys() - {field.name for field in fields(PriorConfig)}
        if unknown:
            raise ValueError(f"fields this version does not know: {', '.join(sorted(unknown))}")
        config = PriorConfig(**stored["config"])
        meta = check_size(lambda: CodePrior(config), "the prior")
    except (ValueError, TypeError) as error:
        raise UserError(f"{path}: its prior's config cannot be built ({str(error).splitlines()[0][:160]}); "
                        f"{retrain}") from None
    check_prior_fits(config, autoencoder, path)
    check_weights(meta, stored["model"], path, "prior's weights")
    if abs(float(stored["model"]["class_frequencies"].double().sum()) - 1) > 1e-3:
        raise UserError(f"{path}: its prior's class frequencies do not sum to 1, which no training leaves: "
                        f"{DAMAGED}")
    return meta


def no_prior(path: Path, instead: str = "") -> UserError:
    """The line for a checkpoint that holds no prior, with how to give it one, and `instead` (", or ...": what the
    script can do without one)."""
    return UserError(f"{path} holds no prior over the codes: {prior_hint(path)}{instead}")


def load_prior(checkpoint: dict, path, autoencoder: nn.Module, device="cpu") -> CodePrior:
    """The prior stored in a checkpoint (under "prior"), checked against `autoencoder` (the VQVAE beside it, whose
    code grids it models; stored_prior), in eval mode on the device."""
    stored = checkpoint.get("prior")
    if stored is None:
        raise no_prior(Path(path))
    prior = CodePrior(stored_prior(stored, Path(path), autoencoder, PRIOR_KEYS).config)
    prior.load_state_dict(stored["model"])
    return prior.to(device).eval()
