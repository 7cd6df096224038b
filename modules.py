"""The VQ-VAE for 28x28 MNIST digits: encoder, residual block, decoder and the model that joins them.

The model works on images in [-1, 1] (`images_to_inputs`) and its decoder ends in tanh, so its outputs are in
the same range; `outputs_to_pixels` maps them back to [0, 1] pixels for scoring and saving.
"""
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from vector_quantizer import QuantizerOutput, VectorQuantizer


@dataclass
class VQVAEConfig:
    """The model's shape: all that is needed to rebuild it from a checkpoint."""

    in_channels: int = 1
    hidden_size: int = 40  # channels of the encoder and decoder, and the dimension D of each code
    num_embeddings: int = 512  # K, the number of codes
    num_residual_blocks: int = 2
    beta: float = 1.0  # weight of the commitment loss


def images_to_inputs(images: Tensor) -> Tensor:
    """uint8 pixels (B, 28, 28) in [0, 255] -> model inputs (B, 1, 28, 28) in [-1, 1]."""
    return images.unsqueeze(1).float().div(127.5).sub(1.0)


def outputs_to_pixels(outputs: Tensor) -> Tensor:
    """Model outputs in [-1, 1] -> pixels in [0, 1]."""
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
            nn.Tanh(),
        )

    def forward(self, z_q: Tensor) -> Tensor:
        return self.layers(z_q)


class VQVAEOutput(NamedTuple):
    x_recon: Tensor  # (B, 1, 28, 28) in [-1, 1]
    quantized: QuantizerOutput


class VQVAE(nn.Module):
    def __init__(self, config: VQVAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quantizer = VectorQuantizer(config.num_embeddings, config.hidden_size, config.beta)
        self.decoder = Decoder(config)

    def forward(self, x: Tensor) -> VQVAEOutput:
        z_e = self.encoder(x)  # x (B, 1, 28, 28) -> z_e (B, D, 7, 7)
        quantized = self.quantizer(z_e)  # z_q (B, D, 7, 7), indices (B, 7, 7)
        return VQVAEOutput(self.decoder(quantized.z_q), quantized)

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Images (B, 1, 28, 28) in [-1, 1] -> code indices (B, 7, 7)."""
        return self.quantizer(self.encoder(x)).indices

    @torch.no_grad()
    def decode(self, indices: Tensor) -> Tensor:
        """Code indices (B, 7, 7) -> images (B, 1, 28, 28) in [-1, 1]."""
        return self.decoder(self.quantizer.embed(indices))
