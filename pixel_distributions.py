"""Pixels and the model: images to the model's inputs in [-1, 1] and back, and the distributions over each pixel's 256
grey levels that a likelihood decoder outputs, as log-probabilities.

A pixel's 8-bit level k in 0..255 sits at x = 2 k / 255 - 1 in the model's [-1, 1] space, in a bin of half-width
1 / 255. Two families, each with `log_probs(params, levels)` (log p of given levels, (B, C, H, W)) and
`mean(params)` (the pixel a picture shows, in [0, 1]):
- the discretised logistic mixture of PixelCNN++ (Salimans et al., 2017): a level's probability is the mixture's mass
  in its bin, the edge bins 0 and 255 taking the tails below and above, so the 256 probabilities sum to 1;
- the 256-way categorical: a softmax over 256 logits per pixel.
`one_logistic_log_probs` is one logistic of a given scale around any decoder's output: the fitted-scale likelihood
that gives a decoder without a distribution of its own a bound (vqmnist/scores/bits_per_dim.py).
"""
import torch
import torch.nn.functional as F
from torch import Tensor

IMAGE_PIXELS = 28 * 28
LEVELS = 256
HALF_BIN = 1.0 / (LEVELS - 1)  # half a grey level's bin in [-1, 1]
# log scales are kept where the bins' masses stay representable in float32: at exp(-7) a bin is 14 scales wide, at
# exp(7) a whole image's range is a sliver of one logistic.
MIN_LOG_SCALE, MAX_LOG_SCALE = -7.0, 7.0
# A mixture's means are kept within the pixel range and a margin (a mean further out gives its edge bin all the mass
# just the same), and logits within +-MAX_LOGIT: so that no output, however wild, makes an infinite NLL.
MAX_MEAN = 3.0
MAX_LOGIT = 1e4


def images_to_inputs(images: Tensor) -> Tensor:
    """uint8 pixels (B, 28, 28) in [0, 255] -> model inputs (B, 1, 28, 28) in [-1, 1]."""
    return images.unsqueeze(1).float().div(127.5).sub(1.0)


def outputs_to_pixels(outputs: Tensor) -> Tensor:
    """Outputs in [-1, 1] (clamped there if beyond) -> pixels in [0, 1]."""
    return outputs.float().add(1.0).div(2.0).clamp(0.0, 1.0)


def levels_to_inputs(levels: Tensor) -> Tensor:
    """8-bit levels (any shape, integers 0..255) -> their bins' centres x in [-1, 1], float32."""
    return levels.float() * (2.0 / (LEVELS - 1)) - 1.0


def inputs_to_levels(x: Tensor) -> Tensor:
    """Model inputs in [-1, 1] that came from 8-bit images -> their levels (int64), exactly."""
    return ((x.float() + 1.0) * ((LEVELS - 1) / 2.0)).round().long().clamp(0, LEVELS - 1)


def log_bin_mass(mean: Tensor, log_scale: Tensor, levels: Tensor) -> Tensor:
    """log P(level) under Logistic(mean, exp(log_scale)) discretised into the 256 bins, tails in the edge bins.

    mean, log_scale and levels broadcast together; stable for every input: a bin's mass
    sigmoid(a) - sigmoid(b) (a > b, the bin's edges in scale units) is computed as
    log_sigmoid(a) - softplus(b) + log(1 - exp(b - a)), never as a difference of two nearly equal numbers."""
    log_scale = log_scale.float().clamp(MIN_LOG_SCALE, MAX_LOG_SCALE)
    inverse_scale = torch.exp(-log_scale)
    x = levels_to_inputs(levels)
    upper = (x + HALF_BIN - mean.float()) * inverse_scale  # the bin's upper edge, in scale units: a
    lower = (x - HALF_BIN - mean.float()) * inverse_scale  # its lower edge: b
    inner = F.logsigmoid(upper) - F.softplus(lower) + torch.log(-torch.expm1(lower - upper))
    bottom = F.logsigmoid(upper)  # level 0: all the mass below its upper edge
    top = -F.softplus(lower)  # level 255: all the mass above its lower edge, log(1 - sigmoid(b))
    return torch.where(levels <= 0, bottom, torch.where(levels >= LEVELS - 1, top, inner))


