"""Scores of a whole image set come from sums and code counts over all its batches, not from per-batch averages."""
import math

import pytest
import torch

from modules import VQVAE, VQVAEConfig
from utils import score_reconstructions


@pytest.mark.parametrize("decoder_output", ["tanh", "linear", "logits"])
def test_usage_and_perplexity_are_over_the_whole_set(decoder_output, monkeypatch):
    model = VQVAE(VQVAEConfig(hidden_size=8, num_embeddings=16, decoder_output=decoder_output))
    # The first batch is quantized entirely to code 3, the second to code 5: each batch alone uses one code
    # (perplexity 1), the whole set uses two equally often (perplexity 2).
    answers = iter([3, 5])
    monkeypatch.setattr(model.quantizer, "nearest_codes",
                        lambda flat: torch.full((len(flat),), next(answers), dtype=torch.long))
    images = torch.randint(0, 256, (20, 28, 28), dtype=torch.uint8)
    scores = score_reconstructions(model, images, batch_size=10, device=torch.device("cpu"))
    assert scores.codes_used == 2 and scores.codebook_usage == 2 / 16
    assert scores.perplexity == pytest.approx(2.0)
    assert scores.counts.tolist() == [0, 0, 0, 490, 0, 490] + [0] * 10


def test_mse_is_over_every_pixel_of_the_set():
    model = VQVAE(VQVAEConfig(hidden_size=8, num_embeddings=16)).eval()
    # Uneven batches (7, 7, 3): a mean of per-batch means would weight the last three images too much.
    images = torch.randint(0, 256, (17, 28, 28), dtype=torch.uint8)
    scores = score_reconstructions(model, images, batch_size=7, device=torch.device("cpu"))
    with torch.no_grad():
        pixels = model.to_pixels(model(images.unsqueeze(1).float() / 127.5 - 1).x_recon)
    expected = (pixels - images.unsqueeze(1).float() / 255).pow(2).mean().item()
    assert scores.mse == pytest.approx(expected, rel=1e-5)
    assert scores.psnr == pytest.approx(10 * math.log10(1 / expected), rel=1e-5)
