"""How good a model's samples are, by the judge, a digit classifier: recognisable, read as asked, and the Frechet
distance of its features."""
import math
import pickle
from pathlib import Path

import torch
from torch import Tensor, nn

from bottleneck import perplexity_from_counts
from vqmnist.checkpoints.checks import check_weights
from vqmnist.configuration.errors import UserError
from vqmnist.io.files import read_torch_quietly


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


DEFAULT_CLASSIFIER = Path(__file__).resolve().parents[2] / "pretrained" / "mnist_classifier.pt"


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
