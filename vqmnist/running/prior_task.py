"""The prior's side of the training loop: the task whose batches are the frozen autoencoder's code grids."""
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter

from prior import GUIDANCE, SAMPLING_TEMPERATURE, CodePrior, encode_images, prior_nll_bits
from vqmnist.checkpoints.format import RunState, prior_entry, prior_training_checkpoint, save_checkpoint
from vqmnist.io.data import Splits
from vqmnist.running.loop import Validation

MAX_DEGREES = 10.0  # rotation, either way
MAX_SCALE = 0.1  # zoom in or out by up to 10%
MAX_SHIFT_PIXELS = 2.0  # each way, of a 28-pixel image
PRIOR_WARMUP_STEPS = 200
DEFAULT_PRIOR_BATCH_SIZE = 128


@dataclass
class PriorSettings:
    """How the prior trains (vqvae.py's --prior-* flags); stored in its training checkpoint, which a --resume
    continues with them."""

    epochs: int = 5
    batch_size: int = DEFAULT_PRIOR_BATCH_SIZE
    lr: float = 4e-3  # peak AdamW learning rate, after a warm-up, decayed to 0 along a cosine
    class_dropout: float = 0.1  # fraction of grids shown without their class
    distorted: float = 0.0  # fraction of each batch's grids encoded anew from randomly distorted digits
    seed: int = 0  # of the batch order
    amp: bool = False  # bf16 autocast for the transformer
    log_interval: int = 20


class CodeSplits(NamedTuple):
    """The training and validation splits as code grids (N, 7, 7) of the frozen autoencoder, with their labels."""

    train_codes: Tensor
    train_labels: Tensor
    val_codes: Tensor
    val_labels: Tensor


def make_prior_optimizer(prior: CodePrior, lr: float) -> torch.optim.AdamW:
    """AdamW over the prior's parameters, fused: one kernel updates them all."""
    return torch.optim.AdamW(prior.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01, fused=True)


def make_prior_schedule(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A linear warm-up over PRIOR_WARMUP_STEPS, then a cosine decay to 0 at total_steps."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / PRIOR_WARMUP_STEPS)
                                             * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps)))


def encode_splits(autoencoder: nn.Module, splits: Splits, device: torch.device) -> CodeSplits:
    """The splits as the frozen autoencoder's code grids, computed once, the labels on the codes' device."""
    return CodeSplits(encode_images(autoencoder, splits.train_images, device), splits.train_labels.to(device),
                      encode_images(autoencoder, splits.val_images, device), splits.val_labels.to(device))


def prior_step(prior: CodePrior, optimizer: torch.optim.Optimizer, codes: Tensor, classes: Tensor,
               amp: bool) -> Tensor:
    """One optimizer step on code grids (B, 7, 7) given classes (B,); returns the detached loss, nats per code,
    without waiting for the device. `amp` runs the transformer under bf16 autocast; the loss is taken in fp32."""
    with torch.autocast(device_type=codes.device.type, dtype=torch.bfloat16, enabled=amp):
        loss = prior.loss(codes, classes)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(prior.parameters(), 1.0)
    optimizer.step()
    return loss.detach()


