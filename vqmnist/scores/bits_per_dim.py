"""Upper bounds on -log2 p(x) of 8-bit images, per image in bits, from a model's decoder and latents.

Every figure here is per image; evaluate.py divides by the 784 dimensions of a digit for bits per dimension.
- A discrete bottleneck's bound is -log2 p(x | z_q(x)) - log2 p(z_q(x)): `decoder_bits` is its first term, the
  prior's NLL of the code grid (vqmnist/prior.py) or the uniform prior's 49 L log2 K bits its second. The encoder is
  deterministic, so q(z|x) puts all its mass on z_q(x) and this is the ELBO.
- A continuous bottleneck's bounds are the negative ELBO, -E_q log2 p(x|z) + KL(q(z|x) || p(z)) (one sample of z,
  the KL in closed form), and the importance-weighted bound of Burda et al. (2016),
  -log2 (1/k) sum_i p(x, z_i) / q(z_i|x) over k samples z_i ~ q(z|x), which is tighter on average as k grows.
A decoder without a distribution over the 256 levels ("tanh", "linear", "logits") is given one by `fit_log_scale`:
a discretised logistic around its pictured pixels whose one scale minimises the NLL of a validation set.
"""
import math
from typing import NamedTuple

import torch
from torch import Tensor, nn
from tqdm import tqdm

from pixel_distributions import MAX_LOG_SCALE, MIN_LOG_SCALE, images_to_inputs, one_logistic_log_probs

LN2 = math.log(2.0)
# fit_log_scale's search: a grid over the whole range, then ever finer ones, each one step of the last either side of
# its best point.
SEARCH_STEPS = (0.25, 0.02, 0.002)
# The largest log scale worth searching: a logistic of scale e^2 spreads a pixel over ~7 times the [-1, 1] range.
FIT_MAX_LOG_SCALE = min(2.0, MAX_LOG_SCALE)


def image_levels(images: Tensor) -> Tensor:
    """uint8 images (B, 28, 28) -> their levels (B, 1, 28, 28), int64."""
    return images.unsqueeze(1).long()


def batches(images: Tensor, batch_size: int, what: str):
    """The images in batches, under a progress bar (the test set is long on a CPU)."""
    return tqdm(images.split(batch_size), desc=what, unit="batch", leave=False, dynamic_ncols=True)


@torch.no_grad()
def fit_log_scale(model: nn.Module, images: Tensor, batch_size: int, device) -> float:
    """The log scale (in [-1, 1] units) of the discretised logistic around the model's pictured pixels that gives
    uint8 images (N, 28, 28) their lowest mean NLL: a grid search over [MIN_LOG_SCALE, FIT_MAX_LOG_SCALE] at the
    first of SEARCH_STEPS, then at each next step within one step of the last either side of the best so far."""
    model.eval()
    pixels, levels = [], []
    for batch in batches(images, batch_size, "fitting the decoder's scale"):
        batch = batch.to(device)
        pixels.append(model.to_pixels(model(images_to_inputs(batch)).x_recon))
        levels.append(image_levels(batch))
    pixels, levels = torch.cat(pixels), torch.cat(levels)

    def mean_nll(log_scale: float) -> float:
        return -one_logistic_log_probs(pixels, log_scale, levels).double().mean().item()

    low, high, best = MIN_LOG_SCALE, FIT_MAX_LOG_SCALE, None
    for step in SEARCH_STEPS:
        best = min(torch.arange(low, high + step / 2, step).tolist(), key=mean_nll)
        low, high = best - step, best + step
    return best


def image_bits(model: nn.Module, x_recon: Tensor, levels: Tensor, log_scale: float | None) -> Tensor:
    """-log2 p(x | decoder outputs) (B,) in bits, summed over each image's pixels."""
    return -model.pixel_log_probs(x_recon, levels, log_scale).flatten(1).sum(1).double() / LN2


@torch.no_grad()
def decoder_bits(model: nn.Module, images: Tensor, batch_size: int, device,
                 log_scale: float | None = None) -> Tensor:
    """-log2 p(x | z(x)) (N,) in bits of uint8 images (N, 28, 28), z(x) the bottleneck's evaluation output (a
    discrete one's z_q(x)); log_scale for a decoder without a distribution (fit_log_scale)."""
    model.eval()
    bits = []
    for batch in batches(images, batch_size, "decoder NLL"):
        batch = batch.to(device)
        bits.append(image_bits(model, model(images_to_inputs(batch)).x_recon, image_levels(batch), log_scale))
    return torch.cat(bits).cpu()


class ContinuousBounds(NamedTuple):
    """Per image (N,), in bits: the negative ELBO and its two terms, and the importance-weighted bound."""

    negative_elbo: Tensor
    reconstruction: Tensor  # -log2 p(x | z), one z ~ q(z|x)
    kl: Tensor  # KL(q(z|x) || p(z)) / ln 2, in closed form
    importance_weighted: Tensor


@torch.no_grad()
def continuous_bounds(model: nn.Module, images: Tensor, batch_size: int, device, samples: int,
                      generator: torch.Generator, log_scale: float | None = None) -> ContinuousBounds:
    """The bounds of a continuous bottleneck on uint8 images (N, 28, 28), from `samples` draws z_i ~ q(z|x) each;
    the noise comes from `generator` (on the CPU), so a seed gives the same figures on every device."""
    model.eval()
    bottleneck, parts = model.bottleneck, []
    for batch in batches(images, batch_size, "ELBO and importance-weighted bound"):
        batch = batch.to(device)
        levels = image_levels(batch)
        posterior = bottleneck.posterior(model.to_code_space(model.encoder(images_to_inputs(batch))))
        kl = torch.distributions.kl_divergence(posterior, bottleneck.latent_prior(posterior.mean))
        reconstructions, log_weights = [], []  # -log2 p(x | z_i) and log2 p(x, z_i) / q(z_i | x), each (B,)
        for _ in range(samples):
            eps = torch.randn(posterior.mean.shape, generator=generator).to(device)
            z = posterior.mean + posterior.stddev * eps  # z (B, D, 7, 7) ~ q(z|x)
            reconstruction = image_bits(model, model.decode_latents(z), levels, log_scale)
            log_ratio = (bottleneck.latent_prior(z).log_prob(z) - posterior.log_prob(z)).flatten(1).sum(1)
            reconstructions.append(reconstruction)
            log_weights.append(log_ratio.double() / LN2 - reconstruction)
        log_weights = torch.stack(log_weights)  # (samples, B)
        importance_weighted = -(torch.logsumexp(log_weights * LN2, dim=0) - math.log(samples)) / LN2
        kl_bits = kl.flatten(1).sum(1).double() / LN2
        parts.append((reconstructions[0] + kl_bits, reconstructions[0], kl_bits, importance_weighted))
    return ContinuousBounds(*(torch.cat(column).cpu() for column in zip(*parts)))
