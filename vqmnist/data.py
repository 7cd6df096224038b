"""MNIST for the scripts: the original IDX files checked by their MD5s, the validation split, the epoch's batches."""
import contextlib
import gzip
import io
import sys
import zlib
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from vqmnist.errors import UserError
from vqmnist.files import atomic_path

# MD5 of the four original MNIST files after gunzip (the .gz bytes differ between mirrors, the content does not).
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
IMAGE_PIXELS = 28 * 28
NUM_CLASSES = 10  # the digits 0 to 9
TRAIN_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _decompress(source: Path, target: Path) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as temporary, gzip.open(source, "rb") as compressed, \
                open(temporary, "wb") as plain:
            while chunk := compressed.read(1 << 20):
                plain.write(chunk)
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise UserError(f"{source} is not a readable gzip file ({error}): replace it with the original "
                        "MNIST file") from None
    except OSError as error:
        raise UserError(f"cannot write {target} ({error.strerror}): make {target.parent} writable or pass a "
                        "writable --data-folder holding the MNIST files") from None


def _ensure_raw_files(data_folder: Path, names) -> bool:
    """Make the uncompressed files torchvision reads exist in DATA/MNIST/raw; False if some are nowhere."""
    raw_folder = data_folder / "MNIST" / "raw"
    for name in names:
        target = raw_folder / name
        if target.is_file():
            continue
        sources = [folder / f"{name}.gz" for folder in (raw_folder, data_folder)]
        source = next((path for path in sources if path.is_file()), None)
        if source is None:
            return False
        _decompress(source, target)
    return True


def _download(data_folder: Path, train: bool) -> bool:
    # Imported here: torchvision's import loads its model zoo, which --help and a flag error need
    # not wait for.
    from torchvision import datasets
    print(f"MNIST is not in {data_folder}; trying torchvision's download", file=sys.stderr)
    # torchvision prints a line per failed mirror; the one line that matters is ours.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            datasets.MNIST(str(data_folder), train=train, download=True)
        except Exception:
            return False
    return True


def load_mnist(data_folder, train: bool) -> tuple[Tensor, Tensor]:
    """MNIST images (N, 28, 28) uint8 and labels (N,) int64, from the original IDX files, MD5-checked.

    The files may sit in DATA/MNIST/raw (torchvision's layout) or in DATA itself, gzipped or not.
    """
    # Imported here: torchvision's import loads its model zoo, which --help and a flag error need
    # not wait for.
    from torchvision import datasets
    from torchvision.datasets.utils import check_integrity

    data_folder = Path(data_folder)
    raw_folder = data_folder / "MNIST" / "raw"
    # torchvision's MNIST wants all four files present, whichever split it reads.
    if not _ensure_raw_files(data_folder, MNIST_MD5) and not _download(data_folder, train):
        wanted = ", ".join(f"{name}.gz" for name in MNIST_MD5)
        raise UserError(f"MNIST files not found in {raw_folder} and the download failed: put {wanted} there "
                        "(or pass --data-folder where they are)")
    for name in TRAIN_FILES if train else TEST_FILES:
        path = raw_folder / name
        if not check_integrity(str(path), MNIST_MD5[name]):
            raise UserError(f"{path} is corrupt or altered (its MD5 is not that of the MNIST original): delete it "
                            "and put the original file (or its .gz) back")
    dataset = datasets.MNIST(str(data_folder), train=train, download=False)
    return dataset.data, dataset.targets


def images_to_inputs(images: Tensor) -> Tensor:
    """uint8 pixels (B, 28, 28) in [0, 255] -> model inputs (B, 1, 28, 28) in [-1, 1]."""
    return images.unsqueeze(1).float().div(127.5).sub(1.0)


def outputs_to_pixels(outputs: Tensor) -> Tensor:
    """Outputs in [-1, 1] (clamped there if beyond) -> pixels in [0, 1]."""
    return outputs.float().add(1.0).div(2.0).clamp(0.0, 1.0)


def split_train_validation(images: Tensor, val_size: int) -> tuple[Tensor, Tensor]:
    """A fixed split: the last val_size training images are the validation set."""
    if not 0 < val_size < len(images):
        raise UserError(f"--val-size must be between 1 and {len(images) - 1} for {len(images)} training images, "
                        f"got {val_size}")
    return images[:-val_size], images[-val_size:]


def shard_size(count: int, num_shards: int) -> int:
    """Images per process and epoch: every process gets as many, so they all take the same number of steps."""
    return count // num_shards


def epoch_batches(images: Tensor, batch_size: int, generator: torch.Generator, num_workers: int,
                  skip: int = 0, shard: int = 0, num_shards: int = 1):
    """One epoch of shuffled batches of images (N, 28, 28) uint8, cut by index from the tensor in memory, less
    the first `skip` (done before a resume). With workers, a DataLoader cuts the same batches in worker processes.

    Under torchrun every process draws the same shuffled order (same generator state) and takes every
    num_shards-th image of it from position `shard`: disjoint shards of equal size."""
    order = torch.randperm(len(images), generator=generator)
    order = order[shard::num_shards][:shard_size(len(images), num_shards)]
    batches = order.to(images.device).split(batch_size)[skip:]
    if num_workers == 0:
        return (images[indices] for indices in batches)
    # Its own generator for the workers' seeds, so starting workers leaves the global RNG (restarts use it) alone.
    loader = DataLoader(TensorDataset(images), batch_sampler=[indices.tolist() for indices in batches],
                        num_workers=num_workers, pin_memory=torch.cuda.is_available(),
                        generator=torch.Generator().manual_seed(0))
    return (batch for (batch,) in loader)


class Splits(NamedTuple):
    """The MNIST training set cut into the training and validation splits, images (N, 28, 28) uint8 and labels."""

    train_images: Tensor
    train_labels: Tensor
    val_images: Tensor
    val_labels: Tensor


def load_splits(data_folder, val_size: int) -> Splits:
    """The MNIST training set, split by split_train_validation."""
    images, labels = load_mnist(data_folder, train=True)
    train_images, val_images = split_train_validation(images, val_size)
    train_labels, val_labels = split_train_validation(labels, val_size)
    return Splits(train_images, train_labels, val_images, val_labels)
