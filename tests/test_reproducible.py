"""The same command and seed give the same weights, to the bit, however busy the machine is: by default the thread
count is fixed, since PyTorch's sums split differently between thread counts; the thread chooser is a flag."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import TINY_PRIOR, tiny_run_in, write_tiny_mnist
from vqmnist.running import machine as threads

ROOT = Path(__file__).resolve().parent.parent

TWO_EPOCHS = ("--num-epochs", "2")


def simulate_load(monkeypatch, fast_threads: int) -> None:
    """Every ThreadChooser sees steps at fast_threads threads take a fifth of the time of steps at any other count,
    as on a machine where another program keeps a core busy (fast_threads 1) or none does (2)."""
    original = threads.ThreadChooser.__init__

    def init(self, enabled, count=None, clock=None, set_threads=torch.set_num_threads):
        now = {"seconds": 0.0}

        def clock():
            now["seconds"] += 0.01 if torch.get_num_threads() == fast_threads else 0.05
            return now["seconds"]

        original(self, enabled, 2, clock, set_threads)

    monkeypatch.setattr(threads.ThreadChooser, "__init__", init)


def final_weights(folder) -> dict:
    return torch.load(folder / "models" / "tiny" / "last.pt", weights_only=True)["model"]


def test_the_thread_counts_sum_differently_so_a_run_keeps_one():
    """Why the default fixes the count: a convolution's weight gradient, a sum over the batch, differs in its last
    bits between one thread and two."""
    x, w = torch.randn(64, 8, 14, 14), torch.randn(8, 8, 3, 3)
    gradients = []
    previous = torch.get_num_threads()
    for count in (1, 2):
        torch.set_num_threads(count)
        weight = w.clone().requires_grad_()
        torch.nn.functional.conv2d(x, weight, padding=1).square().mean().backward()
        gradients.append(weight.grad)
    torch.set_num_threads(previous)
    if previous < 2:
        pytest.skip("one core: a second thread shares it, so nothing here can differ")
    assert not torch.equal(*gradients)


def test_two_runs_of_one_command_end_bit_identical_under_different_loads(tmp_path, monkeypatch):
    runs = []
    for fast_threads in (1, 2):
        with monkeypatch.context() as patch:
            simulate_load(patch, fast_threads)
            runs.append(final_weights(tiny_run_in(tmp_path / f"load{fast_threads}", *TWO_EPOCHS)))
    for name, tensor in runs[0].items():
        assert torch.equal(tensor, runs[1][name]), name


def test_the_thread_chooser_is_a_flag_that_follows_the_load(tmp_path, monkeypatch):
    """--threads 0 is the chooser: under a simulated busy core it trains on one thread."""
    chosen = []
    original = threads.ThreadChooser.step_done

    def step_done(self):
        original(self)
        chosen.append(torch.get_num_threads())

    monkeypatch.setattr(threads.ThreadChooser, "step_done", step_done)
    simulate_load(monkeypatch, fast_threads=1)
    # 24 steps: enough for a probe of 8 timed steps at each of 2 threads and 1.
    tiny_run_in(tmp_path, "--num-epochs", "6", "--threads", "0", "--prior-epochs", "0")
    assert chosen[-1] == 1 and 2 in chosen, "it probed both counts and kept the faster"


PRIOR_ONLY = """
import json, sys
from pathlib import Path
from vqmnist.io import data
from vqmnist.configuration import training_flags
import vqvae
data.MNIST_MD5 = json.loads(Path(sys.argv[1]).read_text())
vqvae.main(training_flags.build_parser().parse_args(sys.argv[2:]))
"""


def test_a_prior_only_run_in_a_new_process_gives_the_same_prior(tmp_path, monkeypatch):
    """A new process's generator starts from a random seed; --prior-only seeds it with --seed, so two processes of
    one command train the same prior."""
    folder = tiny_run_in(tmp_path, "--prior-epochs", "0")
    checksums = tmp_path / "checksums.json"
    checksums.write_text(json.dumps(write_tiny_mnist(tmp_path / "same_files")))  # the tiny files' MD5s
    priors = []
    for name in ("first", "second"):
        (folder / "models" / name).mkdir()
        shutil.copy(folder / "models" / "tiny" / "best.pt", folder / "models" / name / "best.pt")
        flags = ["--data-folder", str(folder / "data"), "--output-folder", name, "--prior-only", *TINY_PRIOR]
        result = subprocess.run([sys.executable, "-c", PRIOR_ONLY, str(checksums), *flags],
                                cwd=folder, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
        priors.append(torch.load(folder / "models" / name / "best.pt", weights_only=True)["prior"]["model"])
    for name, tensor in priors[0].items():
        assert torch.equal(tensor, priors[1][name]), name
