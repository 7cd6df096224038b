"""Fixtures: tiny MNIST-format files, so the pipeline can be tested in seconds without the real 60,000 images."""
import shutil
from pathlib import Path

import pytest

from helpers import write_tiny_mnist
from vqmnist.io import data


@pytest.fixture(scope="session")
def tiny_mnist_files(tmp_path_factory) -> tuple[Path, dict]:
    """write_tiny_mnist's four .gz files, written once for the session (drawing and compressing them takes longer
    than most tests), and their MD5s: only ever copied, never handed to a test."""
    folder = tmp_path_factory.mktemp("tiny_mnist_files")
    return folder, write_tiny_mnist(folder)


@pytest.fixture
def tiny_mnist(tiny_mnist_files, tmp_path, monkeypatch) -> Path:
    """A data folder in torchvision's layout (DATA/MNIST/raw/*.gz) whose MD5s the loader accepts: the session's tiny
    files copied into this test's own folder, as write_tiny_mnist would write them there."""
    files, checksums = tiny_mnist_files
    data_folder = tmp_path / "data"
    raw_folder = data_folder / "MNIST" / "raw"
    raw_folder.mkdir(parents=True, exist_ok=True)
    for file in files.iterdir():
        shutil.copyfile(file, raw_folder / file.name)
    monkeypatch.setattr(data, "MNIST_MD5", dict(checksums))
    return data_folder


@pytest.fixture
def offline(monkeypatch):
    """Point torchvision's MNIST mirrors at a closed local port, so a download attempt fails at once."""
    from torchvision import datasets

    monkeypatch.setattr(datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])
