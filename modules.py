"""The VQ-VAE for 28x28 MNIST digits: encoder, residual block, decoder and the model that joins them.

The encoder reads images in [-1, 1] (`images_to_inputs`). What the decoder's last layer outputs, and so which
reconstruction loss trains it, is the config's `decoder_output`:
- "tanh": values in [-1, 1], MSE against the input (the reference's choice);
- "linear": unbounded values, MSE against the input, clamped to [-1, 1] when turned into pixels;
- "logits": Bernoulli logits of each pixel's grey level in [0, 1], binary cross-entropy against it.
`VQVAE.reconstruction_loss` and `VQVAE.to_pixels` hide the difference from the scripts.
"""
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vector_quantizer import QuantizerOutput, VectorQuantizer

DECODER_OUTPUTS = ("tanh", "linear", "logits")


@dataclass
class VQVAEConfig:
    """The model's shape: all that is needed to rebuild it from a checkpoint."""

    in_channels: int = 1
    hidden_size: int = 64  # channels of the encoder and decoder
    num_embeddings: int = 512  # K, the number of codes
    code_dim: int = 16  # D of each code; if not hidden_size, 1x1 convolutions project into and out of code space
    num_residual_blocks: int = 2
    beta: float = 0.25  # weight of the commitment loss
    codebook_update: str = "ema"  # "ema": moving averages; "loss": codebook loss and the optimizer
    ema_decay: float = 0.95  # of the EMA codebook and of the per-code use counts
    codebook_init: str = "kmeans++"  # or "random" picks from the first batch's encoder outputs, or "uniform"
    restart_threshold: float = 3.0  # restart codes whose moving-average count per batch falls below; 0: never
    cosine: bool = False  # L2-normalised encoder outputs and codes
    decoder_output: str = "tanh"  # see the module docstring


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


class VQVAE(nn.Module):
    def __init__(self, config: VQVAEConfig):
        super().__init__()
        if config.decoder_output not in DECODER_OUTPUTS:
            raise ValueError(f"decoder_output must be one of {DECODER_OUTPUTS}, not {config.decoder_output!r}")
        self.config = config
        self.encoder = Encoder(config)
        projected = config.code_dim != config.hidden_size
        self.to_code_space = nn.Conv2d(config.hidden_size, config.code_dim, 1) if projected else nn.Identity()
        self.quantizer = VectorQuantizer(
            config.num_embeddings, config.code_dim, config.beta, codebook_update=config.codebook_update,
            decay=config.ema_decay, init=config.codebook_init, restart_threshold=config.restart_threshold,
            cosine=config.cosine)
        self.from_code_space = nn.Conv2d(config.code_dim, config.hidden_size, 1) if projected else nn.Identity()
        self.decoder = Decoder(config)

    def forward(self, x: Tensor) -> VQVAEOutput:
        z_e = self.to_code_space(self.encoder(x))  # x (B, 1, 28, 28) -> (B, hidden, 7, 7) -> z_e (B, D, 7, 7)
        quantized = self.quantizer(z_e)  # z_q (B, D, 7, 7), indices (B, 7, 7)
        return VQVAEOutput(self.decoder(self.from_code_space(quantized.z_q)), quantized)

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
        """Images (B, 1, 28, 28) in [-1, 1] -> code indices (B, 7, 7)."""
        return self.quantizer(self.to_code_space(self.encoder(x))).indices

    @torch.no_grad()
    def decode(self, indices: Tensor) -> Tensor:
        """Code indices (B, 7, 7) -> decoder outputs (B, 1, 28, 28); `to_pixels` turns them into pixels."""
        return self.decoder(self.from_code_space(self.quantizer.embed(indices)))


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


# ---------------------------------------------------------------------------------------------------- the prior


# Sampling defaults of generate.py and evaluate.py, and of the samples TensorBoard shows; see CodePrior.sample.
SAMPLING_TEMPERATURE = 1.0
GUIDANCE = 0.75


@dataclass
class PriorConfig:
    """The shape of the prior over code grids: all that is needed to rebuild it from a checkpoint."""

    num_embeddings: int = 512  # K, the autoencoder's number of codes
    grid_size: int = 7  # the code grid is grid_size x grid_size, read in raster order
    num_classes: int = 10  # class tokens 0..num_classes-1; token num_classes means "no class"
    width: int = 96
    num_layers: int = 3
    num_heads: int = 4
    dropout: float = 0.0


