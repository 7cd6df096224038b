"""Run by test_distributed.py under torchrun: train vqvae.py on the tiny MNIST files and save this process's
codebook, so the test can compare the processes. Arguments: the checksums JSON of the tiny files, the folder for
the codebooks, the training step at which to raise SIGTERM (0: none), then vqvae.py's flags."""
import json
import os
import signal
import sys
from pathlib import Path

import torch

from vqmnist.configuration import training_flags
from vqmnist.configuration.cli import run_cli
from vqmnist.io import data
import vqvae


def main() -> None:
    checksums, output, stop_at_step, *flags = sys.argv[1:]
    data.MNIST_MD5 = json.loads(Path(checksums).read_text())
    if int(stop_at_step):
        original = torch.optim.Adam.step
        calls = {"count": 0}

        def step_then_signal(self, *args, **kwargs):
            calls["count"] += 1
            if calls["count"] == int(stop_at_step):
                signal.raise_signal(signal.SIGTERM)
            return original(self, *args, **kwargs)

        torch.optim.Adam.step = step_then_signal
    model = vqvae.main(training_flags.build_parser().parse_args(flags))
    if model is not None:
        torch.save(model.bottleneck.embedding.weight.detach(), Path(output) / f"codebook{os.environ['RANK']}.pt")


if __name__ == "__main__":
    run_cli(lambda _: main(), None)