def mixture_channels(components: int) -> int:
    """Decoder channels a pixel of a logistic mixture takes: a weight logit, a mean and a log scale each."""
    return 3 * components


def split_mixture(params: Tensor, components: int) -> tuple[Tensor, Tensor, Tensor]:
    """params (B, C * 3M, H, W) -> log weights, means, log scales, each (B, C, M, H, W)."""
    batch, channels, height, width = params.shape
    weight_logits, means, log_scales = params.float().reshape(
        batch, channels // mixture_channels(components), 3, components, height, width).unbind(2)
    return (F.log_softmax(weight_logits.clamp(-MAX_LOGIT, MAX_LOGIT), dim=2), means.clamp(-MAX_MEAN, MAX_MEAN),
            log_scales.clamp(MIN_LOG_SCALE, MAX_LOG_SCALE))


def mixture_log_probs(params: Tensor, levels: Tensor, components: int) -> Tensor:
    """params (B, C * 3M, H, W), levels (B, C, H, W) -> log p(levels) (B, C, H, W) in nats."""
    log_weights, means, log_scales = split_mixture(params, components)
    return torch.logsumexp(log_weights + log_bin_mass(means, log_scales, levels.unsqueeze(2)), dim=2)


def mixture_mean(params: Tensor, components: int) -> Tensor:
    """The mean of the mixture clamped to [-1, 1], as pixels in [0, 1] (B, C, H, W): in closed form, within half a
    grey level of the discretised distribution's own mean. For a logistic,
    E[clamp(X, -1, 1)] = -1 + s (softplus((m + 1) / s) - softplus((m - 1) / s))."""
    log_weights, means, log_scales = split_mixture(params, components)
    scale = log_scales.exp()
    clamped = -1.0 + scale * (F.softplus((means + 1.0) / scale) - F.softplus((means - 1.0) / scale))
    x = (log_weights.exp() * clamped).sum(2)
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def categorical_log_softmax(logits: Tensor) -> Tensor:
    """logits (B, C * 256, H, W) -> the log-probabilities of the 256 levels (B, C, 256, H, W)."""
    batch, channels, height, width = logits.shape
    return F.log_softmax(logits.float().clamp(-MAX_LOGIT, MAX_LOGIT).reshape(
        batch, channels // LEVELS, LEVELS, height, width), dim=2)


def categorical_log_probs(logits: Tensor, levels: Tensor) -> Tensor:
    """logits (B, C * 256, H, W), levels (B, C, H, W) -> log p(levels) (B, C, H, W) in nats."""
    return categorical_log_softmax(logits).gather(2, levels.long().unsqueeze(2)).squeeze(2)


def categorical_mean(logits: Tensor) -> Tensor:
    """The categorical's mean level / 255, as pixels in [0, 1] (B, C, H, W)."""
    probs = categorical_log_softmax(logits).exp()
    values = torch.arange(LEVELS, device=logits.device, dtype=torch.float32) / (LEVELS - 1)
    return (probs * values.view(1, 1, LEVELS, 1, 1)).sum(2)


def one_logistic_log_probs(pixels: Tensor, log_scale: Tensor | float, levels: Tensor) -> Tensor:
    """A discretised logistic of scale exp(log_scale) (in [-1, 1] units) around pixels in [0, 1] (B, C, H, W):
    log p(levels) (B, C, H, W) in nats."""
    log_scale = torch.as_tensor(log_scale, dtype=torch.float32, device=pixels.device)
    return log_bin_mass(pixels.float() * 2.0 - 1.0, log_scale, levels)
