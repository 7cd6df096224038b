"""Fitting the prior to the code grids of the autoencoder in best.pt, epoch by epoch, keeping its best in best.pt."""
import math
import shlex
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import make_grid
from tqdm import tqdm

from checkpoints import load_model, prior_entry, save_checkpoint
from cli import RunStopped, UserError
from data import Splits
from modules import VQVAE, images_to_inputs
from prior import GUIDANCE, SAMPLING_TEMPERATURE, CodePrior, PriorConfig
from run_log import RunFigures
from threads import ThreadChooser
from training import StopOnSignal

PRIOR_WARMUP_STEPS = 200
DEFAULT_PRIOR_BATCH_SIZE = 128


class CodeSplits(NamedTuple):
    """The training and validation splits as code grids (N, 7, 7) of the frozen autoencoder, with their labels."""

    train_codes: Tensor
    train_labels: Tensor
    val_codes: Tensor
    val_labels: Tensor


@dataclass
class PriorRun:
    """What the prior's epochs share: the model, its optimizer and schedule, the batch order, the step reached."""

    prior: CodePrior
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    shuffle_generator: torch.Generator
    threads: ThreadChooser
    step: int = 0


@torch.no_grad()
def encode_images(model: VQVAE, images: Tensor, device: torch.device, batch_size: int = 1000) -> Tensor:
    """uint8 images (N, 28, 28) -> their code grids (N, 7, 7), on the device."""
    model.eval()
    return torch.cat([model.encode(images_to_inputs(batch.to(device))) for batch in images.split(batch_size)])


@torch.no_grad()
def prior_nll_bits(prior: CodePrior, codes: Tensor, classes: Tensor, batch_size: int = 1000) -> float:
    """Mean negative log-likelihood of code grids (N, 7, 7) given classes (N,), in bits per code."""
    prior.eval()
    total = torch.zeros((), dtype=torch.float64, device=codes.device)
    for batch_codes, batch_classes in zip(codes.split(batch_size), classes.split(batch_size)):
        total += prior.loss(batch_codes, batch_classes).double() * len(batch_codes)
    prior.train()
    return total.item() / len(codes) / math.log(2)


def make_prior_optimizer(prior: CodePrior, lr: float) -> torch.optim.AdamW:
    """AdamW over the prior's parameters, fused: one kernel updates them all."""
    return torch.optim.AdamW(prior.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01, fused=True)


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


def start_prior(args, config: PriorConfig, codes: CodeSplits, device: torch.device) -> PriorRun:
    """A fresh prior of `config` for these codes, p(class) set from their labels, with AdamW and its schedule:
    a linear warm-up, then a cosine decay to 0 over the run's steps."""
    prior = CodePrior(config).to(device)
    labels = codes.train_labels
    prior.class_frequencies.copy_(torch.bincount(labels, minlength=config.num_classes) / len(labels))
    optimizer = make_prior_optimizer(prior, args.prior_lr)
    total_steps = args.prior_epochs * math.ceil(len(codes.train_codes) / args.prior_batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / PRIOR_WARMUP_STEPS)
                                                 * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps)))
    return PriorRun(prior, optimizer, schedule, torch.Generator().manual_seed(args.seed),
                    ThreadChooser.for_training(device, args.threads))


def prior_epoch(run: PriorRun, codes: CodeSplits, args, writer: SummaryWriter, stop: StopOnSignal, epoch: int) -> bool:
    """One epoch over the training grids; False if a stop came."""
    prior, device = run.prior, codes.train_codes.device
    prior.train()
    running, running_steps = torch.zeros((), device=device), 0
    order = torch.randperm(len(codes.train_codes), generator=run.shuffle_generator).to(device)
    progress = tqdm(order.split(args.prior_batch_size), desc=f"prior epoch {epoch}/{args.prior_epochs}",
                    unit="batch", leave=False, dynamic_ncols=True)
    for indices in progress:
        classes = codes.train_labels[indices]
        dropped = torch.rand(len(classes), device=device) < args.class_dropout
        loss = prior_step(prior, run.optimizer, codes.train_codes[indices],
                          torch.where(dropped, prior.no_class, classes), args.amp)
        run.schedule.step()
        run.threads.step_done()
        run.step += 1
        running += loss
        running_steps += 1
        if run.step % args.log_interval == 0:
            nll_bits = running.item() / running_steps / math.log(2)
            if not math.isfinite(nll_bits):
                raise UserError(f"the prior's loss became NaN or infinite at step {run.step}: try a lower --prior-lr")
            writer.add_scalar("prior/train_nll_bits", nll_bits, run.step)
            progress.set_postfix(nll=f"{nll_bits:.3f} bits")
            running.zero_()
            running_steps = 0
        if stop.requested():
            progress.close()
            return False
    return True


