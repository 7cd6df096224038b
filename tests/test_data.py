"""The data sets: MNIST in both folder layouts, MD5 verification, a clear error when the files are nowhere; the known
data sets by their .gz files' MD5s; one's own files held to the format; a run's --dataset kept by the scripts."""
import gzip
import hashlib
import json
import struct

import pytest
import torch

import evaluate
import generate
from helpers import NUM_TEST, NUM_TRAIN, blob_images, train_tiny, write_tiny_mnist
from vqmnist.configuration.errors import UserError
from vqmnist.io import data
from vqmnist.io.data import epoch_batches


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
    with pytest.raises(UserError, match="is not the MNIST original"):
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


def test_an_unwritable_raw_folder_leaves_the_gz_read_each_time(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "MNIST_MD5", write_tiny_mnist(tmp_path / "flat"))
    (tmp_path / "flat" / "MNIST").write_text("a file where the MNIST/raw folder must go")
    before = sorted(tmp_path.rglob("*"))
    images, _ = data.load_mnist(tmp_path / "flat", train=False)  # the unpacked copy is a cache, not a must
    assert torch.equal(images, blob_images(NUM_TEST, seed=2))
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("num_workers", [0, 2])
def test_epoch_batches_cover_every_image_once_and_skip_for_a_resume(num_workers):
    images = torch.arange(10 * 28 * 28).reshape(10, 28, 28)
    batches = list(epoch_batches(images, 4, torch.Generator().manual_seed(3), num_workers))
    assert [len(batch) for batch in batches] == [4, 4, 2]
    assert sorted(image[0, 0].item() // (28 * 28) for batch in batches for image in batch) == list(range(10))
    resumed = list(epoch_batches(images, 4, torch.Generator().manual_seed(3), num_workers, skip=2))
    assert len(resumed) == 1 and torch.equal(resumed[0], batches[2])


def tiny_known_dataset(monkeypatch, folder, name="fashion-mnist") -> None:
    """The tiny files as the originals of a known data set: its .gz files' MD5s become the ones it checks."""
    write_tiny_mnist(folder)
    known = data.KNOWN_DATASETS[name]
    md5s = {gz.name.removesuffix(".gz"): hashlib.md5(gz.read_bytes()).hexdigest() for gz in folder.glob("*.gz")}
    monkeypatch.setitem(data.KNOWN_DATASETS, name, known._replace(gz_md5=md5s))


@pytest.mark.parametrize("name, torchvision_class", [("fashion-mnist", "FashionMNIST"), ("kmnist", "KMNIST")])
def test_known_datasets_check_the_md5s_torchvision_lists(name, torchvision_class):
    from torchvision import datasets
    resources = {file.removesuffix(".gz"): md5 for file, md5 in getattr(datasets, torchvision_class).resources}
    assert data.KNOWN_DATASETS[name].gz_md5 == resources
    assert data.KNOWN_DATASETS[name].folder == torchvision_class  # torchvision's layout, DATA/CLASS/raw


@pytest.mark.parametrize("train", [True, False])
def test_a_known_dataset_loads_from_its_checked_gz_files(tmp_path, monkeypatch, train):
    tiny_known_dataset(monkeypatch, tmp_path / "data" / "FashionMNIST" / "raw")
    images, labels = data.load_mnist(tmp_path / "data", train=train, dataset="fashion-mnist")
    count = NUM_TRAIN if train else NUM_TEST
    assert torch.equal(images, blob_images(count, seed=1 if train else 2))
    assert torch.equal(labels, torch.arange(count) % 10) and labels.dtype == torch.int64


def test_an_altered_known_file_is_refused_and_own_is_offered(tmp_path, monkeypatch):
    raw = tmp_path / "data" / "KMNIST" / "raw"
    tiny_known_dataset(monkeypatch, raw, "kmnist")
    gz = raw / "t10k-labels-idx1-ubyte.gz"
    gz.write_bytes(gzip.compress(gzip.decompress(gz.read_bytes())[:-1] + b"\x03"))
    with pytest.raises(UserError, match=r"not the KMNIST original \(its MD5 differs\) but a well-formed .* own") \
            as error:
        data.load_mnist(tmp_path / "data", train=False, dataset="kmnist")
    assert "corrupt" not in str(error.value) and "delete" not in str(error.value)


def test_a_missing_known_dataset_names_its_files_and_folder(tmp_path, offline):
    with pytest.raises(UserError, match=r"Fashion-MNIST files not found in .*FashionMNIST/raw.*t10k-labels-idx1"):
        data.load_mnist(tmp_path, train=True, dataset="fashion-mnist")


@pytest.mark.parametrize("gzipped", [True, False])
def test_own_files_load_without_an_md5_gzipped_or_not(tmp_path, gzipped):
    write_tiny_mnist(tmp_path)
    for gz in tmp_path.glob("*.gz"):
        if not gzipped:
            gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))
            gz.unlink()
    images, labels = data.load_mnist(tmp_path, train=True, dataset="own")
    assert torch.equal(images, blob_images(NUM_TRAIN, seed=1)) and torch.equal(labels, torch.arange(NUM_TRAIN) % 10)


