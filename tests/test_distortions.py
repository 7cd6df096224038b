"""The distortions the prior trains on: each digit moved a little, differently from the others, kept readable as
its own class by the committed judge, and the same from the same generator."""
import math
from pathlib import Path

import pytest
import torch

from vqmnist.io.data import load_mnist
from vqmnist.running.prior_task import MAX_DEGREES, MAX_SCALE, MAX_SHIFT_PIXELS, distort
from vqmnist.scores.samples import DEFAULT_CLASSIFIER, classifier_accuracy, load_classifier

ROOT = Path(__file__).resolve().parent.parent


def centres_of_mass(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W) -> (B, 2) the (x, y) centre of each image's brightness, in pixels from the image centre."""
    weights = images.float()
    height, width = images.shape[1:]
    ys, xs = torch.meshgrid(torch.arange(height) - (height - 1) / 2, torch.arange(width) - (width - 1) / 2,
                            indexing="ij")
    total = weights.sum((1, 2))
    return torch.stack([(weights * xs).sum((1, 2)) / total, (weights * ys).sum((1, 2)) / total], 1)


def test_each_digit_keeps_its_shape_and_type_and_moves_differently():
    images, _ = load_mnist(ROOT / "data", train=False)
    batch = images[:64]
    distorted = distort(batch, torch.Generator().manual_seed(0))
    assert distorted.shape == batch.shape and distorted.dtype == torch.uint8
    changed = (distorted.int() - batch.int()).abs().flatten(1).sum(1)
    assert (changed > 0).all()
    # Each image draws its own distortion: two copies of one digit come out different.
    twice = distort(batch[:1].repeat(2, 1, 1), torch.Generator().manual_seed(1))
    assert not torch.equal(twice[0], twice[1])


def test_the_same_generator_gives_the_same_distortions():
    images, _ = load_mnist(ROOT / "data", train=False)
    first = distort(images[:32], torch.Generator().manual_seed(5))
    assert torch.equal(first, distort(images[:32], torch.Generator().manual_seed(5)))
    assert not torch.equal(first, distort(images[:32], torch.Generator().manual_seed(6)))


def test_a_digit_moves_no_further_than_the_bounds_allow():
    images, _ = load_mnist(ROOT / "data", train=False)
    batch = images[:500]
    moved = centres_of_mass(distort(batch, torch.Generator().manual_seed(2))) - centres_of_mass(batch)
    # A centre r pixels from the image centre moves at most by the shift plus what the rotation and scale do to r.
    radius = centres_of_mass(batch).norm(dim=1)
    rotation_and_scale = radius * (2 * math.sin(math.radians(MAX_DEGREES) / 2) + MAX_SCALE * 1.2)
    bound = MAX_SHIFT_PIXELS * math.sqrt(2) * (1 + MAX_SCALE) + rotation_and_scale + 0.5  # + resampling and clipping
    assert (moved.norm(dim=1) <= bound).all()
    # And they do move: on average by a fair part of the shift's bound.
    assert moved.norm(dim=1).mean() > MAX_SHIFT_PIXELS / 3


def test_the_judge_reads_distorted_digits_as_their_own_class():
    classifier = load_classifier(DEFAULT_CLASSIFIER, "cpu")
    images, labels = load_mnist(ROOT / "data", train=False)
    images, labels = images[:2000], labels[:2000]
    original = classifier_accuracy(classifier, images, labels, "cpu")
    distorted = classifier_accuracy(classifier, distort(images, torch.Generator().manual_seed(3)), labels, "cpu")
    assert distorted >= original - 0.01 and distorted >= 0.97


@pytest.mark.parametrize("count", [1, 7])
def test_any_batch_size_is_distorted(count):
    images = torch.zeros(count, 28, 28, dtype=torch.uint8)
    images[:, 10:18, 12:16] = 255
    distorted = distort(images, torch.Generator().manual_seed(4))
    assert distorted.shape == (count, 28, 28) and distorted.sum() > 0
