"""What a checkpoint file holds, written down once with a format number: making, checking, loading and exporting it.

Three kinds of file, all plain dicts read with torch.load(..., weights_only=True):
- a training checkpoint (models/NAME/last.pt after every epoch or stop, best.pt at the best validation epoch):
  TRAINING_KEYS, everything --resume needs;
- best.pt with its prior: the same, plus "prior" (PRIOR_KEYS) once the prior has trained on its codes;
- an exported model (export_model.py): MODEL_KEYS and "prior", without what only --resume needs.
generate.py and evaluate.py read any of them, since each holds MODEL_KEYS.
"""
import math
import pickle
import shlex
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import Tensor

from cli import UserError
from files import save_torch
from modules import VQVAE, VQVAEConfig
from prior import CodePrior, PriorConfig

FORMAT = 2  # format 1: the files of before this number existed, with the flags' older names in "args"
MODEL_KEYS = ("format", "config", "model", "epoch", "step", "val", "args")
TRAINING_KEYS = MODEL_KEYS + ("optimizer", "training")
EXPORT_KEYS = MODEL_KEYS + ("prior",)
PRIOR_KEYS = ("config", "model", "epoch", "val_nll_bits", "val_nll_bits_unconditional")
# Format 1 named these training flags after the flag instead of the config field they set.
FORMAT_1_ARG_NAMES = {"k": "num_embeddings", "codebook": "codebook_update", "decay": "ema_decay",
                      "init": "codebook_init", "prior_layers": "prior_num_layers", "prior_heads": "prior_num_heads"}


@dataclass
class RunState:
    """Where a training run stands: `epoch` epochs done, then `batches_done` batches of the next, whose batch order
    comes from the shuffle generator's state `shuffle_rng` (taken at the start of that epoch)."""

    epoch: int = 0
    step: int = 0
    batches_done: int = 0
    best_recon_loss: float = math.inf
    best_epoch: int = 0
    shuffle_rng: Tensor | None = None


def training_checkpoint(model: VQVAE, optimizer, schedule, state: RunState, args: dict, val: dict | None,
                        device: torch.device) -> dict:
    """A training checkpoint (TRAINING_KEYS) of the run as it stands, the random-number generators included."""
    training = {
        "schedule": schedule.state_dict(),
        "batches_done": state.batches_done,
        "shuffle_rng": state.shuffle_rng,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "best_recon_loss": state.best_recon_loss,
        "best_epoch": state.best_epoch,
    }
    return {"format": FORMAT, "config": asdict(model.config), "model": model.state_dict(), "epoch": state.epoch,
            "step": state.step, "val": val, "args": args, "optimizer": optimizer.state_dict(), "training": training}


def restore_training(checkpoint: dict, model: VQVAE, optimizer, schedule, device: torch.device) -> RunState:
    """Load a training checkpoint's whole state into the model, optimizer, schedule and generators."""
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    training = checkpoint["training"]
    schedule.load_state_dict(training["schedule"])
    torch.set_rng_state(training["torch_rng"])
    if device.type == "cuda" and training["cuda_rng"] is not None:
        torch.cuda.set_rng_state(training["cuda_rng"], device)
    return RunState(epoch=checkpoint["epoch"], step=checkpoint["step"], batches_done=training["batches_done"],
                    best_recon_loss=training["best_recon_loss"], best_epoch=training["best_epoch"],
                    shuffle_rng=training["shuffle_rng"])


def prior_entry(prior: CodePrior, epoch: int, val_nll_bits: float, val_nll_bits_unconditional: float) -> dict:
    """The "prior" of best.pt (PRIOR_KEYS)."""
    return {"config": asdict(prior.config), "model": prior.state_dict(), "epoch": epoch,
            "val_nll_bits": val_nll_bits, "val_nll_bits_unconditional": val_nll_bits_unconditional}


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
    checkpoint["format"] = FORMAT
    return checkpoint


def load_checkpoint(path, device="cpu") -> dict:
    """Read a checkpoint with weights_only=True, which refuses pickles that would run code, in the current format;
    a file that lacks one of MODEL_KEYS is refused with one line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}: train one with `python vqvae.py` or pass --model PATH")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
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


def load_model(path, device="cpu") -> tuple[VQVAE, dict]:
    """Rebuild the model from the config stored in the checkpoint and load its weights, in eval mode."""
    checkpoint = load_checkpoint(path, device)
    known = {field.name for field in fields(VQVAEConfig)}
    config = checkpoint["config"]
    if not isinstance(config, dict) or not config.keys() <= known:
        raise UserError(f"{path} has a model config this version does not know: {config}")
    try:
        model = VQVAE(VQVAEConfig(**config))
    except (ValueError, TypeError) as error:
        raise UserError(f"{path} has a model config this version cannot build: {error}") from None
    try:
        model.load_state_dict(checkpoint["model"])
    except (RuntimeError, TypeError, AttributeError) as error:
        raise UserError(f"{path}: its weights do not fit its config ({str(error).splitlines()[0][:160]})") from None
    check_weights_finite(model, path)
    return model.to(device).eval(), checkpoint


def check_weights_finite(module: torch.nn.Module, path) -> None:
    """Refuse weights that hold a NaN or an infinity: every score computed from them would be meaningless."""
    for name, tensor in module.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise UserError(f"{path} holds non-finite weights (NaN or infinity in {name}): the run that wrote it "
                            "diverged; use another checkpoint, such as best.pt of the run")


def load_prior(checkpoint: dict, path, device="cpu") -> CodePrior:
    """The prior stored in a checkpoint (under "prior", beside the autoencoder it was trained for), in eval mode."""
    stored = checkpoint.get("prior")
    if stored is None:
        name = Path(path).parent.name
        raise UserError(f"{path} holds no prior over the codes: train one for it with `python vqvae.py "
                        f"--output-folder {shlex.quote(name)} --prior-only`, or use --input noise")
    known = {field.name for field in fields(PriorConfig)}
    try:
        missing = [key for key in PRIOR_KEYS if key not in stored]
        if missing:
            raise ValueError(f"it lacks {', '.join(missing)}")
        if not stored["config"].keys() <= known:
            raise ValueError(f"unknown fields {sorted(stored['config'].keys() - known)}")
        prior = CodePrior(PriorConfig(**stored["config"]))
        prior.load_state_dict(stored["model"])
    except (KeyError, AttributeError, ValueError, TypeError, RuntimeError) as error:
        raise UserError(f"{path}: its prior cannot be rebuilt ({str(error).splitlines()[0][:160]}); retrain it "
                        "with `python vqvae.py --prior-only`") from None
    check_weights_finite(prior, path)
    if prior.config.num_embeddings != checkpoint["config"]["num_embeddings"]:
        raise UserError(f"{path}: its prior models {prior.config.num_embeddings} codes but the autoencoder has "
                        f"{checkpoint['config']['num_embeddings']}; retrain it with `python vqvae.py --prior-only`")
    return prior.to(device).eval()
