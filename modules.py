"""The VQ-VAE for 28x28 MNIST digits: encoder, decoder, and the registry of bottlenecks between them.

Between encoder and decoder sits the config's `bottleneck`, one of BOTTLENECKS, all on the same 7x7 grid and all
beside this file: "vq", the vector quantizer (the default, vector_quantizer.py), "rvq", a residual stack of them
(residual_vq.py), "fsq", "lfq" and "simvq", finite scalar, lookup-free and SimVQ quantisation (fsq.py, lfq.py,
simvq.py), or "gaussian", a continuous VAE's diagonal Gaussian (gaussian.py). Each is a `bottleneck.Bottleneck`; a
new one is its own file, its import and one line in BOTTLENECKS (docs/code.md).

The encoder reads images in [-1, 1] (`images_to_inputs`). What the decoder's last layer outputs, and so which
reconstruction loss trains it, is the config's `decoder_output`:
- "tanh": values in [-1, 1], MSE against the input (the reference's choice);
- "linear": unbounded values, MSE against the input, clamped to [-1, 1] when turned into pixels;
- "logits": Bernoulli logits of each pixel's grey level in [0, 1], binary cross-entropy against it;
- "logistic": a discretised logistic mixture over each pixel's 256 grey levels (PixelCNN++), of
  `mixture_components` components, trained by its negative log-likelihood;
- "categorical": a 256-way softmax over each pixel's grey levels, trained by its negative log-likelihood.
The last two are likelihood decoders (LIKELIHOOD_OUTPUTS): p(x | z) is a distribution over 8-bit images, so
evaluate.py reads a bound in bits per dimension off it (vqmnist/pixel_distributions.py); their pictures show the
distribution's mean. `VQVAE.reconstruction_loss`, `VQVAE.to_pixels` and `VQVAE.pixel_log_probs` hide the
difference from the scripts.
"""
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bottleneck import Bottleneck, BottleneckOutput, registry
from fsq import FiniteScalarQuantizer
from gaussian import GaussianBottleneck
from lfq import LookupFreeQuantizer
from options import MAX_DEPTH, MAX_WIDTH, check_options, integer, one_of, one_of_the_keys, option
from pixel_distributions import (LEVELS, categorical_log_probs, categorical_mean, inputs_to_levels, mixture_channels,
                                 mixture_log_probs, mixture_mean, one_logistic_log_probs, outputs_to_pixels)
from residual_vq import ResidualVectorQuantizer
from simvq import SimVQ
from vector_quantizer import VectorQuantizer

# The bottlenecks by name: vqvae.py's --bottleneck choices, and the name a checkpoint stores.
BOTTLENECKS: dict[str, type[Bottleneck]] = registry({
    "vq": VectorQuantizer,
    "fsq": FiniteScalarQuantizer,
    "lfq": LookupFreeQuantizer,
    "simvq": SimVQ,
    "gaussian": GaussianBottleneck,
    "rvq": ResidualVectorQuantizer,
})
DECODER_OUTPUTS = ("tanh", "linear", "logits", "logistic", "categorical")
LIKELIHOOD_OUTPUTS = ("logistic", "categorical")  # the decoder outputs that are a distribution over 256 levels
MAX_MIXTURE_COMPONENTS = 32
LATENT_SIDE = 28 // 4  # the latent grid (codes or the Gaussian's z) is 7x7: the encoder's two stride-2 convolutions


