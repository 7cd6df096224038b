"""The digits for the scripts: MNIST-format files of a known data set checked by their MD5s (or one's own checked by
their format), the validation split, the epoch's batches."""
import contextlib
import gzip
import hashlib
import io
import math
import os
import stat
import struct
import sys
import tempfile
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
# one whose header promises more is refused before anything past its header is read.
MAX_IDX_BYTES = 1 << 30
IDX_IMAGES, IDX_LABELS = 2051, 2049  # the magic numbers of MNIST's image and label files: uint8, 3 and 1 dimensions
# The digits of each split of MNIST, Fashion-MNIST and KMNIST alike: an original file holds no more, so one whose
# header promises more is not one (the largest, the training images, inflates to 47,040,016 bytes).
ORIGINAL_COUNTS = {"train": 60_000, "t10k": 10_000}
GZIP_MAGIC = b"\x1f\x8b"
CHUNK_BYTES = 1 << 20


# The rule for every data file, whichever --dataset reads it, held here: a file is opened only if it is a regular
# file (a link is followed first: a folder, a FIFO, /dev/zero or /dev/null, a link to one, is refused, named for what
# it is); what it holds (a gzip inflated) is read in chunks and never past the bytes its IDX header promises, which
# are at most MAX_IDX_BYTES (for a known data set, its original's size); a known MD5 is checked before anything is
# written next to the user's files, from memory; a refusal writes nothing and makes no folder.


class IdxLayout(NamedTuple):
    """An IDX file of MNIST's format: its header's bytes, the bytes of one item, and its names in messages."""

    header: int
    item: int
    what: str
    items: str


def idx_layout(magic: int) -> IdxLayout:
    """The layout of an image file (IDX_IMAGES) or of a label file (IDX_LABELS)."""
    if magic == IDX_IMAGES:
        return IdxLayout(struct.calcsize(">IIII"), IMAGE_PIXELS, "MNIST-format image file", "images")
    return IdxLayout(struct.calcsize(">II"), 1, "MNIST-format label file", "labels")


class Malformed(Exception):
    """A data file that is not one whole MNIST-format file of 28x28 digits: `reason` says what it is, as the words
    after its name ("says it holds 3 images but ..."), `remedy` what to give instead; `too_many` where it only holds
    more than an original of a known data set does (it may be one's own, larger, data set)."""

    def __init__(self, reason: str, remedy: str = "give the file in the IDX format of MNIST", too_many: bool = False):
        super().__init__(reason)
        self.reason, self.remedy, self.too_many = reason, remedy, too_many


def file_kind(mode: int) -> str:
    """What a file that is not a regular one is, by its st_mode."""
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((kind for test, kind in kinds if test(mode)), "not a regular file")


