"""What the scripts share: command-line errors, MNIST loading, checkpoint files and reconstruction scores."""
import argparse
import contextlib
import ctypes
import gzip
import hashlib
import io
import math
import os
import pickle
import platform
import sys
import zlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset
from torchvision import datasets

from modules import VQVAE, CodePrior, DigitClassifier, PriorConfig, VQVAEConfig, images_to_inputs
from vector_quantizer import distributed, perplexity_from_counts, sum_over_processes, world_size

# MD5 of the four original MNIST files after gunzip (the .gz bytes differ between mirrors, the content does not).
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
TRAIN_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


class UserError(Exception):
    """A problem the user can fix (a bad flag, a missing or corrupt file): reported as one line, exit status 2."""


class RunStopped(Exception):
    """Training stopped after saving its state: reported as one line, with exit status 128 + the signal's number
    after a signal, 0 at the --time-limit."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is reported on one line instead of a usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def run_cli(main, args: argparse.Namespace) -> None:
    """Run a script's main(args), turning a UserError or Ctrl-C into one line on stderr and an exit status."""
    prog = Path(sys.argv[0]).name
    rank = int(os.environ.get("RANK", "0"))  # under torchrun; 0 in a plain run
    try:
        main(args)
    except UserError as error:
        print(f"{prog}: error: {error}" + (f" (process {rank})" if rank else ""), file=sys.stderr)
        sys.exit(2)
    except RunStopped as stopped:
        if rank == 0:  # every process stops together; one says so
            print(f"{prog}: {stopped}", file=sys.stderr)
        sys.exit(stopped.exit_code)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)


def _number_type(cast, check, requirement):
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {requirement}, got {text!r}") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
        return value

    return parse


