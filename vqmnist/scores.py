"""How good a model is: reconstruction scores of an image set, and sample scores by the judge, a digit classifier."""
import math
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from vqmnist.code_statistics import code_statistics, perplexity_from_counts
from vqmnist.data import images_to_inputs
from vqmnist.checkpoint_checks import check_weights
from vqmnist.errors import UserError
from vqmnist.files import read_torch_quietly
from vqmnist.processes import distributed, rank, sum_over_processes, world_size


@dataclass
class ReconstructionScores:
    recon_loss: float  # the loss the model trains on (MSE in [-1, 1] space, or BCE for logits)
    mse: float  # MSE in [0, 1] pixel space, averaged over every pixel of the set
    psnr: float  # 10 log10(1 / mse), in dB
    ssim: float  # mean structural similarity of a reconstruction and its image (torchmetrics, 11x11 Gaussian window)
    losses: dict[str, float]  # the bottleneck's loss terms by name, means over the set
    # The bottleneck's health over the set by name: the means of its batch figures, and for a discrete one the code
    # statistics of the whole set (codes_used, codebook_usage, perplexity, dead_codes), which take the place of a
    # batch figure of the same name.
    figures: dict[str, float]
    counts: Tensor | None  # (K,) how often each code was chosen; None for a continuous bottleneck
    # With per_image_8bit: {"psnr", "ssim"} as published MNIST tables compute them: each reconstruction rounded to 8
    # bits, PSNR 10 log10(255^2 / MSE) and SSIM (11-pixel Gaussian window) per image against its 8-bit digit, then
    # averaged over the images. Else None.
    per_image_8bit: dict[str, float] | None = None


@torch.no_grad()
def score_reconstructions(model: nn.Module, images: Tensor, batch_size: int, device: torch.device,
                          per_image_8bit: bool = False) -> ReconstructionScores:
    """Scores of a whole image set (N, 28, 28) uint8, from sums and code counts over all its batches; with
    per_image_8bit also the published tables' PSNR and SSIM (ReconstructionScores.per_image_8bit).

    Under torchrun each process scores every world_size-th image and the sums and counts are added up over the
    processes, so every process gets the scores of the whole set."""
    # imported here: torchmetrics' image metrics load torchvision, which --help and a flag error need not wait for
    from torchmetrics.functional.image import structural_similarity_index_measure

    was_training = model.training
    model.eval()
    shard = images[rank()::world_size()] if distributed() else images
    # Each figure summed over the images, by name, in float64 on the device: read once, at the end.
    sums: dict[str, Tensor] = {}
    counts = torch.zeros(model.bottleneck.num_codes if model.discrete else 0, dtype=torch.int64, device=device)

    def add(name: str, value: Tensor) -> None:
        sums[name] = sums.get(name, torch.zeros((), dtype=torch.float64, device=device)) + value.double()

    # A bar for the long sets (the test set, a large K); process 0 alone shows it under torchrun.
    for start in tqdm(range(0, len(shard), batch_size), desc="scoring", unit="batch", leave=False,
                      dynamic_ncols=True, disable=rank() != 0):
        batch = shard[start:start + batch_size].to(device)
        x = images_to_inputs(batch)
        x_recon, quantized = model(x)
        size, pixels, target = len(batch), model.to_pixels(x_recon), batch.unsqueeze(1).float() / 255
        add("recon", model.reconstruction_loss(x_recon, x).double() * size)
        add("squared_error", (pixels - target).pow(2).sum())
        add("ssim", structural_similarity_index_measure(pixels, target, data_range=1.0, reduction="sum"))
        if per_image_8bit:
            for name, value in sums_per_8bit_image(pixels, batch).items():
                add(f"8bit/{name}", value)
        for name, value in quantized.losses.items():
            add(f"loss/{name}", value.double() * size)
        for name, value in quantized.figures.items():
            add(f"figure/{name}", value.double() * size)
        if quantized.codes is not None:
            counts += model.bottleneck.count_codes(quantized.codes)
    model.train(was_training)
    names = list(sums)
    sums = dict(zip(names, sum_over_processes(torch.stack([sums[name] for name in names])).tolist()))
    sum_over_processes(counts)

    mse = sums.pop("squared_error") / images[0].numel() / len(images)
    totals = {name: value / len(images) for name, value in sums.items()}  # means over the images
    figures = {name.removeprefix("figure/"): value for name, value in totals.items() if name.startswith("figure/")}
    if model.discrete:
        figures.update(code_statistics(counts))
    return ReconstructionScores(
        recon_loss=totals["recon"],
        mse=mse,
        psnr=10 * math.log10(1.0 / mse) if mse > 0 else math.inf,
        ssim=totals["ssim"],
        losses={name.removeprefix("loss/"): value for name, value in totals.items() if name.startswith("loss/")},
        figures=figures,
        counts=counts.cpu() if model.discrete else None,
        per_image_8bit={name.removeprefix("8bit/"): value for name, value in totals.items()
                        if name.startswith("8bit/")} if per_image_8bit else None,
    )