def own_folder(tmp_path, images: bytes | None = None, labels: bytes | None = None):
    """Own files in tmp_path: the tiny training pair, either file replaced by the bytes given."""
    write_tiny_mnist(tmp_path)
    for name, content in (("train-images-idx3-ubyte", images), ("train-labels-idx1-ubyte", labels)):
        if content is not None:
            (tmp_path / f"{name}.gz").write_bytes(gzip.compress(content))
    return tmp_path


def idx(magic: int, *sizes: int, values: bytes) -> bytes:
    return struct.pack(f">{1 + len(sizes)}I", magic, *sizes) + values


@pytest.mark.parametrize("images, labels, message", [
    (idx(2049, 3, values=bytes(3)), None, "is not a MNIST-format image file"),
    (idx(2051, 3, 32, 32, values=bytes(3 * 32 * 32)), None, "holds 32x32 images"),
    (idx(2051, 3, 28, 28, values=bytes(2 * 784)), None, "says it holds 3 images but has 1,568 bytes"),
    (idx(2051, 0, 28, 28, values=b""), None, "holds 0 images"),
    (b"\x00\x00", None, "is not a MNIST-format image file"),
    (None, idx(2049, NUM_TRAIN, values=bytes([10]) * NUM_TRAIN), "has a label 10"),
    (None, idx(2049, 5, values=bytes(5)), f"holds {NUM_TRAIN} images but .* 5 labels"),
    (None, idx(2051, 5, 28, 28, values=bytes(5 * 784)), "is not a MNIST-format label file"),
])
def test_own_files_are_held_to_the_format(tmp_path, images, labels, message):
    with pytest.raises(UserError, match=message):
        data.load_mnist(own_folder(tmp_path, images, labels), train=True, dataset="own")


def test_own_files_that_would_inflate_past_the_limit_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "MAX_IDX_BYTES", 10_000)
    zeros = idx(2051, 100, 28, 28, values=bytes(100 * 784))  # a few hundred bytes gzipped, 78,416 inflated
    with pytest.raises(UserError, match="says it holds 100 images, 78,416 bytes inflated, over the 10,000 bytes"):
        data.load_mnist(own_folder(tmp_path, images=zeros), train=True, dataset="own")


def test_missing_own_files_say_where_they_are_read(tmp_path):
    with pytest.raises(UserError, match="--dataset own reads t10k-images-idx3-ubyte .* from --data-folder"):
        data.load_mnist(tmp_path, train=False, dataset="own")


def test_a_run_on_own_files_keeps_its_dataset_for_resume_evaluate_and_generate(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "own"
    write_tiny_mnist(folder)  # no MD5 is patched: --dataset mnist would refuse these files
    train_tiny(folder, "--dataset", "own", "--prior-epochs", "0")
    checkpoint = torch.load(tmp_path / "models" / "tiny" / "best.pt", weights_only=True)
    assert checkpoint["args"]["dataset"] == "own"
    with pytest.raises(UserError, match="own --dataset own: drop --dataset mnist"):
        train_tiny(folder, "--resume", "--dataset", "mnist")
    capsys.readouterr()
    best = str(tmp_path / "models" / "tiny" / "best.pt")
    evaluate.main(evaluate.build_parser().parse_args(["--model", best, "--data-folder", str(folder), "--json",
                                                      "--samples", "0"]))
    assert json.loads(capsys.readouterr().out)["dataset"] == "own"
    generate.main(generate.build_parser().parse_args(["--model", best, "--data-folder", str(folder),
                                                      "--filename", "own"]))
    assert (tmp_path / "generatedImages" / "own_input.png").is_file()
    with pytest.raises(UserError, match="is not the MNIST original .*pass --dataset own"):
        generate.main(generate.build_parser().parse_args(["--model", best, "--data-folder", str(folder),
                                                          "--dataset", "mnist", "--filename", "mnist"]))


def test_a_damaged_known_file_is_refused_by_its_md5_before_its_format(tmp_path, monkeypatch):
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    tiny_known_dataset(monkeypatch, raw)
    gz = raw / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(gzip.decompress(gz.read_bytes())[:-100]))  # truncated: its format is broken too
    with pytest.raises(UserError, match=r"not the Fashion-MNIST original \(its MD5 differs\): it says it holds 320 "
                                        "images but has 250,780 bytes of them, not the 250,880"):
        data.load_mnist(tmp_path / "data", train=True, dataset="fashion-mnist")
