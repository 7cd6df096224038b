"""The autoencoder's side of the training loop: its settings, its optimizer step, and its task of batches of digits."""
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter

from modules import VQVAE, VQVAEConfig
from options import SWITCH, SharedOption, check_options, integer, number, one_of, option
from pixel_distributions import images_to_inputs
from vqmnist.checkpoints.format import RunState, restore_training, save_checkpoint, training_checkpoint
from vqmnist.configuration.limits import (MAX_BATCH, MAX_EPOCHS, MAX_LEARNING_RATE, MAX_SEED, MAX_STEPS_BETWEEN_LOGS,
                                          MAX_VALIDATION, MAX_WORKERS)
from vqmnist.io.data import Splits, epoch_batches, steps_per_epoch
from vqmnist.running.loop import Validation
from vqmnist.running.processes import Processes
from vqmnist.running.run_log import NUM_FIXED_IMAGES, NoWriter, decoder_nll_bits_per_dim, log_validation
from vqmnist.scores.reconstructions import CODE_STATISTICS, score_reconstructions

VALIDATION_BATCH_SIZE = 1000


# Set by one flag each for both tasks: the prior's settings hold them too.
seed_option = SharedOption("seed", 0, integer(0, MAX_SEED), "--seed", "seed of the weights and the batch order")
log_interval_option = SharedOption("log_interval", 20, integer(1, MAX_STEPS_BETWEEN_LOGS), "--log-interval",
                                   "steps between TensorBoard points and progress-bar updates")


@dataclass
class TrainingSettings:
    """How the autoencoder trains: vqvae.py's flags beside the model's shape, each declared here with its rule; the
    three without a flag of their own are set from --amp, --compile and --channels-last, which say how to run."""

    batch_size: int = option(64, integer(1, MAX_BATCH), "--batch-size", f"images per batch, at most {MAX_BATCH}")
    num_epochs: int = option(8, integer(1, MAX_EPOCHS), "--num-epochs", "epochs to train")
    lr: float = option(2e-3, number(0, MAX_LEARNING_RATE, above_low=True), "--lr", "Adam learning rate")
    lr_schedule: str = option("cosine", one_of("cosine", "constant"), "--lr-schedule",
                              "cosine: decay the learning rate to 0 over the run's steps")
    seed: int = seed_option()
    val_size: int = option(5000, integer(1, MAX_VALIDATION), "--val-size",
                           "last training images held out for validation")
    num_workers: int = option(0, integer(0, MAX_WORKERS), "--num-workers",
                              "DataLoader worker processes; the data is already in memory")
    log_interval: int = log_interval_option()
    amp: bool = option(False, SWITCH)  # bf16 autocast for the encoder and decoder
    compile: bool = option(False, SWITCH)  # torch.compile the model
    channels_last: bool = option(True, SWITCH)  # activations in channels-last memory format

    def __post_init__(self):
        check_options(self)


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
    stop, best.pt at the best epoch. `build` makes it, at the run's start or where a last.pt left it."""

    model: VQVAE
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
    # One optimizer step on a batch: training_step of this model and optimizer, called by the loop directly.
    step: functools.partial = field(init=False, repr=False)
    part = "autoencoder"
    label = "epoch"
    tag_prefix = "train/"
    divergence_advice = ("a learning rate or a loss weight (such as --beta) too large for the model is the usual "
                         "cause: start again with a lower --lr or --beta")

    def __post_init__(self):
        self.step = functools.partial(training_step, self.model, self.optimizer, amp=self.settings.amp,
                                      forward=self.forward)

    @classmethod
    def build(cls, config: VQVAEConfig, settings: TrainingSettings, processes: Processes, splits: Splits,
              model_dir: Path, flags: dict, resume_command: str, writer: SummaryWriter | NoWriter,
              resumed: dict | None = None) -> tuple["AutoencoderTask", RunState]:
        """The model (wrapped by DDP and torch.compile where asked), its optimizer and schedule, and where the run
        stands: at its start, or where `resumed` (last.pt, its flags, weights and place already checked) left it."""
        rank, world_size, device = processes
        # The training set lives in memory as one uint8 tensor, on the training device unless workers read it.
        train_images = splits.train_images.to(device if settings.num_workers == 0 else "cpu")
        torch.manual_seed(settings.seed)
        model = VQVAE(config).to(device)
        if settings.channels_last:
            model = model.to(memory_format=torch.channels_last)  # before DDP, which must see the final parameters
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed 28x28 shapes: let cuDNN pick its fastest kernels once
        # DDP averages the gradients over the processes; the bottleneck keeps its own state in step itself.
        forward = model
        if world_size > 1:
            forward = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
        # The compiled module shares the plain one's parameters and buffers; checkpoints save the plain one.
        forward = torch.compile(forward) if settings.compile else forward
        optimizer = make_optimizer(model, settings.lr)
        epoch_steps = steps_per_epoch(len(train_images), settings.batch_size, world_size)
        schedule = make_schedule(optimizer, settings, epoch_steps)
        task = cls(model=model, forward=forward, optimizer=optimizer, schedule=schedule,
                   shuffle_generator=torch.Generator().manual_seed(settings.seed), train_images=train_images,
                   val_images=splits.val_images, settings=settings, processes=processes,
                   steps_per_epoch=epoch_steps, model_dir=model_dir, flags=flags, resume_command=resume_command,
                   writer=writer)
        if resumed is None:
            return task, RunState()
        state = restore_training(resumed, resumed["model"], model, optimizer, schedule, device, task.last_path)
        task.shuffle_generator.set_state(state.shuffle_rng)
        if state.best_epoch and not (model_dir / "best.pt").is_file():
            if rank == 0:
                print(f"{model_dir / 'best.pt'} is missing, and with it epoch {state.best_epoch}'s autoencoder: "
                      "best.pt will be the best of the epochs still to train")
            state.best_score, state.best_epoch = math.inf, 0
        return task, state

    @property
    def module(self) -> nn.Module:
        return self.model

    @property
    def last_path(self) -> Path:
        return self.model_dir / "last.pt"

    def batches(self, skip: int):
        rank, world_size, device = self.processes
        return (batch.to(device, non_blocking=True) for batch in epoch_batches(
            self.train_images, self.settings.batch_size, self.shuffle_generator, self.settings.num_workers,
            skip=skip, shard=rank, num_shards=world_size))

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

