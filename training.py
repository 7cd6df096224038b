"""The autoencoder's training loop, from one step to a validated epoch, with its speed settings, its stops (a signal,
the time limit) and its processes under torchrun."""
import argparse
import contextlib
import ctypes
import math
import os
import platform
import shlex
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from checkpoints import RunState, save_checkpoint, training_checkpoint
from files import disk_full
from cli import RunStopped, UserError, resolve_device
from data import epoch_batches
from modules import VQVAE, images_to_inputs
from run_log import NUM_FIXED_IMAGES, NoWriter, RunFigures, log_training, log_validation
from scores import score_reconstructions
from threads import ThreadChooser
from vector_quantizer import distributed


def make_optimizer(model: VQVAE, lr: float, fused: bool = True) -> torch.optim.Adam:
    """Adam over the trainable parameters (not the EMA codebook); fused, one kernel updates them all."""
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr, fused=fused)


def training_step(model: VQVAE, optimizer, images: Tensor, amp: bool = False, forward=None) -> Tensor:
    """One optimizer step on a batch of uint8 images (B, 28, 28) already on the model's device.

    Returns the detached losses (total, reconstruction, codebook, commitment, KL in nats per image, perplexity) as
    one (6,) tensor on the device: nothing here waits for the device. `forward` is the model's forward to call (a
    torch.compile'd one); `amp` runs it under bf16 autocast, while the bottleneck computes in fp32.
    """
    x = images_to_inputs(images)
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=amp):
        x_recon, quantized = (model if forward is None else forward)(x)
    recon_loss = model.reconstruction_loss(x_recon, x)
    loss = recon_loss + model.bottleneck_loss(quantized)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    kl = quantized.kl if quantized.kl is not None else torch.zeros_like(recon_loss)
    return torch.stack([loss, recon_loss, quantized.codebook_loss.float(), quantized.commitment_loss.float(),
                        kl.float(), quantized.perplexity.float()]).detach()


def native_bf16(device: torch.device) -> bool:
    """Whether the device computes in bf16 in hardware, so that bf16 autocast is faster: CUDA GPUs from Ampere on,
    x86 CPUs with AVX512-BF16 or AMX. Elsewhere bf16 is converted in software, which can be slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def keep_freed_memory() -> None:
    """Let glibc's malloc keep freed memory for the next allocation instead of handing it back to the kernel.

    By default every freed block of more than 128 KB goes back (munmap, or a trim of the heap), so each training
    step on the CPU page-faults its activations in again; keeping it makes CPU training faster (docs/speed.md,
    `benchmarks/speed.py --ablation`). jemalloc and tcmalloc behave like this out of the box. A no-op on systems
    without glibc."""
    if platform.libc_ver()[0] != "glibc":
        return
    mallopt = ctypes.CDLL("libc.so.6").mallopt
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    mallopt(m_mmap_threshold, 32 << 20)  # glibc's largest allowed: blocks up to 32 MB come from the heap
    mallopt(m_trim_threshold, 1 << 30)  # the heap's free top is returned only beyond 1 GB


class StopOnSignal:
    """While active, Ctrl-C and SIGTERM only note the stop: the loop finishes its step, saves and stops. So does
    passing the deadline of --time-limit (time.monotonic()). A second Ctrl-C stops at once."""

    def __init__(self, deadline: float = math.inf):
        self.deadline = deadline
        self.received = None  # the signal, if one came
        self.timed_out = False

    def __enter__(self):
        self.previous = {sig: signal.signal(sig, self.handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum)

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def requested(self) -> bool:
        """Whether this process was asked to stop."""
        self.timed_out = self.timed_out or time.monotonic() >= self.deadline
        return self.received is not None or self.timed_out

    def agreed(self) -> bool:
        """Whether to stop now: this process or (under torchrun) any process was asked to. A collective call there,
        so every process must make it at the same step; all of them then stop together."""
        if not distributed():
            return self.requested()
        flags = torch.tensor([0 if self.received is None else self.received.value, 0])
        flags[1] = self.requested()
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        if flags[0] and self.received is None:
            self.received = signal.Signals(int(flags[0]))
        self.timed_out = bool(flags[1])
        return bool(flags.any())

    def cause(self) -> tuple[str, int]:
        """What stopped the run, and the exit status: 128 + the signal's number, or 0 for the time limit, which
        is an expected end."""
        if self.received is not None:
            return f"stopped by {self.received.name}", 128 + self.received.value
        return "stopped at the --time-limit", 0

    def kind(self) -> str:
        """What stopped the run, for run.json: the signal's name, or "time-limit"."""
        return self.received.name if self.received is not None else "time-limit"

    def stopped(self, where: str, model_dir: Path, name: str) -> RunStopped:
        """The one-line report of a stop after last.pt was saved."""
        cause, exit_code = self.cause()
        return RunStopped(f"{cause} {where}; saved {model_dir / 'last.pt'}; continue with: python vqvae.py "
                          f"--output-folder {shlex.quote(name)} --resume", exit_code)


