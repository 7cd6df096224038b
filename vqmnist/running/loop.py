"""The one training loop, of the autoencoder and of the prior alike: epochs of steps, logs, stops, validation, saves."""
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

import torch
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from vqmnist.checkpoints.format import RunState
from vqmnist.configuration.errors import UserError
from vqmnist.running.machine import ThreadChooser
from vqmnist.running.run_log import RunFigures, log_training
from vqmnist.running.stopping import StepInterrupted, StopOnSignal


class Validation(NamedTuple):
    """What a task's validation after an epoch found."""

    score: float  # lower is better: the epoch with the lowest is the best so far
    figures: dict[str, float]  # by name, for run.json
    line: str  # what the epoch line says of them


class TrainingTask(Protocol):
    """What train_epochs trains: autoencoder_task.AutoencoderTask or prior_task.PriorTask."""

    part: str  # "autoencoder" or "prior": its entry in run.json and its epoch-time curve
    label: str  # its word for an epoch in the progress bar and the epoch line
    tag_prefix: str  # of its training curves' TensorBoard tags
    module: nn.Module  # what trains: put in training mode at every epoch's start
    schedule: torch.optim.lr_scheduler.LRScheduler
    shuffle_generator: torch.Generator  # draws each epoch's batch order
    steps_per_epoch: int
    last_path: Path  # the file save() writes the run to as it stands
    resume_command: str  # what a user runs to go on after a stop
    divergence_advice: str  # what usually makes its loss NaN, and what to change

    def batches(self, skip: int) -> Iterable:
        """The epoch's batches in the order its shuffle generator draws now, less the first `skip`."""

    def step(self, batch) -> dict[str, Tensor]:
        """One optimizer step; its figures by name, detached, on the device (nothing waits for it), "loss" first."""

    def validate(self, step: int) -> Validation:
        """Score the epoch (and log its pictures) on every process; TensorBoard on process 0 only."""

    def save(self, state: RunState, validation: Validation | None, best: bool) -> None:
        """Write last_path as the run stands (with its validation where it has one), and the best file if best."""


@dataclass
class LoopSettings:
    epochs: int
    log_interval: int  # steps between TensorBoard points and progress-bar updates
    device: torch.device
    main_process: bool = True  # process 0, the one that prints, logs and saves
    world_size: int = 1  # processes under torchrun; they agree on stopping at the logging steps only