def is_regular(path: Path) -> bool:
    """Whether path is a regular file, a link to one included."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def open_data_file(path: Path):
    """path opened for reading, if it is a regular file (after following a link); otherwise a UserError that names
    what it is: a folder, a FIFO, a device such as /dev/zero or /dev/null, a link to one, or a link to nothing."""
    link = f"a link to {os.path.realpath(path)}, " if os.path.islink(path) else ""
    not_a_file = "not a data file: replace it with the file itself"
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise UserError(f"{path} is {link}{file_kind(mode)}, {not_a_file}")
        # O_NONBLOCK: a FIFO put there since the check makes open return rather than wait for a writer.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        if os.path.islink(path):
            raise UserError(f"{path} is a link to {os.readlink(path)}, which does not exist: replace it with the "
                            "file itself") from None
        raise UserError(f"{path} is gone: put the file back") from None
    except OSError as error:
        raise UserError(f"cannot read {path} ({error.strerror}): check the file") from None
    mode = os.fstat(descriptor).st_mode
    if not stat.S_ISREG(mode):
        os.close(descriptor)
        raise UserError(f"{path} is {link}{file_kind(mode)}, {not_a_file}")
    os.set_blocking(descriptor, True)
    return os.fdopen(descriptor, "rb")


def read_into(source, view: memoryview, digest=None) -> int:
    """Fill view from the stream in chunks, as far as it goes; the bytes read, given to digest as they come."""
    filled = 0
    while filled < len(view):
        count = source.readinto(view[filled:filled + CHUNK_BYTES])
        if not count:
            break
        if digest is not None:
            digest.update(view[filled:filled + count])
        filled += count
    return filled


def read_content(source, magic: int, limit: int, digest=None, original: str | None = None) -> bytearray:
    """What the IDX stream holds, header and items, exactly as many bytes as its header promises (a gzip is inflated
    on the way): the header is read and checked first, and nothing past the promised bytes, which must be at most
    `limit`, is read but one byte that tells a longer file. Malformed says what the stream is otherwise; digest gets
    the bytes as they come. `original` names the known data set whose original the file must be, where there is
    one: a header that promises more than the original holds is refused as not it."""
    layout = idx_layout(magic)
    head = bytearray(layout.header)
    gzipped = source.peek(2)[:2] == GZIP_MAGIC  # a buffered stream: peek reads nothing away
    stream = gzip.GzipFile(fileobj=source, mode="rb") if gzipped else source
    length = read_into(stream, memoryview(head), digest)
    if length < layout.header:
        raise Malformed(f"is not a {layout.what}: it {'inflates to' if gzipped else 'is'} {length:,} bytes, fewer "
                        f"than the {layout.header}-byte header of one")
    found_magic, count, *side = struct.unpack(">IIII" if magic == IDX_IMAGES else ">II", head)
    if found_magic != magic:
        raise Malformed(f"is not a {layout.what} (its header does not start with the magic number {magic})")
    if side not in ([], [28, 28]):
        raise Malformed(f"holds {side[0]}x{side[1]} images", "the models here read 28x28 ones")
    if count == 0:
        raise Malformed(f"holds 0 {layout.items} (its header's count)", f"give a file with {layout.items}")
    promised = layout.header + count * layout.item
    if original is not None and count > original_count(original):
        raise Malformed(f"says it holds {count:,} {layout.items}, more than the original's "
                        f"{original_count(original):,}", too_many=True)
    if promised > limit:
        raise Malformed(f"says it holds {count:,} {layout.items}, {promised:,} bytes{' inflated' if gzipped else ''}, "
                        f"over the {limit:,} bytes a data file may hold", "it is no data set of 28x28 digits")
    content = bytearray(promised)
    content[:layout.header] = head
    length = layout.header + read_into(stream, memoryview(content)[layout.header:], digest)
    if length < promised:
        raise Malformed(f"says it holds {count:,} {layout.items} but has {length - layout.header:,} bytes of them, "
                        f"not the {promised - layout.header:,} those take: it is truncated", "give the whole file")
    if stream.read(1):
        raise Malformed(f"{'inflates' if gzipped else 'goes on'} past the {promised:,} bytes its header promises "
                        f"({count:,} {layout.items})",
                        f"give one whole {layout.what}, whose header counts all it holds")
    largest = max(content[layout.header:]) if magic == IDX_LABELS else 0
    if largest >= NUM_CLASSES:
        raise Malformed(f"has a label {largest}", f"the labels must be the classes 0 to {NUM_CLASSES - 1}")
    return content


def original_count(name: str) -> int:
    """The digits (images or labels) of a known data set's original file of that name."""
    return ORIGINAL_COUNTS[name.split("-")[0]]


def checked_content(path: Path, magic: int, limit: int | None = None, digest=None,
                    original: str | None = None) -> bytearray:
    """read_content of the data file at path, opened by open_data_file, to `limit` bytes (MAX_IDX_BYTES where
    none is given); a damaged gzip is Malformed, a failed read a UserError."""
    try:
        with open_data_file(path) as stored:
            return read_content(stored, magic, MAX_IDX_BYTES if limit is None else limit, digest, original)
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise Malformed(f"is not a readable gzip file ({error})", "replace it") from None
    except OSError as error:
        raise UserError(f"cannot read {path} ({error.strerror or error}): check the file") from None


def as_tensor(content: bytearray, magic: int) -> Tensor:
    """The uint8 values of read_content's bytes, sharing their memory: (N, 28, 28) images or (N,) labels."""
    layout = idx_layout(magic)
    values = torch.frombuffer(content, dtype=torch.uint8, offset=layout.header)
    return values.view(-1, 28, 28) if magic == IDX_IMAGES else values


