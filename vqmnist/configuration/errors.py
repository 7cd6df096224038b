"""The one-line failures of every script: what a user can fix, a stopped run, and running out of memory or disk."""
import contextlib
import errno
import re
from pathlib import Path

import torch


class UserError(Exception):
    """A problem the user can fix (a bad flag, a missing or corrupt file): reported as one line, exit status 2."""


def shown(value, limit: int = 60) -> str:
    """A value as a one-line message may show it: its repr, cut to `limit` characters; an integer too long for
    Python to print by its count of digits."""
    try:
        text = repr(value)
    except ValueError:  # int's repr refuses more than sys.get_int_max_str_digits() digits
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1:,} digits"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


class RunStopped(Exception):
    """Training stopped after saving its state: reported as one line, with exit status 128 + the signal's number
    after a signal, 0 at the --time-limit."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


# numpy's save reports a write the disk cut short with this message and no errno.
NUMPY_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")


def disk_full(error: BaseException) -> bool:
    """Whether a failed write ran out of space: ENOSPC, the RuntimeError torch.save raises when its writes come up
    short, or the errno-less OSError numpy.save raises then."""
    return (isinstance(error, OSError) and (error.errno == errno.ENOSPC or (
        error.errno is None and NUMPY_SHORT_WRITE.fullmatch(str(error)) is not None))) or (
        isinstance(error, RuntimeError) and "unexpected pos" in str(error))


def out_of_memory(error: BaseException) -> bool:
    """Whether an error is running out of memory: on the GPU, or the CPU allocator's RuntimeError."""
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error))


@contextlib.contextmanager
def running_out_is_a_user_error(memory_advice: str, kept: Path, then: str):
    """Within the block, running out of memory or of disk space becomes one line: what ran out, what to do (for
    memory, `memory_advice`; for the disk, free space), and `then` to go on from `kept`, the file the run saves its
    state to; where there is none yet, the line says nothing was saved."""
    try:
        yield
    except (MemoryError, OSError, RuntimeError) as error:
        saved = (f"{kept} keeps what was last saved" if kept.is_file()
                 else f"nothing was saved yet ({kept} was not written), so start again rather than {then}")
        if out_of_memory(error):
            raise UserError(f"out of memory while training ({type(error).__name__}): {memory_advice}, or free "
                            f"memory and {then}; {saved}") from None
        if disk_full(error):
            where = Path(error.filename).parent if getattr(error, "filename", None) else kept.parent
            raise UserError(f"no space left on the device holding {where}: free space, then {then}; {saved}") from None
        raise
