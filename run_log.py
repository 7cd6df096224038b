"""What a run reports as it trains: TensorBoard curves, reconstructions, and its figures in models/NAME/run.json."""
import json
import math
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import make_grid
from tqdm import tqdm

from cli import UserError
from files import write_json
from modules import VQVAE, images_to_inputs

NUM_FIXED_IMAGES = 32  # validation digits whose reconstructions TensorBoard shows after every epoch


class NoWriter:
    """Stands in for the SummaryWriter on the processes other than 0 under torchrun: they log nothing."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def log_training(writer: SummaryWriter, progress: tqdm, means: torch.Tensor, lr: float, step: int,
                 discrete: bool = True) -> None:
    """Mean losses since the last point (one read from the device) to TensorBoard and the progress bar: codebook and
    commitment losses and perplexity for codes (VQ, FSQ), the KL for the Gaussian."""
    total, recon, codebook, commitment, kl, perplexity = means.tolist()
    writer.add_scalar("train/loss", total, step)
    writer.add_scalar("train/loss_reconstruction", recon, step)
    writer.add_scalar("train/lr", lr, step)
    if discrete:
        writer.add_scalar("train/loss_codebook", codebook, step)
        writer.add_scalar("train/loss_commitment", commitment, step)
        writer.add_scalar("train/perplexity", perplexity, step)
        progress.set_postfix(loss=f"{total:.4f}", recon=f"{recon:.4f}", perplexity=f"{perplexity:.0f}")
    else:
        writer.add_scalar("train/kl_bits", kl / math.log(2), step)
        progress.set_postfix(loss=f"{total:.4f}", recon=f"{recon:.4f}", kl=f"{kl / math.log(2):.0f} bits")


def log_validation(writer: SummaryWriter, model: VQVAE, scores, fixed_images: torch.Tensor, step: int,
                   restarts: int = 0) -> None:
    """Validation scores at the training step they were reached, on the same axis as the training curves, with the
    codebook's health (dead codes over the split, restarts in the epoch) or the Gaussian's KL."""
    writer.add_scalar("val/loss_reconstruction", scores.recon_loss, step)
    writer.add_scalar("val/mse_pixels", scores.mse, step)
    writer.add_scalar("val/ssim", scores.ssim, step)
    if model.discrete:
        writer.add_scalar("val/loss_codebook", scores.codebook_loss, step)
        writer.add_scalar("val/loss_commitment", scores.commitment_loss, step)
        writer.add_scalar("val/codebook_usage", scores.codebook_usage, step)
        writer.add_scalar("val/perplexity", scores.perplexity, step)
        writer.add_scalar("val/dead_codes", len(scores.counts) - scores.codes_used, step)
        writer.add_scalar("train/restarts_per_epoch", restarts, step)
        codes = torch.repeat_interleave(torch.arange(len(scores.counts)), scores.counts)
        writer.add_histogram("val/code_usage", codes, step, bins=len(scores.counts))
    else:
        writer.add_scalar("val/kl_bits", scores.kl_bits, step)

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
    {"autoencoder": {"epochs": [{"epoch", "step", "recon_loss", "mse", "psnr", "codes_used", "codebook_usage",
    "perplexity", "seconds"}, ...], "seconds", "best_epoch"}, "prior": {"epochs": [{"epoch", "val_nll_bits",
    "val_nll_bits_unconditional", "seconds"}, ...], "seconds"}, "stopped": {"cause", "where", "step"}}.
    "seconds" of a part is the time its last process took (a resumed run counts from its resume). Only process 0
    writes (enabled)."""

    def __init__(self, model_dir: Path, fresh: bool, enabled: bool = True):
        self.path = Path(model_dir) / "run.json"
        self.enabled = enabled
        self.figures = read_run_figures(model_dir) if enabled and not fresh else {}
        self.figures.pop("stopped", None)

    def start(self, part: str) -> None:
        """A part ("autoencoder" or "prior") trains from its start: its earlier figures go."""
        self.figures[part] = {"epochs": []}
        self._write()

    def epoch(self, part: str, **figures) -> None:
        """The figures of one epoch of a part; an epoch trained again (after a resume) replaces its entry."""
        entry = self.figures.setdefault(part, {"epochs": []})
        entry["epochs"] = [row for row in entry["epochs"] if row["epoch"] != figures["epoch"]] + [figures]
        self._write()

    def finished(self, part: str, **figures) -> None:
        self.figures.setdefault(part, {"epochs": []}).update(figures)
        self._write()

    def stopped(self, **figures) -> None:
        self.figures["stopped"] = figures
        self._write()

    def _write(self) -> None:
        if self.enabled:
            write_json(self.path, self.figures)