def read_idx(path: Path, magic: int) -> Tensor:
    """The uint8 values of one's own IDX file (gzipped or not) of 28x28 images (N, 28, 28) or of labels (N,), as
    `magic` says; UserError naming the file if it is not one."""
    try:
        return as_tensor(checked_content(path, magic), magic)
    except Malformed as fault:
        raise UserError(f"{path} {fault.reason}: {fault.remedy}") from None


def paired(images: Tensor, labels: Tensor, images_path: Path, labels_path: Path) -> tuple[Tensor, Tensor]:
    """Images and labels (as int64) read from the two paths, if they are as many."""
    if len(images) != len(labels):
        raise UserError(f"{images_path} holds {len(images):,} images but {labels_path} {len(labels):,} labels: give "
                        "the labels of these images")
    return images, labels.long()


def read_pair(images_path: Path, labels_path: Path) -> tuple[Tensor, Tensor]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 from a pair of one's own IDX files that agree."""
    return paired(read_idx(images_path, IDX_IMAGES), read_idx(labels_path, IDX_LABELS), images_path, labels_path)


def first_present(candidates: list[Path]) -> Path | None:
    """The first regular file of candidates; where none is, the first that exists at all (a folder, a FIFO, a
    link, to be refused by name when read); None where nothing is there."""
    return next((path for path in candidates if is_regular(path)),
                next((path for path in candidates if os.path.lexists(path)), None))


def found(folders: list[Path], name: str, suffixes: tuple[str, ...]) -> Path | None:
    """The first of FOLDER/NAME+SUFFIX, folder by folder, that is a file (first_present: else whatever is there),
    or None."""
    return first_present([folder / f"{name}{suffix}" for folder in folders for suffix in suffixes])


def own_files_hint(path: Path, data_folder: Path) -> str:
    """How to train on the MNIST-format file at path as one's own: --dataset own reads the data folder itself."""
    if path.parent == data_folder:
        return "to train on these files as one's own, pass --dataset own"
    return f"to train on one's own MNIST-format files, put them in {data_folder} and pass --dataset own"


def read_original(path: Path, magic: int, title: str, data_folder: Path, content_md5: str | None = None,
                  stored_md5: str | None = None) -> bytearray:
    """The content of an original file of a known data set, checked by the MD5 of its content (MNIST's) or of the
    file as stored (the .gz of Fashion-MNIST's and KMNIST's), in memory: nothing is written before the check. A file
    that is not the original is refused by what it is: one's own well-formed file, with --dataset own offered, or
    a damaged one."""
    name = path.name.removesuffix(".gz")
    layout = idx_layout(magic)
    limit = min(MAX_IDX_BYTES, layout.header + original_count(name) * layout.item)
    matches = None  # whether the MD5 is the original's, where it is known before the content is
    try:
        if stored_md5 is None:
            digest = hashlib.md5()
            content = checked_content(path, magic, limit, digest, original=name)
            matches = digest.hexdigest() == content_md5
        else:
            with open_data_file(path) as file:
                if os.fstat(file.fileno()).st_size > MAX_IDX_BYTES:  # refused before it is read
                    raise Malformed(f"is over {MAX_IDX_BYTES:,} bytes")
                stored = file.read(MAX_IDX_BYTES + 1)
            if len(stored) > MAX_IDX_BYTES:  # grown since
                raise Malformed(f"is over {MAX_IDX_BYTES:,} bytes")
            matches = hashlib.md5(stored).hexdigest() == stored_md5
            try:
                content = read_content(io.BufferedReader(io.BytesIO(stored)), magic, limit, original=name)
            except (gzip.BadGzipFile, EOFError, zlib.error) as error:
                raise Malformed(f"is not a readable gzip file ({error})") from None
    except Malformed as fault:
        differs = " (its MD5 differs)" if matches is False else ""
        remedy = own_files_hint(path, data_folder) if fault.too_many else f"put the original {title} file there"
        raise UserError(f"{path} is not the {title} original{differs}: it {fault.reason}; {remedy}") from None
    except OSError as error:
        raise UserError(f"cannot read {path} ({error.strerror or error}): check the file") from None
    if not matches:
        count = (len(content) - layout.header) // layout.item
        items = "28x28 images" if magic == IDX_IMAGES else "labels"
        raise UserError(f"{path} is not the {title} original (its MD5 differs) but a well-formed MNIST-format file "
                        f"of {count:,} {items}: {own_files_hint(path, data_folder)}")
    return content