@dataclass
class VQVAEConfig:
    """The model's shape: all that is needed to rebuild it from a checkpoint; each field but the bottleneck's config
    with its rule and, where the command line sets it, its vqvae.py flag."""

    in_channels: int = option(1, integer(1, MAX_WIDTH))
    hidden_size: int = option(64, integer(1, MAX_WIDTH), "--hidden-size", "channels of the encoder and decoder")
    num_residual_blocks: int = option(2, integer(0, MAX_DEPTH), "--num-residual-blocks",
                                      "residual blocks in the encoder and in the decoder")
    decoder_output: str = option("tanh", one_of(*DECODER_OUTPUTS), "--decoder-output", "last layer and loss: tanh or "
                                 "linear output with MSE, logits with binary cross-entropy, or a distribution over "
                                 "the 256 grey levels with its negative log-likelihood: logistic (a discretised "
                                 "logistic mixture) or categorical (a 256-way softmax)")
    mixture_components: int = option(5, integer(1, MAX_MIXTURE_COMPONENTS), "--mixture-components",
                                     "components of the logistic decoder's mixture, per pixel")
    bottleneck: str = option("vq", one_of_the_keys(BOTTLENECKS), "--bottleneck",
                             "what sits between encoder and decoder, each with the flags below that apply to it: " + ", ".join(
                                 f"{name} ({bottleneck.__name__})" for name, bottleneck in BOTTLENECKS.items()))
    # An instance of that bottleneck's Config; None means its defaults, and a dict (from a checkpoint) is rebuilt.
    bottleneck_config: Any = None

    def __post_init__(self):
        """Refuse a shape that cannot be built (ValueError naming the field), so a bad checkpoint fails in one line."""
        check_options(self)
        config_type = BOTTLENECKS[self.bottleneck].Config
        if self.bottleneck_config is None:
            self.bottleneck_config = config_type()
        elif isinstance(self.bottleneck_config, dict):
            unknown = self.bottleneck_config.keys() - {field.name for field in fields(config_type)}
            if unknown:
                raise ValueError(f"bottleneck_config has fields {self.bottleneck} does not know: {sorted(unknown)}")
            self.bottleneck_config = config_type(**self.bottleneck_config)
        elif not isinstance(self.bottleneck_config, config_type):
            raise ValueError(f"bottleneck_config must be a {config_type.__name__}, not {self.bottleneck_config!r}")


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


def decoder_channels(config: VQVAEConfig) -> int:
    """Channels of the decoder's output: one per image channel, or a distribution's parameters per image channel."""
    if config.decoder_output == "logistic":
        return config.in_channels * mixture_channels(config.mixture_components)
    if config.decoder_output == "categorical":
        return config.in_channels * LEVELS
    return config.in_channels


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
            nn.ConvTranspose2d(hidden, decoder_channels(config), kernel_size=4, stride=2, padding=1),  # -> 28x28
            *([nn.Tanh()] if config.decoder_output == "tanh" else []),
        )

    def forward(self, z_q: Tensor) -> Tensor:
        return self.layers(z_q)


class VQVAEOutput(NamedTuple):
    x_recon: Tensor  # (B, decoder_channels, 28, 28) decoder output, in the form of config.decoder_output
    quantized: BottleneckOutput  # the bottleneck's output: z_q, codes, loss terms and figures


