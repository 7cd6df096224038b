"""The prior's side of the training loop: the task whose batches are the frozen autoencoder's code grids."""
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter

from options import SWITCH, UNIT_INTERVAL, check_options, integer, number, option
from prior import GUIDANCE, SAMPLING_TEMPERATURE, CodePrior, PriorConfig, encode_images, prior_nll_bits
from vqmnist.checkpoints.checks import check_place
from vqmnist.checkpoints.format import (RunState, prior_entry, prior_training_checkpoint, restore_training,
                                        save_checkpoint, stored_prior, trained_dataset, trained_val_size)
from vqmnist.checkpoints.loading import load_model
from vqmnist.configuration.errors import UserError
from vqmnist.configuration.limits import MAX_BATCH, MAX_EPOCHS, MAX_LEARNING_RATE
from vqmnist.io.data import Splits, load_splits, steps_per_epoch
from vqmnist.running.autoencoder_task import log_interval_option, seed_option
from vqmnist.running.loop import Validation

MAX_DEGREES = 10.0  # rotation, either way
MAX_SCALE = 0.1  # zoom in or out by up to 10%
MAX_SHIFT_PIXELS = 2.0  # each way, of a 28-pixel image
PRIOR_WARMUP_STEPS = 200


@dataclass
class PriorSettings:
    """How the prior trains: vqvae.py's --prior-* flags (and --seed, --log-interval, which the autoencoder's settings
    share), each declared here with its rule; stored in its training checkpoint, which a --resume continues with
    them. `amp` is set from --amp, which says how to run."""

    epochs: int = option(5, integer(0, MAX_EPOCHS), "--prior-epochs",
                         "epochs of the prior on the codes of the best autoencoder; 0 skips it", dest="prior_epochs")
    batch_size: int = option(128, integer(1, MAX_BATCH), "--prior-batch-size",
                             f"code grids per batch of the prior, at most {MAX_BATCH}", dest="prior_batch_size")
    lr: float = option(4e-3, number(0, MAX_LEARNING_RATE, above_low=True), "--prior-lr",
                       "peak AdamW learning rate of the prior, after a warm-up, decayed to 0 along a cosine",
                       dest="prior_lr")
    class_dropout: float = option(0.1, UNIT_INTERVAL, "--class-dropout",
                                  "fraction of training grids shown to the prior without their class, so that it "
                                  "also samples unconditionally")
    distorted: float = option(0.0, UNIT_INTERVAL, "--prior-distorted",
                              "fraction of each batch of the prior whose code grids are encoded anew from its digits "
                              "randomly rotated, scaled and shifted a little, so that it sees more than the training "
                              "set's grids", dest="prior_distorted")
    seed: int = seed_option()  # of the prior's weights and batch order
    amp: bool = option(False, SWITCH)  # bf16 autocast for the transformer
    log_interval: int = log_interval_option()

    def __post_init__(self):
        check_options(self)


class CodeSplits(NamedTuple):
    """The training and validation splits as code grids (N, 7, 7), or (N, L, 7, 7), of the frozen autoencoder, with
    their labels."""

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
    """One optimizer step on code grids (B, 7, 7) or (B, L, 7, 7) given classes (B,); returns the detached loss, nats
    per code, without waiting for the device. `amp` runs the transformer under bf16 autocast; the loss is taken in
    fp32."""
    with torch.autocast(device_type=codes.device.type, dtype=torch.bfloat16, enabled=amp):
        loss = prior.loss(codes, classes)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(prior.parameters(), 1.0)
    optimizer.step()
    return loss.detach()


