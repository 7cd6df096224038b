"""The VQ-VAE for 28x28 MNIST digits: encoder, residual block, decoder and the model that joins them.

Between encoder and decoder sits the config's `bottleneck`: "vq", the vector quantizer (the default), "fsq", finite
scalar quantisation, or "gaussian", a continuous VAE's diagonal Gaussian (bottlenecks.py), all on the same 7x7 grid.

The encoder reads images in [-1, 1] (`images_to_inputs`). What the decoder's last layer outputs, and so which
reconstruction loss trains it, is the config's `decoder_output`:
- "tanh": values in [-1, 1], MSE against the input (the reference's choice);
- "linear": unbounded values, MSE against the input, clamped to [-1, 1] when turned into pixels;
- "logits": Bernoulli logits of each pixel's grey level in [0, 1], binary cross-entropy against it.
`VQVAE.reconstruction_loss` and `VQVAE.to_pixels` hide the difference from the scripts.
"""
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bottlenecks import FiniteScalarQuantizer, GaussianBottleneck
from vector_quantizer import CODEBOOK_INITS, CODEBOOK_UPDATES, QuantizerOutput, VectorQuantizer

DECODER_OUTPUTS = ("tanh", "linear", "logits")
BOTTLENECKS = ("vq", "fsq", "gaussian")
IMAGE_PIXELS = 28 * 28
LATENT_SIDE = 28 // 4  # the latent grid (codes or the Gaussian's z) is 7x7: the encoder's two stride-2 convolutions