positive_int = _number_type(int, lambda v: v > 0, "a positive integer")
nonnegative_int = _number_type(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number_type(float, lambda v: math.isfinite(v) and v > 0, "a positive number")
nonnegative_float = _number_type(float, lambda v: math.isfinite(v) and v >= 0, "a number >= 0")
unit_interval = _number_type(float, lambda v: 0 <= v < 1, "a number in [0, 1)")


def plain_name(text: str) -> str:
    """A name for files under the project's output folders: relative, without '..', so it stays inside them."""
    path = Path(text)
    if not text or path.is_absolute() or ".." in path.parts:
        raise argparse.ArgumentTypeError(f"give a plain name such as 'vqvae', not {text!r}")
    return text


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: CUDA is not available on this machine; use --device cpu")
    return torch.device(name)


def native_bf16(device: torch.device) -> bool:
    """Whether the device computes in bf16 in hardware, so that bf16 autocast is faster: CUDA GPUs from Ampere on,
    x86 CPUs with AVX512-BF16 or AMX. Elsewhere bf16 is converted in software, which can be slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


# ---------------------------------------------------------------------------------------------------- MNIST


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside path; when the block succeeds it replaces path, so nobody ever sees half a
    file, and an error or a kill leaves the previous file as it was."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


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
    data_folder = Path(data_folder)
    raw_folder = data_folder / "MNIST" / "raw"
    # torchvision's MNIST wants all four files present, whichever split it reads.
    if not _ensure_raw_files(data_folder, MNIST_MD5) and not _download(data_folder, train):
        wanted = ", ".join(f"{name}.gz" for name in MNIST_MD5)
        raise UserError(f"MNIST files not found in {raw_folder} and the download failed: put {wanted} there "
                        "(or pass --data-folder where they are)")
    for name in TRAIN_FILES if train else TEST_FILES:
        path = raw_folder / name
        if _md5(path) != MNIST_MD5[name]:
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


# ---------------------------------------------------------------------------------------------------- training


def shard_size(count: int, num_shards: int) -> int:
    """Images per process and epoch: every process gets as many, so they all take the same number of steps."""
    return count // num_shards


def epoch_batches(images: torch.Tensor, batch_size: int, generator: torch.Generator, num_workers: int,
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


def keep_freed_memory() -> None:
    """Let glibc's malloc keep freed memory for the next allocation instead of handing it back to the kernel.

    By default every freed block of more than 128 KB goes back (munmap, or a trim of the heap), so each training
    step on the CPU page-faults its activations in again; on the 2-core benchmark machine keeping it made training
    8% (float32) to 30% (bf16 autocast) faster (benchmarks/speed.py --ablation). jemalloc and tcmalloc behave like
    this out of the box. A no-op on systems without glibc."""
    if platform.libc_ver()[0] != "glibc":
        return
    mallopt = ctypes.CDLL("libc.so.6").mallopt
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    mallopt(m_mmap_threshold, 32 << 20)  # glibc's largest allowed: blocks up to 32 MB come from the heap
    mallopt(m_trim_threshold, 1 << 30)  # the heap's free top is returned only beyond 1 GB


def make_optimizer(model: VQVAE, lr: float, fused: bool = True) -> torch.optim.Adam:
    """Adam over the trainable parameters (not the EMA codebook); fused, one kernel updates them all."""
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr, fused=fused)


def training_step(model: VQVAE, optimizer, images: Tensor, amp: bool = False, forward=None) -> Tensor:
    """One optimizer step on a batch of uint8 images (B, 28, 28) already on the model's device.

    Returns the detached losses (total, reconstruction, codebook, commitment, perplexity) as one (5,) tensor on
    the device: nothing here waits for the device. `forward` is the model's forward to call (a torch.compile'd
    one); `amp` runs it under bf16 autocast, while the quantizer keeps its distances in fp32.
    """
    x = images_to_inputs(images)
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=amp):
        x_recon, quantized = (model if forward is None else forward)(x)
    recon_loss = model.reconstruction_loss(x_recon, x)
    # With the EMA codebook the codebook loss has no gradient: it is reported, and adds a constant.
    loss = recon_loss + quantized.codebook_loss.float() + quantized.commitment_loss.float()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return torch.stack([loss, recon_loss, quantized.codebook_loss.float(), quantized.commitment_loss.float(),
                        quantized.perplexity.float()]).detach()


# ---------------------------------------------------------------------------------------------------- checkpoints


def save_checkpoint(path, checkpoint: dict) -> None:
    """torch.save through atomic_path: a crash mid-save leaves the previous file intact."""
    with atomic_path(Path(path)) as temporary, open(temporary, "wb") as file:
        torch.save(checkpoint, file)
        file.flush()
        os.fsync(file.fileno())


def make_checkpoint(model: VQVAE, optimizer, epoch: int, step: int, **extra) -> dict:
    return {
        "config": asdict(model.config),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "step": step,
        **extra,
    }


def load_checkpoint(path, device) -> dict:
    """Read a checkpoint with weights_only=True, which refuses pickles that would run code."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}: train one with `python vqvae.py` or pass --model PATH")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"{path} is not a checkpoint written by vqvae.py (or it would run code when loaded, "
                        "which is refused)") from None
    except (RuntimeError, EOFError, ValueError, OSError) as error:
        raise UserError(f"{path} is truncated or corrupt ({type(error).__name__}): use another checkpoint, such "
                        "as last.pt beside it") from None
    expected = {"config", "model", "epoch", "step"}
    if not isinstance(checkpoint, dict) or not expected <= checkpoint.keys():
        raise UserError(f"{path} is not a VQ-VAE checkpoint of this project (it lacks {', '.join(sorted(expected))})")
    return checkpoint


