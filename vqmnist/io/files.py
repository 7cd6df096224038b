"""Files written whole or not at all (each goes to a temporary file beside its target, renamed over it once complete),
and torch files read without torch's warnings."""
import contextlib
import json
import os
import warnings
from pathlib import Path

import torch

from vqmnist.configuration.errors import UserError, disk_full


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside path; when the block succeeds it replaces path, so nobody ever sees half a
    file, and an error or a kill leaves the previous file as it was."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def write_failure(path, error: BaseException, then: str) -> UserError:
    """The one line for a write that failed: a full disk names the device to free and `then` what to run again."""
    if disk_full(error):
        return UserError(f"no space left on the device holding {Path(path).parent}: free space, then {then}")
    return UserError(f"cannot write {path}: {getattr(error, 'strerror', None) or error}")


def check_writable(path) -> None:
    """Refuse, before any work, a file path that names a folder or whose folder cannot take a file: its folder is
    made, and a probe file written there and removed."""
    path = Path(path)
    if path.is_dir() or not path.name:
        raise UserError(f"{path} is a folder: give a file name, such as {path / 'classifier.pt'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.with_name(f".{path.name}.probe-{os.getpid()}")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise UserError(f"cannot write {path}: {error.strerror or error}; choose a writable place") from None


def save_torch(path, content) -> None:
    """torch.save through atomic_path, flushed to the disk before the rename: a crash mid-save leaves the
    previous file intact."""
    with atomic_path(Path(path)) as temporary, open(temporary, "wb") as file:
        torch.save(content, file)
        file.flush()
        os.fsync(file.fileno())


def write_json(path, content) -> None:
    """content as indented JSON, through atomic_path."""
    with atomic_path(Path(path)) as temporary:
        temporary.write_text(json.dumps(content, indent=1) + "\n")


def read_torch_quietly(path, device="cpu") -> object:
    """torch.load(path, weights_only=True) without the warnings torch prints about what it notices on the way (an odd
    pickle protocol in a damaged file, a sparse or nested tensor's prototype API): what it returns is checked by the
    caller, and refused in one line, which a warning would turn into two."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location=device, weights_only=True)