def train_epochs(task: TrainingTask, state: RunState, settings: LoopSettings, stop: StopOnSignal,
                 writer: SummaryWriter, figures: RunFigures, threads: ThreadChooser) -> None:
    """Train `task` from where `state` stands to the end of its epochs: running sums on the device, read every
    log_interval steps; the first non-finite loss found without a sync per step; a stop (signal, --time-limit) saves
    and raises RunStopped; after each epoch, validation, last_path, the best so far, run.json and the epoch line."""
    first_bad_step = torch.full((), -1, dtype=torch.long, device=settings.device)
    saved_step = state.step or None  # a resumed run starts from the step its checkpoint saved
    # The processes of this loop agree on a stop; one alone (the prior, even under torchrun) asks only itself.
    stop_now = stop.agreed if settings.world_size > 1 else stop.requested
    while state.epoch < settings.epochs:
        started = time.perf_counter()
        task.module.train()
        state.shuffle_rng = task.shuffle_generator.get_state()
        sums: dict[str, Tensor] = {}
        steps_summed = 0
        progress = tqdm(task.batches(skip=state.batches_done), initial=state.batches_done,
                        total=task.steps_per_epoch, desc=f"{task.label} {state.epoch + 1}/{settings.epochs}",
                        unit="batch", leave=False, dynamic_ncols=True, disable=not settings.main_process)
        for batch in progress:
            try:
                # A run's first step (a codebook's k-means++ seeding may take long) has nothing saved to lose: a
                # signal abandons it at once. Under torchrun every process must finish it.
                with stop.abandonable(state.step == 0 and settings.world_size == 1):
                    values = task.step(batch)
            except StepInterrupted:
                progress.close()
                abandon_step(task, state, stop, writer, figures, saved=saved_step is not None)
            task.schedule.step()
            threads.step_done()
            state.step += 1
            state.batches_done += 1
            first_bad_step = torch.where((first_bad_step < 0) & ~torch.isfinite(values["loss"]), state.step,
                                         first_bad_step)
            sums = {name: sums[name] + value if name in sums else value for name, value in values.items()}
            steps_summed += 1
            logging = state.step % settings.log_interval == 0
            # A collective per step would cost a sync per step: under torchrun they agree at the logging steps.
            stopping = (logging or settings.world_size == 1) and stop_now()
            if logging or stopping:
                check_finite(task, first_bad_step, saved_step)
                if settings.main_process:
                    means = (torch.stack(list(sums.values())) / steps_summed).tolist()  # the one read
                    log_training(writer, progress, {**dict(zip(sums, means)), "lr": task.schedule.get_last_lr()[0]},
                                 state.step, task.tag_prefix)
                sums, steps_summed = {}, 0
            if stopping:
                progress.close()
                stop_run(task, state, settings, stop, writer, figures, save=True,
                         where=f"at step {state.step} ({task.label} {state.epoch + 1}, batch {state.batches_done} "
                               f"of {task.steps_per_epoch})")
        check_finite(task, first_bad_step, saved_step)
        state.epoch, state.batches_done = state.epoch + 1, 0
        state.shuffle_rng = task.shuffle_generator.get_state()
        try:
            validation = task.validate(state.step)
        except Exception:
            if settings.main_process:  # the epoch's training is kept, though its validation failed
                task.save(state, None, best=False)
            raise
        improved = validation.score < state.best_score
        if improved:
            state.best_score, state.best_epoch = validation.score, state.epoch
        if settings.main_process:
            task.save(state, validation, best=improved)
            saved_step = state.step
            seconds = time.perf_counter() - started
            writer.add_scalar(f"time/{task.part}_epoch_seconds", seconds, state.step)
            writer.flush()
            figures.epoch(task.part, epoch=state.epoch, step=state.step, **validation.figures, seconds=seconds)
            tqdm.write(f"{task.label} {state.epoch:>2}/{settings.epochs}  {validation.line}  {seconds:.1f} s"
                       + ("  [best]" if improved else ""))
        if stop_now():
            stop_run(task, state, settings, stop, writer, figures, save=False,
                     where=f"after {task.label} {state.epoch}")


def check_finite(task: TrainingTask, first_bad_step: Tensor, saved_step: int | None) -> None:
    """Stop at a NaN or infinite loss, saying what the run left and what usually causes it."""
    bad_step = int(first_bad_step)
    if bad_step < 0:
        return
    kept = (f"{task.last_path} holds the last good state (step {saved_step})" if saved_step is not None
            else "no checkpoint of this run was saved before it")
    raise UserError(f"the {task.part}'s loss became NaN or infinite at step {bad_step}: stopped without saving it; "
                    f"{kept}; {task.divergence_advice}")


def abandon_step(task: TrainingTask, state: RunState, stop: StopOnSignal, writer: SummaryWriter, figures: RunFigures,
                 saved: bool) -> None:
    """After a stop seen within a step (StepInterrupted), which is abandoned: note it in run.json and raise
    RunStopped, saying whether last_path keeps the state before it (`saved`) or nothing was saved yet."""
    figures.stopped(cause=stop.kind(), where=f"within step {state.step + 1}", step=state.step)
    writer.close()
    raise stop.abandoned(state.step + 1, task.last_path if saved else None, task.resume_command) from None


def stop_run(task: TrainingTask, state: RunState, settings: LoopSettings, stop: StopOnSignal, writer: SummaryWriter,
             figures: RunFigures, save: bool, where: str) -> None:
    """After a signal or at the --time-limit: save last_path (unless the epoch's end just did), note it in run.json,
    and raise RunStopped."""
    if settings.main_process and save:
        task.save(state, None, best=False)
    figures.stopped(cause=stop.kind(), where=where, step=state.step)
    writer.close()
    raise stop.stopped(where, task.last_path, task.resume_command)
