"""The committed pretrained model: model.txt names it and its SHA-256, the file matches, and it loads, samples
and decodes with no training."""
import hashlib
import re
from pathlib import Path

import torch

from vqmnist.checkpoints.loading import load_model

REPOSITORY = Path(__file__).resolve().parent.parent


def model_txt_entry():
    """(path, SHA-256) of the pretrained file as model.txt states them."""
    text = (REPOSITORY / "model.txt").read_text()
    path = re.search(r"^file:\s*(\S+)", text, re.MULTILINE).group(1)
    digest = re.search(r"^SHA-256:\s*([0-9a-f]{64})\s*$", text, re.MULTILINE).group(1)
    return REPOSITORY / path, digest


def test_pretrained_file_matches_the_sha256_in_model_txt():
    path, digest = model_txt_entry()
    assert path.is_file(), f"{path} is missing"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_pretrained_model_samples_and_decodes_digits():
    path, _ = model_txt_entry()
    model, prior, _, _ = load_model(path, "cpu")
    codes = prior.sample(torch.arange(10), generator=torch.Generator().manual_seed(0))  # (10, 7, 7)
    assert codes.shape == (10, 7, 7) and 0 <= int(codes.min()) and int(codes.max()) < model.bottleneck.num_embeddings
    pixels = model.to_pixels(model.decode(codes))
    assert pixels.shape == (10, 1, 28, 28) and torch.isfinite(pixels).all()
    # Digits are white strokes on black: mostly dark, with some bright pixels in every image.
    assert (pixels.flatten(1).mean(1) < 0.4).all() and (pixels.flatten(1).amax(1) > 0.8).all()
