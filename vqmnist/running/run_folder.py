"""A run's folders, logs/NAME and models/NAME: made when it starts, held while it lives, never taken from another."""
import contextlib
import fcntl
import os
from pathlib import Path
from collections.abc import Callable
from typing import NamedTuple

from vqmnist.configuration.errors import UserError


class RunFolders(NamedTuple):
    log_dir: Path  # logs/NAME: TensorBoard's events
    model_dir: Path  # models/NAME: the checkpoints, run.json and the lock


def run_folders(name: str) -> RunFolders:
    """Where the run called `name` (its --output-folder) keeps its files."""
    return RunFolders(Path("logs") / name, Path("models") / name)


def unwritable(error: OSError, folder: Path) -> UserError:
    """The one line for a folder that cannot be written to."""
    return UserError(f"cannot write to {error.filename or folder}: {error.strerror}; choose a writable place")


def make_folder(folder: Path) -> None:
    """Create folder (and its parents) if need be; a place that cannot take it is one line."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise unwritable(error, folder) from None


def prepare_run_folders(name: str, overwrite: bool, resume: bool, create: bool = True) -> RunFolders:
    """Make logs/NAME and models/NAME, refusing to replace an earlier run's checkpoints unless asked. Under
    torchrun every process checks, and only process 0 creates and cleans (create=True)."""
    log_dir, model_dir = run_folders(name)
    existing = [path for path in (model_dir / "best.pt", model_dir / "last.pt") if path.exists()]
    if existing and not (overwrite or resume):
        raise UserError(f"{existing[0]} already exists: pass --resume to continue that run, --overwrite to "
                        "replace it, or choose another --output-folder")
    if not create:
        return RunFolders(log_dir, model_dir)
    for folder in (log_dir, model_dir):
        make_folder(folder)
    try:
        for folder in (log_dir, model_dir):
            probe = folder / ".write-test"
            probe.touch()
            probe.unlink()
        # Half-written files of a run killed mid-save (the checkpoints themselves are always whole).
        for stale in model_dir.glob(".*.tmp-*"):
            stale.unlink()
        if overwrite:
            # Nothing of the replaced run may be taken for the new one's: its curves would be drawn over the new
            # ones in TensorBoard, and a best.pt, prior_last.pt or run.json of it would stand beside the new last.pt
            # until the new run wrote its own.
            for events in log_dir.glob("events.out.tfevents.*"):
                events.unlink()
            for name in ("best.pt", "last.pt", "prior_last.pt", "run.json"):
                (model_dir / name).unlink(missing_ok=True)
    except OSError as error:
        raise unwritable(error, folder) from None
    return RunFolders(log_dir, model_dir)


@contextlib.contextmanager
def hold_folder(folder: Path, in_use: Callable[[str], str]):
    """Hold folder for the block: an exclusive lock on its .lock file, which the operating system releases when this
    process ends, however it ends (kill -9 included). Another process holding it is the error in_use(its process)."""
    make_folder(folder)
    try:
        lock = open(folder / ".lock", "a+")
    except OSError as error:
        raise unwritable(error, folder) from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            raise UserError(in_use(lock.read(64).strip() or "unknown")) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield


@contextlib.contextmanager
def hold_run_folder(model_dir: Path, hold: bool = True):
    """Hold models/NAME for the block (hold_folder), so that no other run writes there. Under torchrun process 0
    holds it for all of them (hold=False on the others)."""
    if not hold:
        yield
        return
    with hold_folder(model_dir, lambda holder: f"{model_dir} is in use by another run (process {holder}): wait until "
                                               "it ends, or choose another --output-folder"):
        yield