def keep_unpacked(target: Path, content: bytearray) -> None:
    """The checked content of an original .gz written to target, so that later loads skip the gzip: where target
    is taken or cannot be written, nothing is (the next load inflates the .gz again), and no folder is left made."""
    if os.path.lexists(target):
        return
    made, folder = [], target.parent
    while not os.path.lexists(folder):
        made.append(folder)
        folder = folder.parent
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as temporary:
            temporary.write_bytes(content)
    except OSError:
        for folder in made:  # the deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()


def _download(data_folder: Path, train: bool, title: str = "MNIST", torchvision_class: str = "MNIST") -> bool:
    """torchvision's download of a data set, into a temporary folder; its .gz files are then copied into
    DATA/CLASS/raw (torchvision's layout) where that name is free. A failed download writes nothing in DATA."""
    # Imported here: torchvision's import loads its model zoo, which --help and a flag error need
    # not wait for.
    from torchvision import datasets
    print(f"{title} is not in {data_folder}; trying torchvision's download", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="vqmnist-download-") as temporary:
        # torchvision prints a line per failed mirror; the one line that matters is ours.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            try:
                getattr(datasets, torchvision_class)(temporary, train=train, download=True)
            except Exception:
                return False
        raw_folder = data_folder / torchvision_class / "raw"
        made, folder, placed = [], raw_folder, []
        while not os.path.lexists(folder):
            made.append(folder)
            folder = folder.parent
        try:
            raw_folder.mkdir(parents=True, exist_ok=True)
            for downloaded in sorted((Path(temporary) / torchvision_class / "raw").glob("*.gz")):
                target = raw_folder / downloaded.name
                if not os.path.lexists(target):
                    with atomic_path(target) as part:
                        part.write_bytes(downloaded.read_bytes())
                    placed.append(target)
        except OSError as error:
            for target in placed:
                target.unlink(missing_ok=True)
            for folder in made:
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise UserError(f"cannot write {raw_folder} ({error.strerror or error}): make it writable or pass a "
                            f"writable --data-folder") from None
    return True


def load_known(data_folder: Path, train: bool, known: KnownDataset) -> tuple[Tensor, Tensor]:
    """A known data set's images and labels from its original .gz files, each checked by torchvision's MD5."""
    raw_folder = data_folder / known.folder / "raw"
    names = TRAIN_FILES if train else TEST_FILES

    def paths() -> list[Path | None]:
        return [found([raw_folder, data_folder], name, (".gz",)) for name in names]

    chosen = paths()
    if None in chosen and _download(data_folder, train, known.title, known.folder):
        chosen = paths()
    if None in chosen:
        raise UserError(f"{known.title} files not found in {raw_folder} or {data_folder} and the download failed: put "
                        f"{', '.join(f'{name}.gz' for name in known.gz_md5)} (the original files) there")
    contents = [read_original(path, magic, known.title, data_folder, stored_md5=known.gz_md5[name])
                for path, name, magic in zip(chosen, names, (IDX_IMAGES, IDX_LABELS))]
    return paired(as_tensor(contents[0], IDX_IMAGES), as_tensor(contents[1], IDX_LABELS), *chosen)


def load_own(data_folder: Path, train: bool) -> tuple[Tensor, Tensor]:
    """Images and labels from one's own MNIST-format files in the data folder, held to that format alone."""
    paths = [found([data_folder], name, ("", ".gz")) for name in (TRAIN_FILES if train else TEST_FILES)]
    if None in paths:
        wanted = " and ".join(f"{name} (or {name}.gz)" for name in (TRAIN_FILES if train else TEST_FILES))
        raise UserError(f"--dataset own reads {wanted} from --data-folder {data_folder}: put them there")
    return read_pair(*paths)


