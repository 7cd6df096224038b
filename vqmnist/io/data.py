"""The digits for the scripts: MNIST-format files of a known data set checked by their MD5s (or one's own checked by
their format), the validation split, the epoch's batches."""
import contextlib
import gzip
import hashlib
import io
import math
import struct
import sys
import zlib
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from pixel_distributions import IMAGE_PIXELS
from vqmnist.configuration.errors import UserError
from vqmnist.io.files import atomic_path

# MD5 of the four original MNIST files after gunzip (the .gz bytes differ between mirrors, the content does not).
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
NUM_CLASSES = 10  # the digits 0 to 9
TRAIN_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


class KnownDataset(NamedTuple):
    """A data set in MNIST's format that torchvision knows: its name in messages, its folder under the data folder
    (DATA/FOLDER/raw, torchvision's layout) and the MD5 of each original .gz, as torchvision lists them."""

    title: str
    folder: str
    gz_md5: dict[str, str]


# Fashion-MNIST and Kuzushiji-MNIST, with the MD5s of torchvision.datasets.FashionMNIST's and KMNIST's resources.
KNOWN_DATASETS = {
    "fashion-mnist": KnownDataset("Fashion-MNIST", "FashionMNIST", {
        "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310"}),
    "kmnist": KnownDataset("KMNIST", "KMNIST", {
        "train-images-idx3-ubyte": "bdb82020997e1d708af4cf47b453dcf7",
        "train-labels-idx1-ubyte": "e144d726b3acfaa3e44228e80efcd344",
        "t10k-images-idx3-ubyte": "5c965bf0a639b31b8f53240b1b52f4d7",
        "t10k-labels-idx1-ubyte": "7320c461ea6c1c855c0b718fb2a4b134"}),
}
# --dataset: MNIST (checked by the MD5s of its content), a known data set (by its .gz's), or one's own files in the
# same format (checked by that format alone).
DATASETS = ("mnist", *KNOWN_DATASETS, "own")
# An IDX file is read whole; one larger than this (a million images and more) is no data set of 28x28 digits, and
# a gzip that would inflate past it is refused before it fills the memory.
MAX_IDX_BYTES = 1 << 30
IDX_IMAGES, IDX_LABELS = 2051, 2049  # the magic numbers of MNIST's image and label files: uint8, 3 and 1 dimensions


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


def _download(data_folder: Path, train: bool, title: str = "MNIST", torchvision_class: str = "MNIST") -> bool:
    # Imported here: torchvision's import loads its model zoo, which --help and a flag error need
    # not wait for.
    from torchvision import datasets
    print(f"{title} is not in {data_folder}; trying torchvision's download", file=sys.stderr)
    # torchvision prints a line per failed mirror; the one line that matters is ours.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            getattr(datasets, torchvision_class)(str(data_folder), train=train, download=True)
        except Exception:
            return False
    return True


def read_idx(path: Path, magic: int, check_stored=None) -> Tensor:
    """The uint8 values of an IDX file (gzipped or not) of 28x28 images (N, 28, 28) or of labels (N,), as `magic`
    says, its bytes as stored first given to check_stored(path, stored) where there is one; UserError naming the
    file if it is not one."""
    what = "MNIST-format image file" if magic == IDX_IMAGES else "MNIST-format label file"
    try:
        with open(path, "rb") as file:
            stored = file.read(MAX_IDX_BYTES + 1)
        if len(stored) > MAX_IDX_BYTES:
            raise UserError(f"{path} is over {MAX_IDX_BYTES:,} bytes: it is not a {what} of 28x28 digits")
        if check_stored is not None:  # an original checked by its checksum before anything is read from it
            check_stored(path, stored)
        content = stored
        if stored[:2] == b"\x1f\x8b":  # a gzip
            with gzip.open(io.BytesIO(stored), "rb") as compressed:
                content = compressed.read(MAX_IDX_BYTES + 1)
            if len(content) > MAX_IDX_BYTES:
                raise UserError(f"{path} inflates to over {MAX_IDX_BYTES:,} bytes: it is not a {what} of 28x28 digits")
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise UserError(f"{path} is not a readable gzip file ({error}): replace it") from None
    except OSError as error:
        raise UserError(f"cannot read {path} ({error.strerror}): check the file") from None
    header = struct.calcsize(">IIII") if magic == IDX_IMAGES else struct.calcsize(">II")
    if len(content) < header or struct.unpack(">I", content[:4])[0] != magic:
        raise UserError(f"{path} is not a {what} (its header does not start with the magic number {magic}): "
                        "give the file in the IDX format of MNIST")
    count, *side = struct.unpack(">IIII" if magic == IDX_IMAGES else ">II", content[:header])[1:]
    if side not in ([], [28, 28]):
        raise UserError(f"{path} holds {side[0]}x{side[1]} images: the models here read 28x28 ones")
    size = IMAGE_PIXELS if magic == IDX_IMAGES else 1
    if count == 0 or len(content) != header + count * size:
        raise UserError(f"{path} says it holds {count:,} {'images' if size > 1 else 'labels'} but has "
                        f"{len(content) - header:,} bytes of them, not {count * size:,}: it is truncated or damaged")
    values = torch.frombuffer(bytearray(content[header:]), dtype=torch.uint8)
    return values.view(count, 28, 28) if size > 1 else values


