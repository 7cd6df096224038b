"""What the data loader refuses, and that a refusal is one line naming what the file is and leaves nothing on disk: a
gzip that inflates past what its header promises (or past the bound), a data file that is no regular file, one's own
files given as a known data set, a failed download, a truncated file."""
import contextlib
import gzip
import hashlib
import os
import re
import shutil
import signal
import struct
from pathlib import Path

import pytest
import torch

from helpers import NUM_TRAIN, blob_images, idx_images, write_tiny_mnist
from vqmnist.configuration.errors import UserError
from vqmnist.io import data

IMAGES = "train-images-idx3-ubyte"
BOMB_BYTES = 32 << 20  # what the small gzips below inflate to: 32 MiB of zeros, in about 150 kB


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory) -> tuple[Path, dict]:
    """write_tiny_mnist's four .gz files, written once for the module (it takes a while), and their MD5s."""
    folder = tmp_path_factory.mktemp("tiny")
    return folder, write_tiny_mnist(folder)


def tiny_copy(tiny_files, folder: Path) -> dict:
    """The tiny .gz files copied into folder (made); their content's MD5s, as write_tiny_mnist returns them."""
    source, md5s = tiny_files
    shutil.copytree(source, folder, dirs_exist_ok=True)
    return md5s


@pytest.fixture
def all_offline(monkeypatch):
    """Every data set's mirrors at a closed local port (the conftest's `offline` closes MNIST's alone)."""
    from torchvision import datasets

    for name in ("MNIST", "FashionMNIST", "KMNIST"):
        monkeypatch.setattr(getattr(datasets, name), "mirrors", ["http://127.0.0.1:9/"])


def listing(folder: Path) -> list[tuple[str, int]]:
    """Every path under folder (links not followed) with its size: what a refusal must leave as it was."""
    return sorted((str(path.relative_to(folder)), path.lstat().st_size) for path in folder.rglob("*"))


def refusal(load) -> str:
    """The UserError's message of load(), checked to be one line."""
    with pytest.raises(UserError) as error:
        load()
    message = str(error.value)
    assert "\n" not in message
    return message


@contextlib.contextmanager
def no_hang(seconds: int = 20):
    """Fail, rather than hang, where a read would wait on a FIFO."""
    def stop(signum, frame):
        raise TimeoutError("the loader waited on the FIFO")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def data_folder(tmp_path, monkeypatch, tiny_files, dataset: str) -> tuple[Path, Path]:
    """A data folder of the tiny files that `dataset` loads (MNIST's with their MD5s patched in, in MNIST/raw;
    Fashion-MNIST's .gz MD5s patched in, in FashionMNIST/raw; one's own in the folder itself), and the folder that
    holds them."""
    folder = tmp_path / "data"
    if dataset == "own":
        tiny_copy(tiny_files, folder)
        return folder, folder
    if dataset == "fashion-mnist":
        raw = folder / "FashionMNIST" / "raw"
        tiny_copy(tiny_files, raw)
        md5s = {gz.name.removesuffix(".gz"): hashlib.md5(gz.read_bytes()).hexdigest() for gz in raw.glob("*.gz")}
        monkeypatch.setitem(data.KNOWN_DATASETS, dataset, data.KNOWN_DATASETS[dataset]._replace(gz_md5=md5s))
        return folder, raw
    raw = folder / "MNIST" / "raw"
    monkeypatch.setattr(data, "MNIST_MD5", tiny_copy(tiny_files, raw))
    return folder, raw


def header(count: int) -> bytes:
    return struct.pack(">IIII", data.IDX_IMAGES, count, 28, 28)


@pytest.mark.parametrize("dataset, head, max_bytes, inflated, message", [
    # A header that promises the tiny set's 320 images, then 32 MiB: read to the promised bytes and one more.
    ("mnist", header(NUM_TRAIN), None, 16 + NUM_TRAIN * 784 + 1, "inflates past the 250,896 bytes its header promises"),
    ("own", header(NUM_TRAIN), None, 16 + NUM_TRAIN * 784 + 1, "inflates past the 250,896 bytes its header promises"),
    # A header that promises more than the bound (MNIST's original's count, or MAX_IDX_BYTES): nothing past it read.
    ("mnist", header(60_001), None, 16, "not the MNIST original: it says it holds 60,001 images, more than the "
                                        "original's 60,000; .*--dataset own"),
    ("own", header(NUM_TRAIN), 100_000, 16, "says it holds 320 images, 250,896 bytes inflated, over the 100,000 bytes"),
    # No header at all, zeros from the start: nothing past the header's bytes read.
    ("mnist", b"", None, 16, "not the MNIST original: it is not a MNIST-format image file"),
    ("own", b"", None, 16, "is not a MNIST-format image file"),
], ids=["mnist, past its header's promise", "own, past its header's promise", "mnist, a header past the original's",
        "own, a header past MAX_IDX_BYTES", "mnist, zeros", "own, zeros"])