@dataclass
class PriorTask:
    """The prior as train_epochs trains it (loop.TrainingTask): batches of code grids, validated by its NLL of the
    validation grids; last_path is prior_last.pt, and the best epoch's prior goes into best.pt beside the autoencoder
    whose codes it models."""

    prior: CodePrior
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    shuffle_generator: torch.Generator
    codes: CodeSplits
    train_images: Tensor  # uint8 (N, 28, 28) on the codes' device, whose distorted copies give new grids
    settings: PriorSettings
    autoencoder: nn.Module  # frozen: it decodes the samples TensorBoard shows
    best_checkpoint: dict  # best.pt's content, written back with the prior
    best_path: Path
    last_path: Path
    resume_command: str
    writer: SummaryWriter
    part = "prior"
    label = "prior epoch"
    tag_prefix = "prior/train_"
    divergence_advice = "try a lower --prior-lr"

    @property
    def module(self) -> nn.Module:
        return self.prior

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.codes.train_codes) / self.settings.batch_size)

    def batches(self, skip: int):
        order = torch.randperm(len(self.codes.train_codes), generator=self.shuffle_generator)
        return order.to(self.codes.train_codes.device).split(self.settings.batch_size)[skip:]

    def step(self, indices: Tensor) -> dict[str, Tensor]:
        classes, codes = self.codes.train_labels[indices], self.codes.train_codes[indices]
        distorted = round(self.settings.distorted * len(indices))  # the batch is shuffled: its first ones are random
        if distorted:
            new_codes = encode_images(self.autoencoder, distort(self.train_images[indices[:distorted]]), codes.device)
            codes = torch.cat([new_codes, codes[distorted:]])  # (B, 7, 7): a distorted digit keeps its class
        dropped = torch.rand(len(classes), device=classes.device) < self.settings.class_dropout
        loss = prior_step(self.prior, self.optimizer, codes, torch.where(dropped, self.prior.no_class, classes),
                          self.settings.amp)
        return {"loss": loss, "nll_bits": loss / math.log(2)}

    def validate(self, step: int) -> Validation:
        """The validation NLL in bits per code with and without the class, logged with a grid of samples."""
        # Imported here: torchvision's import loads its model zoo, which --help and a flag error need
        # not wait for.
        from torchvision.utils import make_grid

        prior, codes = self.prior, self.codes
        val_nll = prior_nll_bits(prior, codes.val_codes, codes.val_labels)
        unconditional_nll = prior_nll_bits(prior, codes.val_codes, torch.full_like(codes.val_labels, prior.no_class))
        self.writer.add_scalar("prior/val_nll_bits", val_nll, step)
        self.writer.add_scalar("prior/val_nll_bits_unconditional", unconditional_nll, step)
        prior.eval()
        sample_classes = torch.arange(10, device=codes.val_labels.device).repeat_interleave(10)
        samples = self.autoencoder.to_pixels(self.autoencoder.decode(
            prior.sample(sample_classes, SAMPLING_TEMPERATURE, GUIDANCE)))
        self.writer.add_image("prior/samples", make_grid(samples, nrow=10), step)
        return Validation(val_nll, {"val_nll_bits": val_nll, "val_nll_bits_unconditional": unconditional_nll},
                          f"val NLL {val_nll:.3f} bits/code with the class, {unconditional_nll:.3f} without")

    def save(self, state: RunState, validation: Validation | None, best: bool) -> None:
        device = self.codes.train_codes.device
        save_checkpoint(self.last_path, prior_training_checkpoint(
            self.prior, self.optimizer, self.schedule, state, asdict(self.settings), self.best_checkpoint["step"],
            device))
        if best:
            self.best_checkpoint["prior"] = prior_entry(self.prior, state.epoch, validation.figures["val_nll_bits"],
                                                        validation.figures["val_nll_bits_unconditional"])
            save_checkpoint(self.best_path, self.best_checkpoint)


def resumable(checkpoint: dict | None, best_checkpoint: dict) -> bool:
    """Whether a prior training checkpoint is one to go on with: unfinished, and on best.pt's autoencoder."""
    return (checkpoint is not None and checkpoint["autoencoder_step"] == best_checkpoint["step"]
            and checkpoint["epoch"] < checkpoint["settings"]["epochs"])


def distort(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """uint8 images (B, H, W) -> the same images, each rotated, scaled and shifted by its own uniform random draw
    within the bounds above, resampled bilinearly (what falls outside the image is black)."""
    count, height, width = images.shape
    draws = torch.rand(count, 4, generator=generator, device="cpu").to(images.device) * 2 - 1  # (B, 4) in [-1, 1)
    angle = draws[:, 0] * math.radians(MAX_DEGREES)
    scale = 1 + draws[:, 1] * MAX_SCALE
    # affine_grid maps output to input coordinates in [-1, 1]: a shift of s pixels is 2 s / size.
    shift = draws[:, 2:] * MAX_SHIFT_PIXELS * 2 / torch.tensor([width, height], device=images.device)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, [count, 1, height, width], align_corners=False)  # (B, H, W, 2)
    resampled = F.grid_sample(images[:, None].float(), grid, mode="bilinear", padding_mode="zeros",
                              align_corners=False)  # (B, 1, H, W)
    return resampled[:, 0].round().clamp(0, 255).to(torch.uint8)