def load_model(path, device) -> tuple[VQVAE, dict]:
    """Rebuild the model from the config stored in the checkpoint and load its weights, in eval mode."""
    checkpoint = load_checkpoint(path, device)
    known = {field.name for field in fields(VQVAEConfig)}
    config = checkpoint["config"]
    if not isinstance(config, dict) or not config.keys() <= known:
        raise UserError(f"{path} has a model config this version does not know: {config}")
    try:
        model = VQVAE(VQVAEConfig(**config))
    except (ValueError, TypeError) as error:
        raise UserError(f"{path} has a model config this version cannot build: {error}") from None
    try:
        model.load_state_dict(checkpoint["model"])
    except (RuntimeError, TypeError, AttributeError) as error:
        raise UserError(f"{path}: its weights do not fit its config ({str(error).splitlines()[0][:160]})") from None
    return model.to(device).eval(), checkpoint


def load_prior(checkpoint: dict, path, device) -> CodePrior:
    """The prior stored in a checkpoint (under "prior", beside the autoencoder it was trained for), in eval mode."""
    stored = checkpoint.get("prior")
    if stored is None:
        name = Path(path).parent.name
        raise UserError(f"{path} holds no prior over the codes: train one for it with `python vqvae.py "
                        f"--output-folder {name} --prior-only`, or use --input noise")
    known = {field.name for field in fields(PriorConfig)}
    try:
        if not stored["config"].keys() <= known:
            raise ValueError(f"unknown fields {sorted(stored['config'].keys() - known)}")
        prior = CodePrior(PriorConfig(**stored["config"]))
        prior.load_state_dict(stored["model"])
    except (KeyError, AttributeError, ValueError, TypeError, RuntimeError) as error:
        raise UserError(f"{path}: its prior cannot be rebuilt ({str(error).splitlines()[0][:160]}); retrain it "
                        "with `python vqvae.py --prior-only`") from None
    if prior.config.num_embeddings != checkpoint["config"]["num_embeddings"]:
        raise UserError(f"{path}: its prior models {prior.config.num_embeddings} codes but the autoencoder has "
                        f"{checkpoint['config']['num_embeddings']}; retrain it with `python vqvae.py --prior-only`")
    return prior.to(device).eval()


# ---------------------------------------------------------------------------------------------------- scores


@dataclass
class ReconstructionScores:
    recon_loss: float  # the loss the model trains on (MSE in [-1, 1] space, or BCE for logits)
    codebook_loss: float
    commitment_loss: float
    mse: float  # MSE in [0, 1] pixel space, averaged over every pixel of the set
    psnr: float  # 10 log10(1 / mse), in dB
    codes_used: int  # distinct codes used over the whole set
    codebook_usage: float  # codes_used / K
    perplexity: float  # of the code histogram of the whole set
    counts: Tensor  # (K,) how often each code was chosen


@torch.no_grad()
def score_reconstructions(model: VQVAE, images: Tensor, batch_size: int, device: torch.device) -> ReconstructionScores:
    """Scores of a whole image set (N, 28, 28) uint8, from sums and code counts over all its batches.

    Under torchrun each process scores every world_size-th image and the sums and counts are added up over the
    processes, so every process gets the scores of the whole set."""
    was_training = model.training
    model.eval()
    shard = images[dist.get_rank()::world_size()] if distributed() else images
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # recon, codebook, commitment, squared pixel error
    counts = torch.zeros(model.config.num_embeddings, dtype=torch.int64, device=device)
    for start in range(0, len(shard), batch_size):
        batch = shard[start:start + batch_size].to(device)
        x = images_to_inputs(batch)
        x_recon, quantized = model(x)
        size = len(batch)
        sums[0] += model.reconstruction_loss(x_recon, x).double() * size
        sums[1] += quantized.codebook_loss.double() * size
        sums[2] += quantized.commitment_loss.double() * size
        sums[3] += (model.to_pixels(x_recon) - batch.unsqueeze(1).float() / 255).pow(2).sum().double()
        counts += torch.bincount(quantized.indices.flatten(), minlength=len(counts))
    model.train(was_training)
    sum_over_processes(sums)
    sum_over_processes(counts)

    recon_loss, codebook_loss, commitment_loss = (sums[:3] / len(images)).tolist()
    mse = sums[3].item() / images[0].numel() / len(images)
    codes_used = int((counts > 0).sum())
    return ReconstructionScores(
        recon_loss=recon_loss,
        codebook_loss=codebook_loss,
        commitment_loss=commitment_loss,
        mse=mse,
        psnr=10 * math.log10(1.0 / mse) if mse > 0 else math.inf,
        codes_used=codes_used,
        codebook_usage=codes_used / len(counts),
        perplexity=perplexity_from_counts(counts).item(),
        counts=counts.cpu(),
    )