def test_a_small_gz_that_inflates_past_its_bound_is_refused_reading_no_further_and_leaving_nothing(
        tmp_path, monkeypatch, tiny_files, dataset, head, max_bytes, inflated, message):
    folder, holder = data_folder(tmp_path, monkeypatch, tiny_files, dataset)
    (holder / f"{IMAGES}.gz").write_bytes(gzip.compress(head + bytes(BOMB_BYTES - len(head)), compresslevel=1))
    if max_bytes is not None:
        monkeypatch.setattr(data, "MAX_IDX_BYTES", max_bytes)
    read = {"bytes": 0}
    gzip_read = gzip.GzipFile.read

    def counted(self, *args):
        chunk = gzip_read(self, *args)
        read["bytes"] += len(chunk)
        return chunk

    monkeypatch.setattr(gzip.GzipFile, "read", counted)
    before = listing(tmp_path)
    assert re.search(message, refusal(lambda: data.load_mnist(folder, train=True, dataset=dataset)))
    assert read["bytes"] <= inflated  # stopped at the bound: no more inflated, in memory or on disk
    assert listing(tmp_path) == before  # no unpacked copy, whole or in part


def make_not_a_file(path: Path, kind: str) -> str:
    """Put a `kind` where the data file `path` goes; the words the refusal must name it by."""
    if kind == "folder":
        path.mkdir()
        return f"{path} is a folder, not a data file"
    if kind == "fifo":
        os.mkfifo(path)
        return f"{path} is a named pipe (FIFO), not a data file"
    if kind == "dangling link":
        path.symlink_to(path.with_name("nowhere"))
        return f"{path} is a link to {path.with_name('nowhere')}, which does not exist"
    path.symlink_to(kind)
    return f"{path} is a link to {kind}, a character device, not a data file"


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist", "own"])
@pytest.mark.parametrize("kind", ["folder", "fifo", "/dev/zero", "/dev/null", "dangling link"])
def test_a_data_file_that_is_no_regular_file_is_named_for_what_it_is(tmp_path, monkeypatch, tiny_files, all_offline,
                                                                      dataset, kind):
    folder, holder = data_folder(tmp_path, monkeypatch, tiny_files, dataset)
    (holder / f"{IMAGES}.gz").unlink()
    expected = make_not_a_file(holder / f"{IMAGES}.gz", kind)
    before = listing(tmp_path)
    with no_hang():
        message = refusal(lambda: data.load_mnist(folder, train=True, dataset=dataset))
    assert message.startswith(expected) and "put them there" not in message and "not found" not in message
    assert listing(tmp_path) == before


@pytest.mark.parametrize("layout", ["flat", "MNIST/raw"])
def test_own_files_given_as_mnist_are_refused_offering_own_and_leaving_no_unpacked_copy(tmp_path, tiny_files,
                                                                                        layout):
    folder = tmp_path / "data"
    tiny_copy(tiny_files, folder if layout == "flat" else folder / "MNIST" / "raw")  # no MD5 patched: not MNIST's
    before = listing(tmp_path)
    message = refusal(lambda: data.load_mnist(folder, train=True))
    assert "is not the MNIST original (its MD5 differs) but a well-formed MNIST-format file of 320 28x28 images" \
        in message and "--dataset own" in message
    assert ("put them in" in message) == (layout != "flat")  # --dataset own reads the data folder itself
    assert "corrupt" not in message and "delete" not in message
    assert listing(tmp_path) == before


@pytest.mark.parametrize("dataset", ["kmnist", "fashion-mnist"])
def test_a_known_dataset_on_ones_own_files_offers_own_and_says_not_delete_it(tmp_path, tiny_files, dataset):
    tiny_copy(tiny_files, tmp_path)  # their .gz MD5s are not torchvision's
    message = refusal(lambda: data.load_mnist(tmp_path, train=False, dataset=dataset))
    title = data.KNOWN_DATASETS[dataset].title
    assert message.startswith(f"{tmp_path / 't10k-images-idx3-ubyte.gz'} is not the {title} original (its MD5 "
                              "differs) but a well-formed MNIST-format file of 120 28x28 images: to train on these "
                              "files as one's own, pass --dataset own")
    assert "delete" not in message and "corrupt" not in message


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
@pytest.mark.parametrize("exists", [True, False])
def test_a_refused_download_leaves_no_folders(tmp_path, all_offline, dataset, exists):
    folder = tmp_path / "data"
    if exists:
        folder.mkdir()
    before = listing(tmp_path)
    assert "the download failed" in refusal(lambda: data.load_mnist(folder, train=True, dataset=dataset))
    assert listing(tmp_path) == before


