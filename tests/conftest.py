"""Fixtures: tiny MNIST-format files, so the pipeline can be tested in seconds without the real 60,000 images."""
import gzip
import hashlib
import struct
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import utils

NUM_TRAIN = 320
NUM_TEST = 120  # generate.py needs 100 test digits for its grid


def blob_images(count: int, seed: int) -> torch.Tensor:
    """Smooth random blobs on a black background, uint8 (count, 28, 28): digit-like enough to train on."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 1, 7, 7, generator=generator)
    fine = F.interpolate(coarse, size=(28, 28), mode="bilinear", align_corners=False)
    return ((fine - 0.55).clamp(min=0) * 255 / 0.45).round().clamp(0, 255).to(torch.uint8).squeeze(1)


def idx_images(images: torch.Tensor) -> bytes:
    return struct.pack(">IIII", 2051, len(images), 28, 28) + images.numpy().tobytes()


def idx_labels(labels: torch.Tensor) -> bytes:
    return struct.pack(">II", 2049, len(labels)) + labels.to(torch.uint8).numpy().tobytes()


def write_tiny_mnist(folder: Path) -> dict:
    """Write the four gzipped IDX files into folder; returns {name: MD5 of the uncompressed bytes}."""
    contents = {
        "train-images-idx3-ubyte": idx_images(blob_images(NUM_TRAIN, seed=1)),
        "train-labels-idx1-ubyte": idx_labels(torch.arange(NUM_TRAIN) % 10),
        "t10k-images-idx3-ubyte": idx_images(blob_images(NUM_TEST, seed=2)),
        "t10k-labels-idx1-ubyte": idx_labels(torch.arange(NUM_TEST) % 10),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in contents.items():
        (folder / f"{name}.gz").write_bytes(gzip.compress(content, mtime=0))
    return {name: hashlib.md5(content).hexdigest() for name, content in contents.items()}


@pytest.fixture
def tiny_mnist(tmp_path, monkeypatch) -> Path:
    """A data folder in torchvision's layout (DATA/MNIST/raw/*.gz) whose MD5s the loader accepts."""
    data_folder = tmp_path / "data"
    checksums = write_tiny_mnist(data_folder / "MNIST" / "raw")
    monkeypatch.setattr(utils, "MNIST_MD5", checksums)
    return data_folder


@pytest.fixture
def offline(monkeypatch):
    """Point torchvision's MNIST mirrors at a closed local port, so a download attempt fails at once."""
    from torchvision import datasets

    monkeypatch.setattr(datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])
