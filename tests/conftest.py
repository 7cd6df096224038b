"""Fixtures: tiny MNIST-format files, so the pipeline can be tested in seconds without the real 60,000 images."""
from pathlib import Path

import pytest

from helpers import write_tiny_mnist
from vqmnist.io import data


@pytest.fixture
def tiny_mnist(tmp_path, monkeypatch) -> Path:
    """A data folder in torchvision's layout (DATA/MNIST/raw/*.gz) whose MD5s the loader accepts."""
    data_folder = tmp_path / "data"
    checksums = write_tiny_mnist(data_folder / "MNIST" / "raw")
    monkeypatch.setattr(data, "MNIST_MD5", checksums)
    return data_folder


@pytest.fixture
def offline(monkeypatch):
    """Point torchvision's MNIST mirrors at a closed local port, so a download attempt fails at once."""
    from torchvision import datasets

    monkeypatch.setattr(datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])