class CausalSelfAttention(nn.Module):
    def __init__(self, config: PriorConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.qkv = nn.Linear(config.width, 3 * config.width)
        self.out = nn.Linear(config.width, config.width)
        self.dropout = config.dropout

    def forward(self, x: Tensor, cache: dict | None = None) -> Tensor:
        """x (B, T, C) -> (B, T, C). With a cache (sampling, one position at a time), the keys and values of the
        earlier positions come from it and this position's are appended, so position t sees 0..t."""
        batch, length, width = x.shape
        # (B, T, 3C) -> 3 x (B, heads, T, C / heads)
        q, k, v = self.qkv(x).view(batch, length, 3, self.num_heads, width // self.num_heads).permute(2, 0, 3, 1, 4)
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                               dropout_p=self.dropout if self.training else 0.0)
        else:
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
            y = F.scaled_dot_product_attention(q, k, v)  # one query, all of it in the past: no mask needed
        return self.out(y.transpose(1, 2).reshape(batch, length, width))


class TransformerBlock(nn.Module):
    def __init__(self, config: PriorConfig):
        super().__init__()
        self.attention_norm = nn.LayerNorm(config.width)
        self.attention = CausalSelfAttention(config)
        self.mlp_norm = nn.LayerNorm(config.width)
        self.mlp = nn.Sequential(nn.Linear(config.width, 4 * config.width), nn.GELU(),
                                 nn.Linear(4 * config.width, config.width), nn.Dropout(config.dropout))

    def forward(self, x: Tensor, cache: dict | None = None) -> Tensor:
        x = x + self.attention(self.attention_norm(x), cache)
        return x + self.mlp(self.mlp_norm(x))


class CodePrior(nn.Module):
    """An autoregressive prior p(class) p(codes | class) over the autoencoder's code grid: a small causal
    transformer.

    The sequence is the class token followed by the 49 codes in raster order; the output at position t is the
    distribution of code t given the class and codes 0..t-1. The class token num_classes means "no class": training
    shows some grids without their class, so the model also knows p(codes) alone, which classifier-free guidance
    contrasts with p(codes | class). p(class) is the class frequencies of the training set (`class_frequencies`),
    so the prior can also draw a sample's class itself.
    """

    def __init__(self, config: PriorConfig):
        super().__init__()
        self.config = config
        self.sequence_length = config.grid_size ** 2
        self.class_embedding = nn.Embedding(config.num_classes + 1, config.width)
        self.code_embedding = nn.Embedding(config.num_embeddings, config.width)
        self.position_embedding = nn.Parameter(torch.zeros(self.sequence_length, config.width))
        self.blocks = nn.ModuleList(TransformerBlock(config) for _ in range(config.num_layers))
        self.norm = nn.LayerNorm(config.width)
        self.head = nn.Linear(config.width, config.num_embeddings)
        self.register_buffer("class_frequencies", torch.full((config.num_classes,), 1.0 / config.num_classes))
        self.apply(self._init_weights)
        nn.init.normal_(self.position_embedding, std=0.02)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @property
    def no_class(self) -> int:
        return self.config.num_classes

    def forward(self, codes: Tensor, classes: Tensor) -> Tensor:
        """Codes (B, 7, 7) and classes (B,) -> logits (B, 49, K) of each code given the class and the codes
        before it in raster order."""
        codes = codes.flatten(1)  # (B, 7, 7) -> (B, 49)
        # The input is shifted right by one: [class, code 0, ..., code 47] predicts [code 0, ..., code 48].
        x = torch.cat([self.class_embedding(classes)[:, None], self.code_embedding(codes[:, :-1])], dim=1)
        x = x + self.position_embedding  # (B, 49, C)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))

    def loss(self, codes: Tensor, classes: Tensor) -> Tensor:
        """Mean negative log-likelihood per code, in nats."""
        logits = self(codes, classes)
        return F.cross_entropy(logits.float().flatten(0, 1), codes.flatten())

    def draw_classes(self, count: int, generator: torch.Generator | None = None) -> Tensor:
        """count classes (count,) drawn from p(class), the training set's class frequencies."""
        drawn = torch.multinomial(self.class_frequencies.float().cpu(), count, replacement=True, generator=generator)
        return drawn.to(self.class_frequencies.device)

    @torch.no_grad()
    def sample(self, classes: Tensor, temperature: float = 1.0, guidance: float = 0.0,
               generator: torch.Generator | None = None) -> Tensor:
        """Classes (B,) -> code grids (B, 7, 7), all B at once in 49 steps, each step reusing the keys and values
        of the earlier ones.

        Each code is drawn from softmax(logits / temperature), where with guidance w > 0 the logits are
        classifier-free guided: (1 + w) log p(code | class, ...) - w log p(code | ...), which favours codes
        typical of the class over codes typical of any digit. A class of no_class samples without a class.
        """
        count = len(classes)
        guided = guidance > 0
        if guided:  # the rows after the first `count` are the same grids seen without their class
            classes = torch.cat([classes, torch.full_like(classes, self.no_class)])
        caches = [{} for _ in self.blocks]
        codes = torch.empty(count, self.sequence_length, dtype=torch.long, device=classes.device)
        x = self.class_embedding(classes)[:, None] + self.position_embedding[0]  # (B, 1, C)
        for position in range(self.sequence_length):
            for block, cache in zip(self.blocks, caches):
                x = block(x, cache)
            logits = torch.log_softmax(self.head(self.norm(x[:, -1])).float(), dim=-1)  # (B or 2B, K)
            if guided:
                conditional, unconditional = logits[:count], logits[count:]
                logits = conditional + guidance * (conditional - unconditional)
            probabilities = torch.softmax(logits / temperature, dim=-1)
            code = torch.multinomial(probabilities.cpu(), 1, generator=generator).to(classes.device)  # (B, 1)
            codes[:, position] = code[:, 0]
            if position + 1 < self.sequence_length:
                x = self.code_embedding(code.repeat(2, 1) if guided else code) + self.position_embedding[position + 1]
        side = self.config.grid_size
        return codes.view(-1, side, side)
