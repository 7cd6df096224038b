"""Scores against independent computations: a whole image set's come from sums and code counts over all its
batches, not from per-batch averages; the Frechet distance against closed forms; the classifier's sample scores
with a stand-in classifier."""
import math

import pytest
import torch

from helpers import model_config
from modules import VQVAE
from vqmnist.scores.reconstructions import score_reconstructions
from vqmnist.scores.samples import DigitClassifier, frechet_distance, score_samples


@pytest.mark.parametrize("decoder_output", ["tanh", "linear", "logits", "logistic", "categorical"])
def test_usage_and_perplexity_are_over_the_whole_set(decoder_output, monkeypatch):
    model = VQVAE(model_config(hidden_size=8, num_embeddings=16, decoder_output=decoder_output))
    # The first batch is quantized entirely to code 3, the second to code 5: each batch alone uses one code
    # (perplexity 1), the whole set uses two equally often (perplexity 2).
    answers = iter([3, 5])
    monkeypatch.setattr(model.bottleneck, "nearest_codes",
                        lambda flat: torch.full((len(flat),), next(answers), dtype=torch.long))
    images = torch.randint(0, 256, (20, 28, 28), dtype=torch.uint8)
    scores = score_reconstructions(model, images, batch_size=10, device=torch.device("cpu"))
    assert scores.figures["codes_used"] == 2 and scores.figures["codebook_usage"] == 2 / 16
    assert scores.figures["perplexity"] == pytest.approx(2.0)
    assert scores.counts.tolist() == [0, 0, 0, 490, 0, 490] + [0] * 10


def test_mse_is_over_every_pixel_of_the_set():
    model = VQVAE(model_config(hidden_size=8, num_embeddings=16)).eval()
    # Uneven batches (7, 7, 3): a mean of per-batch means would weight the last three images too much.
    images = torch.randint(0, 256, (17, 28, 28), dtype=torch.uint8)
    scores = score_reconstructions(model, images, batch_size=7, device=torch.device("cpu"))
    with torch.no_grad():
        pixels = model.to_pixels(model(images.unsqueeze(1).float() / 127.5 - 1).x_recon)
    expected = (pixels - images.unsqueeze(1).float() / 255).pow(2).mean().item()
    assert scores.mse == pytest.approx(expected, rel=1e-5)
    assert scores.psnr == pytest.approx(10 * math.log10(1 / expected), rel=1e-5)


@pytest.mark.parametrize("bottleneck", ["vq", "gaussian"])
def test_ssim_is_one_for_a_perfect_reconstruction_and_falls_with_noise(bottleneck, monkeypatch):
    model = VQVAE(model_config(bottleneck, hidden_size=8)).eval()
    images = torch.randint(0, 256, (12, 28, 28), dtype=torch.uint8)
    forward = model.forward
    for noise, expected in ((0.0, 1.0), (0.3, None)):
        # The decoder replaced by the input itself, plus noise: SSIM 1 exactly when nothing is lost.
        monkeypatch.setattr(model, "forward", lambda x: forward(x)._replace(x_recon=x + noise * torch.randn_like(x)))
        scores = score_reconstructions(model, images, batch_size=5, device=torch.device("cpu"))
        if expected is not None:
            assert scores.ssim == pytest.approx(1.0, abs=1e-6) and scores.mse < 1e-12
        else:
            assert 0 < scores.ssim < 0.9
    assert ("kl_bits" in scores.figures) == (bottleneck == "gaussian")
    assert ("codes_used" in scores.figures) == (bottleneck == "vq") == (scores.counts is not None)


@pytest.mark.parametrize("seed", [0, 1])
def test_frechet_distance_matches_the_closed_form_for_diagonal_covariances(seed):
    generator = torch.Generator().manual_seed(seed)
    dims = 6
    mean_a, mean_b = torch.randn(dims, generator=generator), torch.randn(dims, generator=generator)
    std_a, std_b = torch.rand(dims, generator=generator) + 0.5, torch.rand(dims, generator=generator) + 0.5
    a = torch.randn(20000, dims, generator=generator, dtype=torch.float64) * std_a + mean_a
    b = torch.randn(20000, dims, generator=generator, dtype=torch.float64) * std_b + mean_b
    # The closed form, from each set's own per-dimension statistics (off-diagonal covariances are near 0).
    expected = ((a.mean(0) - b.mean(0)).pow(2).sum() + (a.std(0) - b.std(0)).pow(2).sum()).item()
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.02, abs=1e-3)