def check_default_own_folder(data_folder, typed: bool, names, whose: str, stored_folder) -> None:
    """For --dataset own read from a --data-folder the user did not type (`typed` False): refuse a default folder
    that lacks any of `names` (or its .gz), naming the flag, and the folder the run read them from (`stored_folder`,
    the checkpoint's), rather than the folder the user never chose. `whose` says whose digits they are."""
    if typed:
        return
    missing = [name for name in names if found([Path(data_folder)], name, ("", ".gz")) is None]
    if missing:
        hint = (f" (its run read them from {stored_folder})"
                if isinstance(stored_folder, str) and stored_folder != str(data_folder) else "")
        raise UserError(f"--dataset own reads {whose} from --data-folder, which was not given, and the default folder "
                        f"{data_folder} lacks {', '.join(missing)} (or their .gz): pass --data-folder with the folder "
                        f"of the model's own files{hint}")


def mnist_candidates(data_folder: Path, name: str) -> list[Path]:
    """Where an MNIST file is looked for, in order: unpacked in DATA/MNIST/raw (torchvision's layout, and where the
    checked .gz is unpacked to), its .gz there or in DATA, unpacked in DATA."""
    raw_folder = data_folder / "MNIST" / "raw"
    return [raw_folder / name, raw_folder / f"{name}.gz", data_folder / f"{name}.gz", data_folder / name]


def load_mnist(data_folder, train: bool, dataset: str = "mnist") -> tuple[Tensor, Tensor]:
    """The training or test images (N, 28, 28) uint8 and labels (N,) int64 of `dataset` (one of DATASETS).

    MNIST's original IDX files are MD5-checked; they may sit in DATA/MNIST/raw (torchvision's layout) or in DATA
    itself, gzipped or not; a checked .gz is unpacked into DATA/MNIST/raw, where later loads read it (checked again).
    Fashion-MNIST's and KMNIST's original .gz files sit in DATA/FashionMNIST/raw or DATA/KMNIST/raw (or DATA) and are
    checked by their MD5s; one's own files ("own") sit in DATA, gzipped or not, and are held to the format: 28x28
    uint8 images, as many labels, each a class 0 to 9.
    """
    data_folder = Path(data_folder)
    if dataset == "own":
        return load_own(data_folder, train)
    if dataset in KNOWN_DATASETS:
        return load_known(data_folder, train, KNOWN_DATASETS[dataset])
    names = TRAIN_FILES if train else TEST_FILES

    def paths() -> list[Path | None]:
        return [first_present(mnist_candidates(data_folder, name)) for name in names]

    chosen = paths()
    if None in chosen and _download(data_folder, train):
        chosen = paths()
    if None in chosen:
        wanted = ", ".join(f"{name}.gz" for name in MNIST_MD5)
        raise UserError(f"MNIST files not found in {data_folder / 'MNIST' / 'raw'} and the download failed: put "
                        f"{wanted} there (or pass --data-folder where they are)")
    contents = [read_original(path, magic, "MNIST", data_folder, content_md5=MNIST_MD5[name])
                for path, name, magic in zip(chosen, names, (IDX_IMAGES, IDX_LABELS))]
    images, labels = paired(as_tensor(contents[0], IDX_IMAGES), as_tensor(contents[1], IDX_LABELS), *chosen)
    for path, name, content in zip(chosen, names, contents):  # both checked: nothing is unpacked before
        if path.name.endswith(".gz"):
            keep_unpacked(data_folder / "MNIST" / "raw" / name, content)
    return images, labels


def split_train_validation(images: Tensor, val_size: int) -> tuple[Tensor, Tensor]:
    """A fixed split: the last val_size training images are the validation set."""
    if len(images) < 2:
        raise UserError(f"the training set holds {len(images)} image{'' if len(images) == 1 else 's'}: a run needs at "
                        "least 2, one to train on and one to validate with")
    if not 0 < val_size < len(images):
        raise UserError(f"--val-size must be between 1 and {len(images) - 1:,} for {len(images):,} training images, "
                        f"got {val_size:,}")
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
