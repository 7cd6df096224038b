"""What several test modules share: tiny MNIST-format files, a tiny training run, a signal or an error at a chosen
call, and checkpoints as format 1 wrote them."""
import dataclasses
import gzip
import hashlib
import signal
import struct
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from modules import BOTTLENECKS, VQVAEConfig
from vqmnist.checkpoints.format import FORMAT_1_ARG_NAMES
from vqmnist.configuration import training_flags
from vqmnist.io import data
import vqvae

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


TINY_PRIOR = ("--prior-epochs", "1", "--prior-width", "16", "--prior-layers", "1", "--prior-heads", "2",
              "--prior-batch-size", "64")


# The tiny run's bottleneck flags: 16 codes (a level) for the discrete ones, D = 4 for the Gaussian VAE.
TINY_BOTTLENECKS = {"vq": ("--k", "16"), "fsq": ("--bottleneck", "fsq", "--fsq-levels", "4,4"),
                    "lfq": ("--bottleneck", "lfq", "--lfq-bits", "4"),
                    "simvq": ("--bottleneck", "simvq", "--k", "16"),
                    "rvq": ("--bottleneck", "rvq", "--k", "16"),
                    "gaussian": ("--bottleneck", "gaussian", "--code-dim", "4")}


def train_tiny(data_folder, *extra, bottleneck: str | None = "vq"):
    """The tiny run with flags `extra`, and the tiny flags of a bottleneck of TINY_BOTTLENECKS (none for None): only
    those that apply, as vqvae.py refuses a typed flag that cannot (the autoencoder's with --prior-only, the prior's
    where it trains none)."""
    pairs = set(zip(extra, extra[1:]))
    prior_only = "--prior-only" in extra
    no_prior = bottleneck == "gaussian" or ("--bottleneck", "gaussian") in pairs or ("--prior-epochs", "0") in pairs
    autoencoder = () if prior_only else ("--num-epochs", "1", "--val-size", "64", "--batch-size", "64",
                                         "--hidden-size", "8", *TINY_BOTTLENECKS.get(bottleneck, ()))
    args = training_flags.build_parser().parse_args([
        "--data-folder", str(data_folder), *autoencoder, "--log-interval", "1", "--output-folder", "tiny",
        *(() if no_prior else TINY_PRIOR), *extra])
    vqvae.main(args)


def assert_every_loss_term_trains(losses: dict, module: torch.nn.Module, z_e: torch.Tensor, update: str) -> None:
    """A VQ's loss terms: a codebook term only where the codebook learns by it (`update` "loss"), and each term's
    gradient reaches z_e or a trainable parameter of module, so none only adds a constant to the loss."""
    assert set(losses) == ({"codebook", "commitment"} if update == "loss" else {"commitment"})
    trained = [z_e, *(parameter for parameter in module.parameters() if parameter.requires_grad)]
    for name, term in losses.items():
        assert term.requires_grad, f"the {name} loss has no gradient"
        gradients = torch.autograd.grad(term, trained, allow_unused=True, retain_graph=True)
        assert any(gradient is not None and gradient.any() for gradient in gradients), f"the {name} loss trains nothing"


def assert_same_weights(expected: dict, actual: dict) -> None:
    """The same weights (state dicts) to the bit: the default flags fix the thread count, so a resumed run repeats
    every sum."""
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name


def on_call(monkeypatch, owner, name, call_number, action):
    """Make owner.name call action() first on its call_number-th call (which may raise), and run as usual."""
    original = getattr(owner, name)
    calls = {"count": 0}

    def wrapper(*args, **kwargs):
        calls["count"] += 1
        if calls["count"] == call_number:
            action()
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)


def signal_on_call(monkeypatch, owner, name, call_number, signum):
    """Make owner.name raise the signal against this process on its call_number-th call, then run as usual."""
    on_call(monkeypatch, owner, name, call_number, lambda: signal.raise_signal(signum))


def fail_on_call(monkeypatch, owner, name, call_number, error: BaseException):
    """Make owner.name raise `error` on its call_number-th call, and run as usual before."""

    def fail():
        raise error

    on_call(monkeypatch, owner, name, call_number, fail)


def tiny_run_in(folder: Path, *flags, bottleneck: str = "vq") -> Path:
    """Train the tiny run (train_tiny with flags) in folder, on tiny MNIST files of its own; returns folder."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(data, "MNIST_MD5", write_tiny_mnist(folder / "data" / "MNIST" / "raw"))
        patch.chdir(folder)
        train_tiny(folder / "data", *flags, bottleneck=bottleneck)
    return folder


def model_config(bottleneck: str = "vq", **fields) -> VQVAEConfig:
    """A VQVAEConfig from flat fields as the flags give them: the autoencoder's own, and the rest the bottleneck's."""
    own = {field.name for field in dataclasses.fields(VQVAEConfig)}
    bottleneck_config = BOTTLENECKS[bottleneck].Config(**{name: value for name, value in fields.items()
                                                          if name not in own})
    return VQVAEConfig(bottleneck=bottleneck, bottleneck_config=bottleneck_config,
                       **{name: value for name, value in fields.items() if name in own})


def format_2(checkpoint: dict) -> dict:
    """The checkpoint as format 2 wrote it: one flat model config, the bottleneck's weights under "quantizer.", the
    best validation loss as "best_recon_loss"."""
    old = dict(checkpoint, format=2)
    config = dict(checkpoint["config"])
    old["config"] = {**config.pop("bottleneck_config"), **config}
    old["model"] = {("quantizer." + key.removeprefix("bottleneck.") if key.startswith("bottleneck.") else key): value
                    for key, value in checkpoint["model"].items()}
    if "training" in checkpoint:
        training = dict(checkpoint["training"])
        training["best_recon_loss"] = training.pop("best_score")
        old["training"] = training
    return old


def format_1(checkpoint: dict) -> dict:
    """The checkpoint as the code before the format number wrote it: format 2's layout, without "format", the flags'
    older names in args."""
    old_names = {new: old for old, new in FORMAT_1_ARG_NAMES.items()}
    old = {key: value for key, value in format_2(checkpoint).items() if key != "format"}
    old["args"] = {old_names.get(name, name): value for name, value in checkpoint["args"].items()}
    return old
