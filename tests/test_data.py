"""MNIST loading: both folder layouts, MD5 verification, a clear error when the files are nowhere."""
import gzip

import pytest
import torch

from helpers import NUM_TEST, NUM_TRAIN, blob_images, write_tiny_mnist
from vqmnist import data
from vqmnist.data import epoch_batches
from vqmnist.errors import UserError


def test_loads_torchvision_layout_and_decompresses(tiny_mnist):
    images, labels = data.load_mnist(tiny_mnist, train=True)
    assert images.shape == (NUM_TRAIN, 28, 28) and images.dtype == torch.uint8
    assert torch.equal(images, blob_images(NUM_TRAIN, seed=1))
    assert torch.equal(labels, torch.arange(NUM_TRAIN) % 10)
    assert (tiny_mnist / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()
    test_images, _ = data.load_mnist(tiny_mnist, train=False)
    assert test_images.shape == (NUM_TEST, 28, 28)


def test_loads_gz_files_placed_directly_in_the_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "MNIST_MD5", write_tiny_mnist(tmp_path / "flat"))
    images, _ = data.load_mnist(tmp_path / "flat", train=False)
    assert torch.equal(images, blob_images(NUM_TEST, seed=2))


@pytest.mark.parametrize("name", ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"])
def test_altered_file_is_an_error_not_silent_training(tiny_mnist, name):
    gz = tiny_mnist / "MNIST" / "raw" / f"{name}.gz"
    content = bytearray(gzip.decompress(gz.read_bytes()))
    content[-1] ^= 0xFF
    gz.write_bytes(gzip.compress(bytes(content)))
    with pytest.raises(UserError, match="corrupt or altered"):
        data.load_mnist(tiny_mnist, train=True)


def test_truncated_gzip_is_reported(tiny_mnist):
    gz = tiny_mnist / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:500])
    with pytest.raises(UserError, match="not a readable gzip file"):
        data.load_mnist(tiny_mnist, train=False)


def test_missing_files_name_the_four_files(tmp_path, offline):
    with pytest.raises(UserError) as error:
        data.load_mnist(tmp_path / "empty", train=True)
    for name in data.MNIST_MD5:
        assert f"{name}.gz" in str(error.value)


def test_validation_split_is_the_last_images():
    images = torch.arange(100).view(100, 1, 1)
    train, validation = data.split_train_validation(images, 10)
    assert torch.equal(train, images[:90]) and torch.equal(validation, images[90:])
    with pytest.raises(UserError, match="--val-size"):
        data.split_train_validation(images, 100)


def test_corrupt_deflate_data_is_reported(tiny_mnist):
    gz = tiny_mnist / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    content = bytearray(gz.read_bytes())
    content[20:40] = bytes(20)
    gz.write_bytes(bytes(content))
    with pytest.raises(UserError, match="not a readable gzip file"):
        data.load_mnist(tiny_mnist, train=False)


def test_unwritable_raw_folder_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "MNIST_MD5", write_tiny_mnist(tmp_path / "flat"))
    (tmp_path / "flat" / "MNIST").write_text("a file where the MNIST/raw folder must go")
    with pytest.raises(UserError, match="cannot write"):
        data.load_mnist(tmp_path / "flat", train=False)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_epoch_batches_cover_every_image_once_and_skip_for_a_resume(num_workers):
    images = torch.arange(10 * 28 * 28).reshape(10, 28, 28)
    batches = list(epoch_batches(images, 4, torch.Generator().manual_seed(3), num_workers))
    assert [len(batch) for batch in batches] == [4, 4, 2]
    assert sorted(image[0, 0].item() // (28 * 28) for batch in batches for image in batch) == list(range(10))
    resumed = list(epoch_batches(images, 4, torch.Generator().manual_seed(3), num_workers, skip=2))
    assert len(resumed) == 1 and torch.equal(resumed[0], batches[2])