class Processes(NamedTuple):
    """This process's place in the run: rank 0 of 1 in a plain run; under torchrun, one of world_size."""

    rank: int
    world_size: int
    device: torch.device


def out_of_memory(error: BaseException) -> bool:
    """Whether an error is running out of memory: on the GPU, or the CPU allocator's RuntimeError."""
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error))


@contextlib.contextmanager
def running_out_is_a_user_error(memory_advice: str, model_dir: Path, then: str):
    """Within the block, running out of memory or of disk space becomes one line: what ran out, what to do (for
    memory, `memory_advice`; for the disk, free space), and `then` to go on from what model_dir keeps."""
    try:
        yield
    except (MemoryError, OSError, RuntimeError) as error:
        if out_of_memory(error):
            raise UserError(f"out of memory while training ({type(error).__name__}): {memory_advice}, or free "
                            f"memory and {then}; {model_dir} keeps what was last saved") from None
        if disk_full(error):
            where = Path(error.filename).parent if getattr(error, "filename", None) else model_dir
            raise UserError(f"no space left on the device holding {where}: free space, then {then}; {model_dir} "
                            "keeps what was last saved") from None
        raise


@contextlib.contextmanager
def process_group(device_name: str):
    """Yield the Processes. Under torchrun (WORLD_SIZE > 1) join the process group first: gloo on
    CPU, nccl on CUDA with one GPU per process (LOCAL_RANK); a plain `python vqvae.py` is rank 0 of 1."""
    device = resolve_device(device_name)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        yield Processes(0, 1, device)
        return
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield Processes(dist.get_rank(), world_size, device)
    finally:
        dist.destroy_process_group()


@dataclass
class Trainer:
    """What the autoencoder's epochs share. `state` is where the run stands: the checkpoints are made from it and a
    --resume restores it."""

    args: argparse.Namespace
    processes: Processes
    model: VQVAE
    forward: nn.Module  # the model as trained: wrapped by DDP and torch.compile where asked
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    shuffle_generator: torch.Generator
    state: RunState
    train_images: Tensor  # (N, 28, 28) uint8: the whole training split, of which this process takes its shard
    val_images: Tensor
    steps_per_epoch: int  # of this process: its shard of the training images, in batches
    log_dir: Path
    model_dir: Path
    writer: SummaryWriter | NoWriter
    figures: RunFigures
    first_bad_step: Tensor  # () the first step whose loss was not finite, -1 while there is none; on the device
    threads: ThreadChooser
    saved_step: int | None = None  # the step of the last.pt this run saved (or resumed from); None before any

    @property
    def main_process(self) -> bool:
        """Process 0, the one that prints, logs and saves."""
        return self.processes.rank == 0


def check_finite(trainer: Trainer) -> None:
    """Stop at a NaN or infinite loss, saying what this run left and which flags usually cause it."""
    bad_step = int(trainer.first_bad_step)
    if bad_step < 0:
        return
    kept = (f"{trainer.model_dir / 'last.pt'} holds the last good state (step {trainer.saved_step})"
            if trainer.saved_step is not None else "no checkpoint of this run was saved before it")
    raise UserError(f"the loss became NaN or infinite at step {bad_step}: stopped without saving it; {kept}; "
                    "a learning rate or a commitment weight too large for the model is the usual cause: start "
                    "again with a lower --lr or --beta")


def save_last(trainer: Trainer, val: dict | None) -> dict:
    """Write last.pt of the run as it stands, with the validation scores `val` if it has them; returns it."""
    checkpoint = training_checkpoint(trainer.model, trainer.optimizer, trainer.schedule, trainer.state,
                                     vars(trainer.args), val, trainer.processes.device)
    save_checkpoint(trainer.model_dir / "last.pt", checkpoint)
    trainer.saved_step = trainer.state.step
    return checkpoint


def stop_run(trainer: Trainer, stop: StopOnSignal, where: str, save: bool) -> None:
    """After a signal or at the --time-limit: save last.pt (unless the epoch's end just did) and stop."""
    if trainer.main_process and save:
        save_last(trainer, None)
    trainer.figures.stopped(cause=stop.kind(), where=where, step=trainer.state.step)
    trainer.writer.close()
    raise stop.stopped(where, trainer.model_dir, trainer.args.output_folder)