def validate_prior(run: PriorRun, model: VQVAE, codes: CodeSplits, writer: SummaryWriter) -> tuple[float, float]:
    """The validation NLL in bits per code with and without the class, logged with a grid of samples."""
    prior, step = run.prior, run.step
    val_nll = prior_nll_bits(prior, codes.val_codes, codes.val_labels)
    unconditional_nll = prior_nll_bits(prior, codes.val_codes, torch.full_like(codes.val_labels, prior.no_class))
    writer.add_scalar("prior/val_nll_bits", val_nll, step)
    writer.add_scalar("prior/val_nll_bits_unconditional", unconditional_nll, step)
    prior.eval()
    sample_classes = torch.arange(10, device=codes.val_labels.device).repeat_interleave(10)
    samples = model.to_pixels(model.decode(prior.sample(sample_classes, SAMPLING_TEMPERATURE, GUIDANCE)))
    writer.add_image("prior/samples", make_grid(samples, nrow=10), step)
    return val_nll, unconditional_nll


def train_prior(args, config: PriorConfig, model_dir: Path, splits: Splits, writer: SummaryWriter,
                stop: StopOnSignal, device: torch.device, figures: RunFigures) -> None:
    """Fit a prior of `config` (its number of codes and grid size taken from the autoencoder) to the code grids of
    the autoencoder in best.pt, and store it in best.pt at the epoch of its best validation NLL."""
    started, path = time.perf_counter(), model_dir / "best.pt"
    model, checkpoint = load_model(path, "cpu")  # the checkpoint stays on the CPU: it is written back
    model.to(device)
    # The codes are computed once: the autoencoder is frozen from here on. The labels follow the codes' device.
    codes = CodeSplits(encode_images(model, splits.train_images, device), splits.train_labels.to(device),
                       encode_images(model, splits.val_images, device), splits.val_labels.to(device))
    config = replace(config, num_embeddings=model.config.num_embeddings, grid_size=codes.train_codes.shape[-1])
    run = start_prior(args, config, codes, device)
    num_parameters = sum(parameter.numel() for parameter in run.prior.parameters())
    print(f"prior: {num_parameters:,} parameters, on the codes of {path} (epoch {checkpoint['epoch']}): "
          f"{len(codes.train_codes):,} train / {len(codes.val_codes):,} validation grids")
    figures.start("prior")
    best_nll = math.inf
    for epoch in range(1, args.prior_epochs + 1):
        epoch_started = time.perf_counter()
        if not prior_epoch(run, codes, args, writer, stop, epoch):
            writer.close()
            kept = "the prior of its best epoch so far" if best_nll < math.inf else "no prior yet"
            cause, exit_code = stop.cause()
            figures.stopped(cause=stop.kind(), where=f"in prior epoch {epoch}", step=run.step)
            raise RunStopped(f"{cause} in prior epoch {epoch}; {path} holds the autoencoder and {kept}; train "
                             f"the prior again with: python vqvae.py --output-folder {shlex.quote(args.output_folder)} "
                             "--prior-only", exit_code)
        val_nll, unconditional_nll = validate_prior(run, model, codes, writer)
        improved = val_nll < best_nll
        if improved:
            best_nll = val_nll
            checkpoint["prior"] = prior_entry(run.prior, epoch, val_nll, unconditional_nll)
            save_checkpoint(path, checkpoint)
        seconds = time.perf_counter() - epoch_started
        writer.add_scalar("time/prior_epoch_seconds", seconds, run.step)
        writer.flush()
        figures.epoch("prior", epoch=epoch, val_nll_bits=val_nll, val_nll_bits_unconditional=unconditional_nll,
                      seconds=seconds)
        tqdm.write(f"prior epoch {epoch:>2}/{args.prior_epochs}  val NLL {val_nll:.3f} bits/code with the class, "
                   f"{unconditional_nll:.3f} without  {seconds:.1f} s" + ("  [best]" if improved else ""))
    seconds = time.perf_counter() - started
    figures.finished("prior", seconds=seconds)
    print(f"prior ({seconds:.0f} s, codes included) saved in {path}; next: python "
          f"generate.py --model {shlex.quote(str(path))} --input random --filename samples")