# ---------------------------------------------------------------------------------------------------- sample scores

DEFAULT_CLASSIFIER = Path(__file__).resolve().parent / "pretrained" / "mnist_classifier.pt"


def load_classifier(path, device) -> DigitClassifier:
    """The digit classifier written by train_classifier.py, in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no classifier at {path}: train one with `python train_classifier.py` or pass --classifier")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        classifier = DigitClassifier()
        classifier.load_state_dict(state["model"])
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, KeyError, TypeError) as error:
        raise UserError(f"{path} is not a classifier written by train_classifier.py ({type(error).__name__}): "
                        "retrain it with `python train_classifier.py`") from None
    return classifier.to(device).eval()


@torch.no_grad()
def classify(classifier: DigitClassifier, pixels: Tensor, batch_size: int = 1000) -> tuple[Tensor, Tensor]:
    """Pixels (N, 1, 28, 28) in [0, 1] -> class probabilities (N, 10) and penultimate features (N, 64)."""
    probabilities, features = [], []
    for batch in pixels.split(batch_size):
        feature = classifier.features(batch.float() * 2 - 1)
        probabilities.append(torch.softmax(classifier.head(feature), dim=1))
        features.append(feature)
    return torch.cat(probabilities), torch.cat(features)


def classifier_accuracy(classifier: DigitClassifier, images: Tensor, labels: Tensor, device) -> float:
    """Fraction of uint8 images (N, 28, 28) classified as their labels."""
    was_training = classifier.training
    classifier.eval()
    probabilities, _ = classify(classifier, images.unsqueeze(1).to(device).float() / 255)
    classifier.train(was_training)
    return (probabilities.argmax(1).cpu() == labels).float().mean().item()


def frechet_distance(features_a: Tensor, features_b: Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N, F):
    ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)), in float64."""
    a, b = features_a.double().cpu(), features_b.double().cpu()
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    # tr((S_a S_b)^(1/2)) = tr((S_a^(1/2) S_b S_a^(1/2))^(1/2)), whose argument is symmetric PSD, so eigh serves.
    values, vectors = torch.linalg.eigh(cov_a)
    sqrt_a = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T
    cross = torch.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a).clamp(min=0).sqrt().sum()
    return ((mean_a - mean_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * cross).item()


RECOGNISABLE_CONFIDENCE = 0.9


def score_samples(classifier: DigitClassifier, pixels: Tensor, reference_features: Tensor,
                  classes: Tensor | None = None) -> dict:
    """How digit-like images (N, 1, 28, 28) in [0, 1] are, by the classifier:
    - recognisable: the fraction it classifies with confidence >= 0.9;
    - class_entropy: entropy of the predicted-class histogram over log 10 (1.0: all digits equally often);
    - frechet_distance: between its penultimate features of these images and reference_features (the test set's);
    - matches_class: with the classes (N,) the images were asked to be, the fraction classified as them."""
    probabilities, features = classify(classifier, pixels)
    confidence, predicted = probabilities.max(dim=1)
    # The perplexity of the predicted-class histogram is exp(its entropy).
    entropy = math.log(perplexity_from_counts(torch.bincount(predicted, minlength=10)).item())
    scores = {
        "recognisable": (confidence >= RECOGNISABLE_CONFIDENCE).double().mean().item(),
        "class_entropy": entropy / math.log(10),
        "frechet_distance": frechet_distance(features, reference_features),
    }
    if classes is not None:
        scores["matches_class"] = (predicted == classes.to(predicted.device)).double().mean().item()
    return scores