def run_epoch(trainer: Trainer, stop: StopOnSignal) -> None:
    """The training steps of one epoch, from where the run stands; a stop saves last.pt and raises RunStopped."""
    args, state, (rank, world_size, device) = trainer.args, trainer.state, trainer.processes
    trainer.model.train()
    state.shuffle_rng = trainer.shuffle_generator.get_state()
    # Running sums stay on the device and are read every --log-interval steps, not every step.
    running = torch.zeros(6, device=device)  # as training_step returns them
    running_steps = 0
    batches = epoch_batches(trainer.train_images, args.batch_size, trainer.shuffle_generator, args.num_workers,
                            skip=state.batches_done, shard=rank, num_shards=world_size)
    progress = tqdm(batches, initial=state.batches_done, total=trainer.steps_per_epoch,
                    desc=f"epoch {state.epoch + 1}/{args.num_epochs}", unit="batch", leave=False,
                    dynamic_ncols=True, disable=not trainer.main_process)
    for batch in progress:
        losses = training_step(trainer.model, trainer.optimizer, batch.to(device, non_blocking=True), amp=args.amp,
                               forward=trainer.forward)
        trainer.schedule.step()
        trainer.threads.step_done()
        state.step += 1
        state.batches_done += 1
        # Recorded on the device, read with the logs: finding the first bad step needs no sync per step.
        trainer.first_bad_step = torch.where((trainer.first_bad_step < 0) & ~torch.isfinite(losses[0]), state.step,
                                             trainer.first_bad_step)
        running += losses
        running_steps += 1
        # Under torchrun the processes agree on stopping at the logging steps only: a collective per step would
        # cost a sync per step.
        logging = state.step % args.log_interval == 0
        stopping = (logging or world_size == 1) and stop.agreed()
        if logging or stopping:
            check_finite(trainer)
            if trainer.main_process:
                log_training(trainer.writer, progress, running / running_steps, trainer.schedule.get_last_lr()[0],
                             state.step, trainer.model.discrete)
            running.zero_()
            running_steps = 0
        if stopping:
            progress.close()
            stop_run(trainer, stop, f"at step {state.step} (epoch {state.epoch + 1}, batch {state.batches_done} of "
                                    f"{trainer.steps_per_epoch})", save=True)


def validate_and_save(trainer: Trainer, started: float) -> None:
    """After an epoch: the validation scores, last.pt (and best.pt when they improved), the epoch's figures and its
    summary line."""
    check_finite(trainer)
    args, state, device = trainer.args, trainer.state, trainer.processes.device
    state.epoch, state.batches_done = state.epoch + 1, 0
    state.shuffle_rng = trainer.shuffle_generator.get_state()
    try:
        scores = score_reconstructions(trainer.model, trainer.val_images, batch_size=1000, device=device)
    except Exception:
        if trainer.main_process:  # the epoch's training is kept, though its validation failed
            save_last(trainer, None)
        raise
    restarts = read_restarts(trainer.model)
    if trainer.main_process:
        log_validation(trainer.writer, trainer.model, scores, trainer.val_images[:NUM_FIXED_IMAGES].to(device),
                       state.step, restarts)
    improved = scores.recon_loss < state.best_recon_loss
    if improved:
        state.best_recon_loss, state.best_epoch = scores.recon_loss, state.epoch
    if not trainer.main_process:
        return
    val = {"recon_loss": scores.recon_loss, "mse": scores.mse, "codebook_usage": scores.codebook_usage,
           "perplexity": scores.perplexity}
    checkpoint = save_last(trainer, val)
    if improved:
        save_checkpoint(trainer.model_dir / "best.pt", checkpoint)
    seconds = time.perf_counter() - started
    trainer.writer.add_scalar("time/epoch_seconds", seconds, state.step)
    trainer.writer.flush()
    trainer.figures.epoch("autoencoder", epoch=state.epoch, step=state.step, **val, psnr=scores.psnr,
                          ssim=scores.ssim, codes_used=scores.codes_used,
                          dead_codes=len(scores.counts) - scores.codes_used, restarts=restarts,
                          kl_bits=scores.kl_bits, seconds=seconds)
    tqdm.write(f"epoch {state.epoch:>2}/{args.num_epochs}  val recon loss {scores.recon_loss:.5f}  "
               f"MSE {scores.mse:.5f} ({scores.psnr:.1f} dB)  {bottleneck_health(trainer.model, scores, restarts)}  "
               f"{seconds:.1f} s" + ("  [best]" if improved else ""))


def read_restarts(model: VQVAE) -> int:
    """The codes the VQ restarted since the last call, which resets the count; 0 for the other bottlenecks."""
    counter = getattr(model.quantizer, "restarts", None)
    if counter is None:
        return 0
    restarts = int(counter)
    counter.zero_()
    return restarts


def bottleneck_health(model: VQVAE, scores, restarts: int) -> str:
    """The epoch line's word on the bottleneck: codebook usage, perplexity, dead codes and restarts, or the KL."""
    if not model.discrete:
        return f"KL {scores.kl_bits:.1f} bits"
    dead = len(scores.counts) - scores.codes_used
    return (f"codes used {scores.codes_used}/{model.config.num_embeddings} ({scores.codebook_usage:.1%})  "
            f"perplexity {scores.perplexity:.1f}  dead {dead}  restarts {restarts}")
