"""A run holds its folder: a second run on models/NAME, in another process, stops at once naming the first one's
process, and the hold ends with the process that had it, however it ends."""
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import train_tiny
from vqmnist.configuration.errors import UserError
from vqmnist.running.run_folder import hold_run_folder

REPOSITORY = Path(__file__).resolve().parent.parent
HOLD = """
import sys, time
from pathlib import Path
from vqmnist.running.run_folder import hold_run_folder
with hold_run_folder(Path(sys.argv[1])):
    print("holding", flush=True)
    time.sleep(120)
"""


def holder(model_dir: Path) -> subprocess.Popen:
    """Another process that holds model_dir until it is killed."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(model_dir)], stdout=subprocess.PIPE, text=True,
                               cwd=REPOSITORY, env={"PYTHONPATH": str(REPOSITORY)})
    assert process.stdout.readline().strip() == "holding"
    return process


@pytest.mark.parametrize("flags", [[], ["--overwrite"]])
def test_a_second_run_on_a_held_folder_stops_at_once_naming_the_other(flags, tiny_mnist, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    other = holder(tmp_path / "models" / "tiny")
    try:
        with pytest.raises(UserError, match=f"models/tiny is in use by another run \\(process {other.pid}\\)") as error:
            train_tiny(tiny_mnist, *flags)
        assert "\n" not in str(error.value)
        assert not (tmp_path / "models" / "tiny" / "last.pt").exists(), "the second run wrote into the held folder"
        assert not (tmp_path / "logs" / "tiny").exists()
    finally:
        other.kill()  # SIGKILL: no clean-up, the operating system releases the lock
        other.wait()
    train_tiny(tiny_mnist)
    assert (tmp_path / "models" / "tiny" / "best.pt").is_file()


def test_prior_only_holds_the_folder_too(tiny_mnist, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train_tiny(tiny_mnist, "--prior-epochs", "0")
    other = holder(tmp_path / "models" / "tiny")
    try:
        with pytest.raises(UserError, match=f"in use by another run \\(process {other.pid}\\)"):
            train_tiny(tiny_mnist, "--prior-only")
    finally:
        other.kill()
        other.wait()


def test_the_hold_is_released_when_the_run_ends(tmp_path):
    with hold_run_folder(tmp_path / "run"):
        with pytest.raises(UserError, match="in use by another run"):
            with hold_run_folder(tmp_path / "run"):
                pass
    with hold_run_folder(tmp_path / "run"):
        assert (tmp_path / "run" / ".lock").read_text().strip().isdigit()