class VQVAE(nn.Module):
    latent_side = LATENT_SIDE  # the code grid is latent_side x latent_side

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        bottleneck = BOTTLENECKS[config.bottleneck]
        input_dim, code_dim = bottleneck.dims(config.bottleneck_config, config.hidden_size)
        self.to_code_space = nn.Conv2d(config.hidden_size, input_dim, 1) if input_dim != config.hidden_size \
            else nn.Identity()
        self.bottleneck = bottleneck.from_config(config.bottleneck_config, config.hidden_size)
        self.from_code_space = nn.Conv2d(code_dim, config.hidden_size, 1) if code_dim != config.hidden_size \
            else nn.Identity()
        self.decoder = Decoder(config)

    @property
    def discrete(self) -> bool:
        """Whether the bottleneck gives codes, which the prior models, or a continuous z."""
        return self.bottleneck.discrete

    def forward(self, x: Tensor) -> VQVAEOutput:
        z_e = self.to_code_space(self.encoder(x))  # x (B, 1, 28, 28) -> (B, hidden, 7, 7) -> z_e (B, D, 7, 7)
        quantized = self.bottleneck(z_e)  # z_q (B, D, 7, 7), codes (B, 7, 7) or (B, L, 7, 7), or None
        return VQVAEOutput(self.decoder(self.from_code_space(quantized.z_q)), quantized)

    @staticmethod
    def bottleneck_loss(quantized: BottleneckOutput) -> Tensor:
        """The bottleneck's part of the training loss: the sum of its loss terms (the VQ's commitment loss, and its
        codebook loss where the codebook learns by loss; a Gaussian's weighted KL)."""
        return sum((term.float() for term in quantized.losses.values()), torch.zeros(()))

    @property
    def likelihood(self) -> bool:
        """Whether the decoder outputs a distribution over each pixel's 256 grey levels."""
        return self.config.decoder_output in LIKELIHOOD_OUTPUTS

    def reconstruction_loss(self, x_recon: Tensor, x: Tensor) -> Tensor:
        """Mean loss per pixel of decoder outputs x_recon against the inputs x in [-1, 1]: for a likelihood decoder
        its negative log-likelihood in nats per pixel."""
        if self.likelihood:
            return -self.pixel_log_probs(x_recon, inputs_to_levels(x)).mean()
        if self.config.decoder_output == "logits":
            return F.binary_cross_entropy_with_logits(x_recon.float(), x.float().add(1.0).div(2.0))
        return F.mse_loss(x_recon.float(), x.float())

    def to_pixels(self, x_recon: Tensor) -> Tensor:
        """Decoder outputs -> pixels (B, C, 28, 28) in [0, 1], for scoring and saving: a likelihood decoder's mean."""
        if self.config.decoder_output == "logistic":
            return mixture_mean(x_recon, self.config.mixture_components)
        if self.config.decoder_output == "categorical":
            return categorical_mean(x_recon)
        if self.config.decoder_output == "logits":
            return torch.sigmoid(x_recon.float())
        return outputs_to_pixels(x_recon)

    def pixel_log_probs(self, x_recon: Tensor, levels: Tensor, log_scale: Tensor | float | None = None) -> Tensor:
        """log p(levels | decoder outputs) (B, C, 28, 28) in nats, levels the images' 8-bit integers (B, C, 28, 28).

        A likelihood decoder gives its own; any other decoder gets the fitted-scale likelihood, a discretised
        logistic of scale exp(log_scale) around its pixels (log_scale required)."""
        if self.config.decoder_output == "logistic":
            return mixture_log_probs(x_recon, levels, self.config.mixture_components)
        if self.config.decoder_output == "categorical":
            return categorical_log_probs(x_recon, levels)
        if log_scale is None:
            raise ValueError(f"a {self.config.decoder_output} decoder gives no distribution: pass a log_scale")
        return one_logistic_log_probs(self.to_pixels(x_recon), log_scale, levels)

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Images (B, 1, 28, 28) in [-1, 1] -> codes (B, 7, 7), or (B, L, 7, 7) with L = code_levels > 1 codes a
        position (a residual VQ's levels); a discrete bottleneck only."""
        return self.bottleneck(self.to_code_space(self.encoder(x))).codes

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Codes (B, 7, 7) or (B, L, 7, 7) -> decoder outputs (B, decoder_channels, 28, 28); `to_pixels` turns them
        into pixels."""
        return self.decode_latents(self.bottleneck.embed(codes))

    @torch.no_grad()
    def sample_latents(self, count: int, temperature: float, generator: torch.Generator) -> Tensor:
        """A continuous bottleneck's prior samples (count, D, 7, 7), on the CPU."""
        return self.bottleneck.sample_latents((count, LATENT_SIDE, LATENT_SIDE), temperature, generator)

    @torch.no_grad()
    def decode_latents(self, z: Tensor) -> Tensor:
        """Latents z (B, D, 7, 7) (code vectors, or a continuous z) -> decoder outputs (B, decoder_channels, 28, 28)."""
        return self.decoder(self.from_code_space(z))
