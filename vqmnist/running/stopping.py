"""Stopping a run cleanly: Ctrl-C, SIGTERM or the --time-limit are noted; the loop saves and stops at its next step."""
import contextlib
import math
import signal
import time
from pathlib import Path

import torch
import torch.distributed as dist

from vqmnist.configuration.errors import RunStopped
from vqmnist.running.processes import distributed


class StepInterrupted(Exception):
    """Raised by a signal within a step that may be abandoned (`StopOnSignal.abandonable`): the first step of a run,
    which may seed a codebook for long and has nothing saved to lose."""


class StopOnSignal:
    """While active, Ctrl-C and SIGTERM only note the stop: the loop finishes its step, saves and stops. So does
    passing the deadline of --time-limit (time.monotonic()). A second Ctrl-C stops at once."""

    def __init__(self, deadline: float = math.inf):
        self.deadline = deadline
        self.received = None  # the signal, if one came
        self.timed_out = False
        self.abandoning = False  # within a step a signal abandons at once

    def __enter__(self):
        self.previous = {sig: signal.signal(sig, self.handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum)
        if self.abandoning:
            raise StepInterrupted

    @contextlib.contextmanager
    def abandonable(self, allowed: bool):
        """Where allowed, a signal within the block (or one already noted) raises StepInterrupted at once instead of
        waiting for the step's end; elsewhere the block runs as it would without this."""
        if allowed and self.received is not None:
            raise StepInterrupted
        self.abandoning = allowed
        try:
            yield
        finally:
            self.abandoning = False

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

    def abandoned(self, step: int, saved: Path | None, resume_command: str) -> RunStopped:
        """The one-line report of a stop seen within step `step`, which was abandoned; `saved` is the file that keeps
        the run's last saved state, None where nothing was saved yet."""
        cause, exit_code = self.cause()
        kept = (f"{saved} keeps the state before it; continue with: {resume_command}" if saved is not None
                else "nothing was saved yet: run the same command again to start over")
        return RunStopped(f"{cause} within step {step}, which was abandoned; {kept}", exit_code)

    def stopped(self, where: str, saved: Path, resume_command: str) -> RunStopped:
        """The one-line report of a stop after `saved` was written."""
        cause, exit_code = self.cause()
        return RunStopped(f"{cause} {where}; saved {saved}; continue with: {resume_command}", exit_code)