def own_images(tmp_path, tiny_files, content: bytes, gzipped: bool) -> Path:
    """One's own tiny files, the training images replaced by content (gzipped or not)."""
    tiny_copy(tiny_files, tmp_path)
    (tmp_path / f"{IMAGES}.gz").unlink()
    if gzipped:
        (tmp_path / f"{IMAGES}.gz").write_bytes(gzip.compress(content))
    else:
        (tmp_path / IMAGES).write_bytes(content)
    return tmp_path


@pytest.mark.parametrize("gzipped", [True, False], ids=["gz", "plain"])
@pytest.mark.parametrize("content, message", [
    (header(3) + bytes(2 * 784), "says it holds 3 images but has 1,568 bytes of them, not the 2,352 those take: it "
                                 "is truncated"),
    (header(5), "says it holds 5 images but has 0 bytes of them, not the 3,920 those take: it is truncated"),
    (header(0), "holds 0 images \\(its header's count\\): give a file with images"),
    (header(1)[:10], "is not a MNIST-format image file: it (inflates to|is) 10 bytes, fewer than the 16-byte header"),
    (header(2) + bytes(3 * 784), "(inflates|goes on) past the 1,584 bytes its header promises \\(2 images\\)"),
], ids=["truncated", "header alone", "no images", "half a header", "overlong"])
def test_a_truncated_or_overlong_file_says_what_it_has_and_what_its_header_promises(tmp_path, tiny_files, gzipped,
                                                                                   content, message):
    folder = own_images(tmp_path, tiny_files, content, gzipped)
    said = refusal(lambda: data.load_mnist(folder, train=True, dataset="own"))
    assert re.search(message, said) and "not 0" not in said and "or damaged" not in said


def test_a_link_to_a_regular_file_is_read_as_the_file(tmp_path, tiny_files):
    images = blob_images(NUM_TRAIN, seed=1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(idx_images(images))
    folder = own_images(tmp_path / "data", tiny_files, b"", gzipped=False)
    (folder / IMAGES).unlink()
    (folder / IMAGES).symlink_to(elsewhere)
    loaded, _ = data.load_mnist(folder, train=True, dataset="own")
    assert torch.equal(loaded, images)


def test_a_checked_gz_is_unpacked_once_and_read_from_there_after(tmp_path, monkeypatch, tiny_files):
    folder, raw = data_folder(tmp_path, monkeypatch, tiny_files, "mnist")
    images, labels = data.load_mnist(folder, train=True)
    unpacked = raw / IMAGES
    assert unpacked.read_bytes() == gzip.decompress((raw / f"{IMAGES}.gz").read_bytes())
    assert not (raw / "t10k-images-idx3-ubyte").exists()  # only the split read is unpacked
    (raw / f"{IMAGES}.gz").write_bytes(b"no longer read")
    again, again_labels = data.load_mnist(folder, train=True)
    assert torch.equal(again, images) and torch.equal(again_labels, labels)


@pytest.fixture
def fake_download(monkeypatch, tiny_files):
    """torchvision's MNIST download, faked: the tiny .gz files (their MD5s patched in) and their unpacked copies land
    in ROOT/MNIST/raw, as torchvision leaves them."""
    from torchvision import datasets

    class Downloaded:
        def __init__(self, root, train, download):
            raw = Path(root) / "MNIST" / "raw"
            tiny_copy(tiny_files, raw)
            for gz in list(raw.glob("*.gz")):
                gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))

    monkeypatch.setattr(datasets, "MNIST", Downloaded)
    monkeypatch.setattr(data, "MNIST_MD5", tiny_files[1])


def test_a_download_lands_its_gz_files_in_torchvision_layout(tmp_path, fake_download):
    images, _ = data.load_mnist(tmp_path / "data", train=True)
    assert torch.equal(images, blob_images(NUM_TRAIN, seed=1))
    raw = tmp_path / "data" / "MNIST" / "raw"
    assert sorted(path.name for path in raw.iterdir()) == sorted(
        [f"{name}.gz" for name in data.MNIST_MD5] + list(data.TRAIN_FILES))  # the split read is unpacked, checked


def test_a_download_that_cannot_be_written_leaves_nothing(tmp_path, fake_download):
    (tmp_path / "data").write_text("a file where the data folder must go")
    before = listing(tmp_path)
    assert "cannot write" in refusal(lambda: data.load_mnist(tmp_path / "data", train=True))
    assert listing(tmp_path) == before


@pytest.mark.parametrize("count", [0, 1])
def test_a_training_set_too_small_to_split_says_so_not_between_1_and_0(count):
    with pytest.raises(UserError) as refused:
        data.split_train_validation(torch.zeros(count, 28, 28, dtype=torch.uint8), 1)
    assert "between 1 and" not in str(refused.value) and "at least 2" in str(refused.value)