@dataclass(kw_only=True)
class PriorTask:
    """The prior as train_epochs trains it (loop.TrainingTask): batches of code grids, validated by its NLL of the
    validation grids; last_path is prior_last.pt, and the best epoch's prior goes into best.pt beside the autoencoder
    whose codes it models. `build` makes it, at its start or where a prior_last.pt left it."""

    prior: CodePrior
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    shuffle_generator: torch.Generator
    codes: CodeSplits
    train_images: Tensor  # uint8 (N, 28, 28) on the codes' device, whose distorted copies give new grids
    settings: PriorSettings
    steps_per_epoch: int
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

    @classmethod
    def build(cls, settings: PriorSettings, config: PriorConfig, device: torch.device, model_dir: Path,
              splits: Splits | None, data_folder: str, val_size: int, resume_command: str,
              writer: SummaryWriter,
              resumed: dict | None = None) -> tuple["PriorTask", RunState]:
        """The prior of `config` (its number of codes and grid size set from the autoencoder's), its optimizer and
        schedule, on the code grids of best.pt's autoencoder, and where it stands: at its start, or where `resumed`
        (prior_last.pt, whose own settings and config it keeps) left it. `splits` are the autoencoder's own (None:
        read from data_folder with best.pt's --val-size, or val_size where it has none), so the prior is validated
        on grids it did not train on."""
        best_path, last_path = model_dir / "best.pt", model_dir / "prior_last.pt"
        # The checkpoint stays on the CPU, since it is written back with the new prior; the old one is not read.
        autoencoder, _, best_checkpoint, _ = load_model(best_path, "cpu", with_prior=False)
        autoencoder.to(device)
        if not autoencoder.discrete:
            raise UserError(f"{best_path} has a continuous bottleneck ({autoencoder.config.bottleneck}): it has no "
                            "codes for a prior to model, and samples its latents from its own prior (python "
                            "generate.py --input random)")
        if splits is None:
            splits = load_splits(data_folder, trained_val_size(best_checkpoint, best_path, val_size),
                                 trained_dataset(best_checkpoint, best_path))
        codes = encode_splits(autoencoder, splits, device)
        if resumed is not None:
            settings = PriorSettings(**resumed["settings"])  # checked as their flags by load_prior_state
            config = stored_prior(resumed["prior"], last_path, autoencoder).config
        else:
            config = replace(config, num_embeddings=autoencoder.bottleneck.num_embeddings,
                             levels=autoencoder.bottleneck.code_levels, grid_size=codes.train_codes.shape[-1])
        epoch_steps = steps_per_epoch(len(codes.train_codes), settings.batch_size)
        # The prior's first weights and draws come from its seed alone, not from wherever the autoencoder's training
        # left the generators: a run stopped between the two then starts the prior exactly as the unbroken run did.
        torch.manual_seed(settings.seed)
        prior = CodePrior(config).to(device)
        prior.class_frequencies.copy_(torch.bincount(codes.train_labels, minlength=config.num_classes)
                                      / len(codes.train_labels))
        optimizer = make_prior_optimizer(prior, settings.lr)
        schedule = make_prior_schedule(optimizer, settings.epochs * epoch_steps)
        task = cls(prior=prior, optimizer=optimizer, schedule=schedule,
                   shuffle_generator=torch.Generator().manual_seed(settings.seed), codes=codes,
                   train_images=splits.train_images.to(device), settings=settings, steps_per_epoch=epoch_steps,
                   autoencoder=autoencoder, best_checkpoint=best_checkpoint, best_path=best_path,
                   last_path=last_path, resume_command=resume_command, writer=writer)
        if resumed is None:
            return task, RunState()
        check_place(resumed, last_path, settings.epochs, epoch_steps)
        state = restore_training(resumed, resumed["prior"]["model"], prior, optimizer, schedule, device, last_path,
                                 "prior's optimizer state")
        task.shuffle_generator.set_state(state.shuffle_rng)
        return task, state

    @property
    def module(self) -> nn.Module:
        return self.prior

    def batches(self, skip: int):
        order = torch.randperm(len(self.codes.train_codes), generator=self.shuffle_generator)
        return order.to(self.codes.train_codes.device).split(self.settings.batch_size)[skip:]

    def step(self, indices: Tensor) -> dict[str, Tensor]:
        classes, codes = self.codes.train_labels[indices], self.codes.train_codes[indices]
        distorted = round(self.settings.distorted * len(indices))  # the batch is shuffled: its first ones are random
        if distorted:
            new_codes = encode_images(self.autoencoder, distort(self.train_images[indices[:distorted]]), codes.device)
            codes = torch.cat([new_codes, codes[distorted:]])  # a distorted digit keeps its class
        dropped = torch.rand(len(classes), device=classes.device) < self.settings.class_dropout
        loss = prior_step(self.prior, self.optimizer, codes, torch.where(dropped, self.prior.no_class, classes),
                          self.settings.amp)
        return {"loss": loss, "nll_bits": loss / math.log(2)}

    def validate(self, step: int) -> Validation:
        """The validation NLL in bits per code given the class and given the no-class token (the class-free half
        that guidance and unconditional sampling read), logged with a grid of samples."""
        # Imported here: torchvision's import loads its model zoo, which --help and a flag error need
        # not wait for.
        from torchvision.utils import make_grid

        prior, codes = self.prior, self.codes
        val_nll = prior_nll_bits(prior, codes.val_codes, codes.val_labels)
        no_class_nll = prior_nll_bits(prior, codes.val_codes, torch.full_like(codes.val_labels, prior.no_class))
        self.writer.add_scalar("prior/val_nll_bits", val_nll, step)
        self.writer.add_scalar("prior/val_nll_bits_no_class_token", no_class_nll, step)
        prior.eval()
        sample_classes = torch.arange(10, device=codes.val_labels.device).repeat_interleave(10)
        samples = self.autoencoder.to_pixels(self.autoencoder.decode(
            prior.sample(sample_classes, SAMPLING_TEMPERATURE, GUIDANCE)))
        self.writer.add_image("prior/samples", make_grid(samples, nrow=10), step)
        return Validation(val_nll, {"val_nll_bits": val_nll, "val_nll_bits_no_class_token": no_class_nll},
                          f"val NLL {val_nll:.3f} bits/code with the class, {no_class_nll:.3f} without")

    def save(self, state: RunState, validation: Validation | None, best: bool) -> None:
        device = self.codes.train_codes.device
        save_checkpoint(self.last_path, prior_training_checkpoint(
            self.prior, self.optimizer, self.schedule, state, asdict(self.settings), self.best_checkpoint["step"],
            device))
        if best:
            self.best_checkpoint["prior"] = prior_entry(self.prior, state.epoch, validation.figures["val_nll_bits"],
                                                        validation.figures["val_nll_bits_no_class_token"])
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
