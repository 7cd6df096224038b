"""What a run reports as it trains: TensorBoard curves, reconstructions, and its figures in models/NAME/run.json."""
import json
import math
import time
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from pixel_distributions import images_to_inputs
from vqmnist.configuration.errors import UserError
from vqmnist.io.files import write_json

NUM_FIXED_IMAGES = 32  # validation digits whose reconstructions TensorBoard shows after every epoch


class NoWriter:
    """Stands in for the SummaryWriter on the processes other than 0 under torchrun: they log nothing."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def log_training(writer: SummaryWriter, progress: tqdm, means: dict[str, float], step: int, prefix: str) -> None:
    """The mean of each training figure since the last point, by name, to TensorBoard (tag prefix + name) and the
    progress bar."""
    for name, value in means.items():
        writer.add_scalar(f"{prefix}{name}", value, step)
    progress.set_postfix({name.removeprefix("loss_"): f"{value:.4g}" for name, value in means.items()
                          if name != "lr"})


def decoder_nll_bits_per_dim(model: torch.nn.Module, scores) -> float | None:
    """A likelihood decoder's NLL of the scored images given their latents in bits per dimension: its
    reconstruction loss is that NLL in nats per pixel. None for any other decoder."""
    return scores.recon_loss / math.log(2) if model.likelihood else None


def log_validation(writer: SummaryWriter, model: torch.nn.Module, scores, fixed_images: torch.Tensor, step: int,
                   epoch_figures: dict[str, float]) -> None:
    """Validation scores at the training step they were reached, on the same axis as the training curves: the
    reconstruction's, the bottleneck's loss terms and health figures by name (val/NAME), the code histogram of a
    discrete bottleneck, the figures it counted over the epoch (train/NAME_per_epoch), and reconstructions."""
    writer.add_scalar("val/loss_reconstruction", scores.recon_loss, step)
    if model.likelihood:
        writer.add_scalar("val/decoder_nll_bits_per_dim", decoder_nll_bits_per_dim(model, scores), step)
    writer.add_scalar("val/mse_pixels", scores.mse, step)
    writer.add_scalar("val/ssim", scores.ssim, step)
    for name, value in scores.losses.items():
        writer.add_scalar(f"val/loss_{name}", value, step)
    for name, value in scores.figures.items():
        writer.add_scalar(f"val/{name}", value, step)
    for name, value in epoch_figures.items():
        writer.add_scalar(f"train/{name}_per_epoch", value, step)
    if scores.counts is not None:
        codes = torch.repeat_interleave(torch.arange(len(scores.counts)), scores.counts)
        writer.add_histogram("val/code_usage", codes, step, bins=len(scores.counts))

    # Imported here: torchvision's import loads its model zoo, which --help and a flag error need
    # not wait for.
    from torchvision.utils import make_grid

    model.eval()
    with torch.no_grad():
        x_recon = model(images_to_inputs(fixed_images)).x_recon
    model.train()
    originals = fixed_images.unsqueeze(1).float() / 255
    # Top half: validation digits; bottom half: their reconstructions. One tag, so the slider steps through them.
    grid = make_grid(torch.cat([originals, model.to_pixels(x_recon)]), nrow=NUM_FIXED_IMAGES // 2)
    writer.add_image("val/reconstructions", grid, step)


def read_run_figures(model_dir) -> dict:
    """The figures a run left in models/NAME/run.json (see RunFigures); {} where it left none."""
    path = Path(model_dir) / "run.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (ValueError, OSError) as error:
        raise UserError(f"{path} cannot be read ({type(error).__name__}): delete it, and vqvae.py writes it "
                        "anew") from None


class RunFigures:
    """The run's figures in models/NAME/run.json, rewritten whole whenever they change, for scripts and benchmarks
    to read instead of the printed lines:
    {"autoencoder": {"epochs": [{"epoch", "step", "recon_loss", "mse", "psnr", "ssim", the bottleneck's loss terms
    (loss_NAME) and health figures (codes_used, perplexity, restarts, kl_bits, ...), "seconds"}, ...], "seconds",
    "best_epoch"}, "prior": {"epochs": [{"epoch", "step", "val_nll_bits", "val_nll_bits_no_class_token", "seconds"},
    ...], "seconds", "best_epoch"}, "stopped": {"cause", "where", "step"}}.
    "seconds" of a part is the time its last process took (a resumed run counts from its resume). Only process 0
    writes (enabled)."""

    def __init__(self, model_dir: Path, fresh: bool, enabled: bool = True):
        self.path = Path(model_dir) / "run.json"
        self.enabled = enabled
        self.figures = read_run_figures(model_dir) if enabled and not fresh else {}
        self.figures.pop("stopped", None)
        self.started: dict[str, float] = {}

    def start(self, part: str, resumed: bool) -> None:
        """A part ("autoencoder" or "prior") starts training now, its clock with it; from its start (not resumed),
        its earlier figures go."""
        self.started[part] = time.perf_counter()
        if not resumed:
            self.figures[part] = {"epochs": []}
            self._write()

    def epoch(self, part: str, **figures) -> None:
        """The figures of one epoch of a part; an epoch trained again (after a resume) replaces its entry."""
        entry = self.figures.setdefault(part, {"epochs": []})
        entry["epochs"] = [row for row in entry["epochs"] if row["epoch"] != figures["epoch"]] + [figures]
        self._write()

    def finished(self, part: str, **figures) -> float:
        """A part is done: its seconds since `start` and `figures` noted; returns the seconds."""
        seconds = time.perf_counter() - self.started[part]
        self.figures.setdefault(part, {"epochs": []}).update(seconds=seconds, **figures)
        self._write()
        return seconds

    def stopped(self, **figures) -> None:
        self.figures["stopped"] = figures
        self._write()

    def _write(self) -> None:
        if self.enabled:
            write_json(self.path, self.figures)