def read_pair(images_path: Path, labels_path: Path, check_stored=None) -> tuple[Tensor, Tensor]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 from a pair of IDX files that agree, each file's stored bytes
    first given to check_stored(path, stored) where there is one."""
    images = read_idx(images_path, IDX_IMAGES, check_stored)
    labels = read_idx(labels_path, IDX_LABELS, check_stored)
    if len(images) != len(labels):
        raise UserError(f"{images_path} holds {len(images):,} images but {labels_path} {len(labels):,} labels: give "
                        "the labels of these images")
    if int(labels.max()) >= NUM_CLASSES:
        raise UserError(f"{labels_path} has a label {int(labels.max())}: the labels must be the classes 0 to "
                        f"{NUM_CLASSES - 1}")
    return images, labels.long()


def found(folders: list[Path], name: str, suffixes: tuple[str, ...]) -> Path | None:
    """The first of FOLDER/NAME+SUFFIX that is a file, folder by folder, or None."""
    return next((folder / f"{name}{suffix}" for folder in folders for suffix in suffixes
                 if (folder / f"{name}{suffix}").is_file()), None)


def load_known(data_folder: Path, train: bool, known: KnownDataset) -> tuple[Tensor, Tensor]:
    """A known data set's images and labels from its original .gz files, each checked by torchvision's MD5."""
    raw_folder = data_folder / known.folder / "raw"
    names = TRAIN_FILES if train else TEST_FILES

    def paths() -> list[Path | None]:
        return [found([raw_folder, data_folder], name, (".gz",)) for name in names]

    if None in paths() and not _download(data_folder, train, known.title, known.folder):
        raise UserError(f"{known.title} files not found in {raw_folder} or {data_folder} and the download failed: put "
                        f"{', '.join(f'{name}.gz' for name in known.gz_md5)} (the original files) there")

    def check_stored(path: Path, stored: bytes) -> None:
        if hashlib.md5(stored).hexdigest() != known.gz_md5[path.name.removesuffix(".gz")]:
            raise UserError(f"{path} is corrupt or altered (its MD5 is not that of the {known.title} original): "
                            f"delete it and put the original file back, or train on it with --dataset own")

    return read_pair(*paths(), check_stored)


def load_own(data_folder: Path, train: bool) -> tuple[Tensor, Tensor]:
    """Images and labels from one's own MNIST-format files in the data folder, held to that format alone."""
    paths = [found([data_folder], name, ("", ".gz")) for name in (TRAIN_FILES if train else TEST_FILES)]
    if None in paths:
        wanted = " and ".join(f"{name} (or {name}.gz)" for name in (TRAIN_FILES if train else TEST_FILES))
        raise UserError(f"--dataset own reads {wanted} from --data-folder {data_folder}: put them there")
    return read_pair(*paths)


def load_mnist(data_folder, train: bool, dataset: str = "mnist") -> tuple[Tensor, Tensor]:
    """The training or test images (N, 28, 28) uint8 and labels (N,) int64 of `dataset` (one of DATASETS).

    MNIST's original IDX files are MD5-checked; they may sit in DATA/MNIST/raw (torchvision's layout) or in DATA
    itself, gzipped or not. Fashion-MNIST's and KMNIST's original .gz files sit in DATA/FashionMNIST/raw or
    DATA/KMNIST/raw (or DATA) and are checked by their MD5s; one's own files ("own") sit in DATA, gzipped or not,
    and are held to the format: 28x28 uint8 images, as many labels, each a class 0 to 9.
    """
    if dataset == "own":
        return load_own(Path(data_folder), train)
    if dataset in KNOWN_DATASETS:
        return load_known(Path(data_folder), train, KNOWN_DATASETS[dataset])
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


def split_train_validation(images: Tensor, val_size: int) -> tuple[Tensor, Tensor]:
    """A fixed split: the last val_size training images are the validation set."""
    if not 0 < val_size < len(images):
        raise UserError(f"--val-size must be between 1 and {len(images) - 1} for {len(images)} training images, "
                        f"got {val_size}")
    return images[:-val_size], images[-val_size:]


def shard_size(count: int, num_shards: int) -> int:
    """Images per process and epoch: every process gets as many, so they all take the same number of steps."""
    return count // num_shards


def steps_per_epoch(count: int, batch_size: int, num_shards: int = 1) -> int:
    """Optimizer steps of one process in an epoch over `count` images (or code grids), the last batch short."""
    return math.ceil(shard_size(count, num_shards) / batch_size)


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
    """The training set cut into the training and validation splits, images (N, 28, 28) uint8 and labels."""

    train_images: Tensor
    train_labels: Tensor
    val_images: Tensor
    val_labels: Tensor


def load_splits(data_folder, val_size: int, dataset: str = "mnist") -> Splits:
    """The training set of `dataset`, split by split_train_validation."""
    images, labels = load_mnist(data_folder, train=True, dataset=dataset)
    train_images, val_images = split_train_validation(images, val_size)
    train_labels, val_labels = split_train_validation(labels, val_size)
    return Splits(train_images, train_labels, val_images, val_labels)