def test_frechet_distance_of_a_set_to_itself_is_zero_and_a_shift_adds_its_squared_length():
    features = torch.randn(500, 8, generator=torch.Generator().manual_seed(0))
    shift = torch.arange(8.0) / 4
    assert frechet_distance(features, features) == pytest.approx(0, abs=1e-6)
    assert frechet_distance(features + shift, features) == pytest.approx(shift.pow(2).sum().item(), rel=1e-6)


class PixelClassifier(DigitClassifier):
    """A stand-in classifier: its features are the pixels (in [-1, 1]) and the logit of class c is 10 x the
    feature of pixel c of the top row, so an image with only pixel c lit is a confident c."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Flatten()
        self.head = torch.nn.Linear(784, 10, bias=False)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.weight[torch.arange(10), torch.arange(10)] = 10.0
        self.eval()


def test_score_samples_counts_confident_and_matching_predictions():
    lit = [[3], [3], [1], [5, 6]]  # the last image is a tie between 5 and 6: confidence 0.5, predicted 5
    pixels = torch.zeros(len(lit), 1, 28, 28)
    for image, columns in enumerate(lit):
        pixels[image, 0, 0, columns] = 1.0
    reference = torch.rand(50, 784, generator=torch.Generator().manual_seed(0))
    scores = score_samples(PixelClassifier(), pixels, reference, classes=torch.tensor([3, 3, 1, 2]))
    assert scores["recognisable"] == 0.75
    assert scores["matches_class"] == 0.75
    shares = torch.tensor([0.5, 0.25, 0.25])  # predicted 3, 3, 1, 5
    assert scores["class_entropy"] == pytest.approx(-(shares * shares.log()).sum().item() / math.log(10))
    assert scores["frechet_distance"] == pytest.approx(frechet_distance(pixels.flatten(1) * 2 - 1, reference))
    assert "matches_class" not in score_samples(PixelClassifier(), pixels, reference)


def test_class_entropy_is_one_for_balanced_predictions():
    pixels = torch.zeros(20, 1, 28, 28)
    pixels[torch.arange(20), 0, 0, torch.arange(20) % 10] = 1.0
    scores = score_samples(PixelClassifier(), pixels, torch.rand(50, 784))
    assert scores["class_entropy"] == pytest.approx(1.0)
    assert scores["recognisable"] == 1.0


def test_the_published_protocol_averages_psnr_and_ssim_over_8bit_images(monkeypatch):
    """Each image's reconstruction k_i grey levels above its digit: PSNR_i = 10 log10(255^2 / k_i^2), averaged over
    the images, which is not the PSNR of the mean squared error; a reconstruction equal to its digit has SSIM 1."""
    model = VQVAE(model_config(hidden_size=8, num_embeddings=16)).eval()
    images = torch.randint(0, 200, (6, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    offsets = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0, 32.0])  # grey levels, one per image
    forward = model.forward
    shift = {"levels": offsets}

    def shifted(x):  # inputs x = pixels / 127.5 - 1, tanh outputs map back by (y + 1) / 2
        return forward(x)._replace(x_recon=x + 2 * shift["levels"][:len(x)].view(-1, 1, 1, 1) / 255)

    monkeypatch.setattr(model, "forward", shifted)
    scores = score_reconstructions(model, images, batch_size=6, device=torch.device("cpu"), per_image_8bit=True)
    expected = sum(10 * math.log10(255 ** 2 / k ** 2) for k in offsets.tolist()) / len(offsets)
    assert scores.per_image_8bit["psnr"] == pytest.approx(expected, abs=1e-4)
    assert scores.per_image_8bit["psnr"] != pytest.approx(scores.psnr, abs=0.5), "per image, not of the mean MSE"
    shift["levels"] = torch.zeros(6)
    exact = score_reconstructions(model, images, batch_size=4, device=torch.device("cpu"), per_image_8bit=True)
    assert exact.per_image_8bit["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert score_reconstructions(model, images, 6, torch.device("cpu")).per_image_8bit is None