def sums_per_8bit_image(pixels: Tensor, digits: Tensor) -> dict[str, Tensor]:
    """The published tables' PSNR and SSIM of reconstructions (B, 1, 28, 28) in [0, 1] rounded to 8 bits against
    their uint8 digits (B, 28, 28), each per image, summed over the batch."""
    from torchmetrics.functional.image import structural_similarity_index_measure  # see score_reconstructions

    levels, digit = (pixels * 255).round(), digits.unsqueeze(1).float()  # both in 0..255, whole levels
    image_mse = (levels - digit).pow(2).flatten(1).mean(1)  # (B,)
    return {"psnr": (10 * torch.log10(255 ** 2 / image_mse)).sum(),
            "ssim": structural_similarity_index_measure(levels, digit, data_range=255.0, reduction="sum")}


# ---------------------------------------------------------------------------------------------------- the judge


class DigitClassifier(nn.Module):
    """A small CNN that scores generated digits: its confidence says whether a sample is recognisable, and its
    penultimate features (`features`) are what the Frechet distance compares."""

    feature_dim = 64

    def __init__(self):
        super().__init__()

        def conv(in_channels: int, out_channels: int) -> list[nn.Module]:
            return [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
                    nn.ReLU()]

        self.features = nn.Sequential(
            *conv(1, 32), nn.MaxPool2d(2),  # (B, 1, 28, 28) -> (B, 32, 14, 14)
            *conv(32, 64), nn.MaxPool2d(2),  # -> (B, 64, 7, 7)
            *conv(64, 64), *conv(64, self.feature_dim),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),  # -> (B, 64)
        )
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(self.feature_dim, 10))

    def forward(self, x: Tensor) -> Tensor:
        """Images (B, 1, 28, 28) in [-1, 1] -> class logits (B, 10)."""
        return self.head(self.features(x))


DEFAULT_CLASSIFIER = Path(__file__).resolve().parent.parent / "pretrained" / "mnist_classifier.pt"


def load_classifier(path, device) -> DigitClassifier:
    """The digit classifier written by train_classifier.py, in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no classifier at {path}: train one with `python train_classifier.py` or pass --classifier")
    try:
        state = read_torch_quietly(path, device)
        classifier = DigitClassifier()
        check_weights(classifier, state["model"], path, "classifier's weights")
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
# A covariance of the classifier's features has full rank only from one more sample than it has features.
FRECHET_MIN_SAMPLES = DigitClassifier.feature_dim + 1


def score_samples(classifier: DigitClassifier, pixels: Tensor, reference_features: Tensor,
                  classes: Tensor | None = None, frechet: bool = True) -> dict:
    """How digit-like images (N, 1, 28, 28) in [0, 1] are, by the classifier:
    - recognisable: the fraction it classifies with confidence >= 0.9;
    - class_entropy: entropy of the predicted-class histogram over log 10 (1.0: all digits equally often);
    - frechet_distance: between its penultimate features of these images and reference_features (the test set's);
      None without `frechet` (for fewer than FRECHET_MIN_SAMPLES images its covariance cannot have full rank);
    - matches_class: with the classes (N,) the images were asked to be, the fraction classified as them."""
    probabilities, features = classify(classifier, pixels)
    confidence, predicted = probabilities.max(dim=1)
    # The perplexity of the predicted-class histogram is exp(its entropy).
    entropy = math.log(perplexity_from_counts(torch.bincount(predicted, minlength=10)).item())
    scores = {
        "recognisable": (confidence >= RECOGNISABLE_CONFIDENCE).double().mean().item(),
        "class_entropy": entropy / math.log(10),
        "frechet_distance": frechet_distance(features, reference_features) if frechet else None,
    }
    if classes is not None:
        scores["matches_class"] = (predicted == classes.to(predicted.device)).double().mean().item()
    return scores