@dataclass
class VQVAEConfig:
    """The model's shape: all that is needed to rebuild it from a checkpoint."""

    in_channels: int = 1
    hidden_size: int = 64  # channels of the encoder and decoder
    num_embeddings: int = 512  # K, the number of codes
    # D of each code; if not hidden_size, 1x1 convolutions project into and out of code space; 0 means hidden_size
    code_dim: int = 16
    num_residual_blocks: int = 2
    beta: float = 0.25  # weight of the commitment loss
    codebook_update: str = "ema"  # "ema": moving averages; "loss": codebook loss and the optimizer
    ema_decay: float = 0.95  # of the EMA codebook and of the per-code use counts
    codebook_init: str = "kmeans++"  # or "random" picks from the first batch's encoder outputs, or "uniform"
    restart_threshold: float = 3.0  # restart codes whose moving-average count per batch falls below; 0: never
    cosine: bool = False  # L2-normalised encoder outputs and codes
    decoder_output: str = "tanh"  # see the module docstring
    bottleneck: str = "vq"  # see the module docstring
    # fsq: the number of levels of each code dimension; they set code_dim = len(fsq_levels), num_embeddings = product
    fsq_levels: tuple[int, ...] = (8, 8, 8)
    # gaussian: the loss is recon_loss + kl_weight * KL / IMAGE_PIXELS, the KL in nats per image. With "logits" and
    # weight 1 that is the negative ELBO per pixel; with MSE in [-1, 1], that of a Gaussian decoder of variance 1/2.
    kl_weight: float = 1.0

    def __post_init__(self):
        """Refuse a shape that cannot be built (ValueError naming the field), so a bad checkpoint fails in one line."""
        if self.code_dim == 0:  # codes in the hidden space itself, without projections
            self.code_dim = self.hidden_size
        self.fsq_levels = tuple(self.fsq_levels)  # a checkpoint may hand back a list
        if not self.fsq_levels or not all(type(level) is int and level >= 2 for level in self.fsq_levels):
            raise ValueError(f"fsq_levels must be integers >= 2, not {self.fsq_levels!r}")
        if self.bottleneck == "fsq":
            self.code_dim, self.num_embeddings = len(self.fsq_levels), math.prod(self.fsq_levels)
        for name, smallest in (("in_channels", 1), ("hidden_size", 1), ("num_embeddings", 1), ("code_dim", 1),
                               ("num_residual_blocks", 0)):
            value = getattr(self, name)
            if type(value) is not int or value < smallest:
                raise ValueError(f"{name} must be an integer >= {smallest}, not {value!r}")
        for name, low, high in (("beta", 0, math.inf), ("ema_decay", 0, 1), ("restart_threshold", 0, math.inf),
                                ("kl_weight", 0, math.inf)):
            value = getattr(self, name)
            if type(value) not in (int, float) or not low <= value < high:
                raise ValueError(f"{name} must be a number in [{low}, {high}), not {value!r}")
        for name, choices in (("codebook_update", CODEBOOK_UPDATES), ("codebook_init", CODEBOOK_INITS),
                              ("decoder_output", DECODER_OUTPUTS), ("bottleneck", BOTTLENECKS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, not {getattr(self, name)!r}")


def images_to_inputs(images: Tensor) -> Tensor:
    """uint8 pixels (B, 28, 28) in [0, 255] -> model inputs (B, 1, 28, 28) in [-1, 1]."""
    return images.unsqueeze(1).float().div(127.5).sub(1.0)


def outputs_to_pixels(outputs: Tensor) -> Tensor:
    """Outputs in [-1, 1] (clamped there if beyond) -> pixels in [0, 1]."""
    return outputs.float().add(1.0).div(2.0).clamp(0.0, 1.0)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, kernel_size=1),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


class Encoder(nn.Module):
    def __init__(self, config: VQVAEConfig):
        super().__init__()
        hidden = config.hidden_size
        self.layers = nn.Sequential(
            nn.Conv2d(config.in_channels, hidden, kernel_size=4, stride=2, padding=1),  # 28x28 -> 14x14
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, kernel_size=4, stride=2, padding=1),  # 14x14 -> 7x7
            *[ResidualBlock(hidden) for _ in range(config.num_residual_blocks)],
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class Decoder(nn.Module):
    def __init__(self, config: VQVAEConfig):
        super().__init__()
        hidden = config.hidden_size
        self.layers = nn.Sequential(
            *[ResidualBlock(hidden) for _ in range(config.num_residual_blocks)],
            nn.ReLU(),
            nn.ConvTranspose2d(hidden, hidden, kernel_size=4, stride=2, padding=1),  # 7x7 -> 14x14
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.ConvTranspose2d(hidden, config.in_channels, kernel_size=4, stride=2, padding=1),  # 14x14 -> 28x28
            *([nn.Tanh()] if config.decoder_output == "tanh" else []),
        )

    def forward(self, z_q: Tensor) -> Tensor:
        return self.layers(z_q)


class VQVAEOutput(NamedTuple):
    x_recon: Tensor  # (B, 1, 28, 28) decoder output, in the form of config.decoder_output
    quantized: QuantizerOutput


def make_bottleneck(config: VQVAEConfig) -> nn.Module:
    if config.bottleneck == "fsq":
        return FiniteScalarQuantizer(config.fsq_levels)
    if config.bottleneck == "gaussian":
        return GaussianBottleneck()
    return VectorQuantizer(
        config.num_embeddings, config.code_dim, config.beta, codebook_update=config.codebook_update,
        decay=config.ema_decay, init=config.codebook_init, restart_threshold=config.restart_threshold,
        cosine=config.cosine)


class VQVAE(nn.Module):
    def __init__(self, config: VQVAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        # The Gaussian's encoder gives a mean and a log-variance per dimension.
        encoded_dim = 2 * config.code_dim if config.bottleneck == "gaussian" else config.code_dim
        projected_in = encoded_dim != config.hidden_size
        self.to_code_space = nn.Conv2d(config.hidden_size, encoded_dim, 1) if projected_in else nn.Identity()
        self.quantizer = make_bottleneck(config)  # named for the VQ, whatever the bottleneck: the checkpoints' keys
        projected_out = config.code_dim != config.hidden_size
        self.from_code_space = nn.Conv2d(config.code_dim, config.hidden_size, 1) if projected_out else nn.Identity()
        self.decoder = Decoder(config)

    @property
    def discrete(self) -> bool:
        """Whether the bottleneck gives codes (VQ, FSQ), which the prior models, or a continuous z (Gaussian)."""
        return self.config.bottleneck != "gaussian"

    def forward(self, x: Tensor) -> VQVAEOutput:
        z_e = self.to_code_space(self.encoder(x))  # x (B, 1, 28, 28) -> (B, hidden, 7, 7) -> z_e (B, D, 7, 7)
        quantized = self.quantizer(z_e)  # z_q (B, D, 7, 7), indices (B, 7, 7)
        return VQVAEOutput(self.decoder(self.from_code_space(quantized.z_q)), quantized)

    def bottleneck_loss(self, quantized: QuantizerOutput) -> Tensor:
        """The bottleneck's part of the training loss: codebook and commitment losses (VQ; with EMA the codebook
        loss has no gradient and adds a constant), nothing (FSQ), or kl_weight * KL per pixel (Gaussian)."""
        loss = quantized.codebook_loss.float() + quantized.commitment_loss.float()
        if quantized.kl is not None:
            loss = loss + self.config.kl_weight * quantized.kl / IMAGE_PIXELS
        return loss

    def reconstruction_loss(self, x_recon: Tensor, x: Tensor) -> Tensor:
        """Mean loss per pixel of decoder outputs x_recon against the inputs x in [-1, 1]."""
        if self.config.decoder_output == "logits":
            return F.binary_cross_entropy_with_logits(x_recon.float(), x.float().add(1.0).div(2.0))
        return F.mse_loss(x_recon.float(), x.float())

    def to_pixels(self, x_recon: Tensor) -> Tensor:
        """Decoder outputs -> pixels in [0, 1], for scoring and saving."""
        if self.config.decoder_output == "logits":
            return torch.sigmoid(x_recon.float())
        return outputs_to_pixels(x_recon)

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Images (B, 1, 28, 28) in [-1, 1] -> code indices (B, 7, 7); VQ and FSQ only."""
        return self.quantizer(self.to_code_space(self.encoder(x))).indices

    @torch.no_grad()
    def decode(self, indices: Tensor) -> Tensor:
        """Code indices (B, 7, 7) -> decoder outputs (B, 1, 28, 28); `to_pixels` turns them into pixels."""
        return self.decode_latents(self.quantizer.embed(indices))

    @torch.no_grad()
    def sample_latents(self, count: int, temperature: float, generator: torch.Generator) -> Tensor:
        """The Gaussian VAE's prior samples: z ~ N(0, temperature^2 I) of shape (count, D, 7, 7), on the CPU."""
        return torch.randn(count, self.config.code_dim, LATENT_SIDE, LATENT_SIDE, generator=generator) * temperature

    @torch.no_grad()
    def decode_latents(self, z: Tensor) -> Tensor:
        """Latents z (B, D, 7, 7) (code vectors, or the Gaussian's z) -> decoder outputs (B, 1, 28, 28)."""
        return self.decoder(self.from_code_space(z))
