"""The autoencoder's side of the training loop: its settings, its optimizer step, and its task of batches of digits."""
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter

from pixel_distributions import images_to_inputs
from vqmnist.checkpoints.format import RunState, save_checkpoint, training_checkpoint
from vqmnist.io.data import epoch_batches
from vqmnist.running.loop import Validation
from vqmnist.running.processes import Processes
from vqmnist.running.run_log import NUM_FIXED_IMAGES, NoWriter, decoder_nll_bits_per_dim, log_validation
from vqmnist.scores.reconstructions import CODE_STATISTICS, score_reconstructions

VALIDATION_BATCH_SIZE = 1000


@dataclass
class TrainingSettings:
    """How the autoencoder trains: vqvae.py's flags beside the model's shape."""

    batch_size: int = 64
    num_epochs: int = 8
    lr: float = 2e-3
    lr_schedule: str = "cosine"  # "cosine": decay the learning rate to 0 over the run's steps; or "constant"
    seed: int = 0  # of the weights and the batch order
    amp: bool = False  # bf16 autocast for the encoder and decoder
    num_workers: int = 0  # DataLoader worker processes
    log_interval: int = 20


def make_optimizer(model: nn.Module, lr: float, fused: bool = True) -> torch.optim.Adam:
    """Adam over the trainable parameters (not the EMA codebook); fused, one kernel updates them all."""
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr, fused=fused)


def make_schedule(optimizer: torch.optim.Optimizer, settings: TrainingSettings,
                  steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    if settings.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings.num_epochs * steps_per_epoch)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0)


def training_step(model: nn.Module, optimizer, images: Tensor, amp: bool = False, forward=None) -> dict[str, Tensor]:
    """One optimizer step on a batch of uint8 images (B, 28, 28) already on the model's device.

    Returns the step's figures by name, detached, on the device (nothing here waits for it): the total "loss", its
    "loss_reconstruction", each of the bottleneck's loss terms as "loss_NAME", and the bottleneck's health figures.
    `forward` is the model's forward to call (a torch.compile'd one); `amp` runs it under bf16 autocast, while the
    bottleneck computes in fp32.
    """
    x = images_to_inputs(images)
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=amp):
        x_recon, quantized = (model if forward is None else forward)(x)
    recon_loss = model.reconstruction_loss(x_recon, x)
    loss = recon_loss + model.bottleneck_loss(quantized)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {"loss": loss.detach(), "loss_reconstruction": recon_loss.detach(),
            **{f"loss_{name}": term.detach().float() for name, term in quantized.losses.items()},
            **{name: figure.detach().float() for name, figure in quantized.figures.items()}}


def health_line(figures: dict[str, float], num_embeddings: int | None) -> str:
    """The epoch line's word on the bottleneck: its code statistics where it has codes, then its other figures."""
    words = []
    if "codes_used" in figures:
        words.append(f"codes used {figures['codes_used']}/{num_embeddings} ({figures['codebook_usage']:.1%})  "
                     f"perplexity {figures['perplexity']:.1f}  dead {figures['dead_codes']}")
    for name, value in figures.items():
        if name not in CODE_STATISTICS:
            words.append(f"{name.replace('_', ' ')} {value}" if isinstance(value, int)
                         else f"{name.replace('_', ' ')} {value:.1f}")
    return "  ".join(words)


@dataclass
class AutoencoderTask:
    """The autoencoder as train_epochs trains it (loop.TrainingTask): batches of this process's shard of the
    training digits, validated by the reconstruction loss of the validation digits; last.pt after every epoch and
    stop, best.pt at the best epoch."""

    model: nn.Module
    forward: nn.Module  # the model as trained: wrapped by DDP and torch.compile where asked
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    shuffle_generator: torch.Generator
    train_images: Tensor  # (N, 28, 28) uint8: the whole training split, of which this process takes its shard
    val_images: Tensor
    settings: TrainingSettings
    processes: Processes
    steps_per_epoch: int  # of this process
    model_dir: Path
    flags: dict  # the command line's flags, stored in the checkpoints for --resume
    resume_command: str
    writer: SummaryWriter | NoWriter
    part = "autoencoder"
    label = "epoch"
    tag_prefix = "train/"
    divergence_advice = ("a learning rate or a loss weight (such as --beta) too large for the model is the usual "
                         "cause: start again with a lower --lr or --beta")

    @property
    def module(self) -> nn.Module:
        return self.model

    @property
    def last_path(self) -> Path:
        return self.model_dir / "last.pt"

    def batches(self, skip: int):
        rank, world_size, _ = self.processes
        return epoch_batches(self.train_images, self.settings.batch_size, self.shuffle_generator,
                             self.settings.num_workers, skip=skip, shard=rank, num_shards=world_size)

    def step(self, batch: Tensor) -> dict[str, Tensor]:
        return training_step(self.model, self.optimizer, batch.to(self.processes.device, non_blocking=True),
                             amp=self.settings.amp, forward=self.forward)

    def validate(self, step: int) -> Validation:
        device = self.processes.device
        scores = score_reconstructions(self.model, self.val_images, VALIDATION_BATCH_SIZE, device)
        epoch_figures = self.model.bottleneck.epoch_figures()  # read on every process: it resets them
        if self.processes.rank == 0:
            log_validation(self.writer, self.model, scores, self.val_images[:NUM_FIXED_IMAGES].to(device), step,
                           epoch_figures)
        nll = {"decoder_nll_bits_per_dim": decoder_nll_bits_per_dim(self.model, scores)} if self.model.likelihood \
            else {}
        figures = {"recon_loss": scores.recon_loss, **nll, "mse": scores.mse, "psnr": scores.psnr, "ssim": scores.ssim,
                   **{f"loss_{name}": value for name, value in scores.losses.items()}, **scores.figures,
                   **epoch_figures}
        bottleneck = self.model.bottleneck
        health = health_line({**scores.figures, **epoch_figures},
                             bottleneck.num_codes if bottleneck.discrete else None)
        bits = f" ({nll['decoder_nll_bits_per_dim']:.4f} bits/dim)" if nll else ""
        return Validation(scores.recon_loss, figures, f"val recon loss {scores.recon_loss:.5f}{bits}  MSE "
                                                      f"{scores.mse:.5f} ({scores.psnr:.1f} dB)  {health}")

    def save(self, state: RunState, validation: Validation | None, best: bool) -> None:
        checkpoint = training_checkpoint(self.model, self.optimizer, self.schedule, state, self.flags,
                                         None if validation is None else validation.figures, self.processes.device)
        save_checkpoint(self.last_path, checkpoint)
        if best:
            save_checkpoint(self.model_dir / "best.pt", checkpoint)

