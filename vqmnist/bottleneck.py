"""The bottleneck interface between encoder and decoder: what every bottleneck takes, returns and declares.

A bottleneck is one module: a subclass of `Bottleneck` with a `Config` dataclass whose fields are made with
`option` (so that vqvae.py gives each its flag and the checkpoint stores them), registered by name in
`modules.BOTTLENECKS`. The autoencoder, the training loop, TensorBoard, run.json, evaluate.py, generate.py and the
study read only what this interface declares, so none of them names a particular bottleneck.
"""
import abc
from dataclasses import Field, field
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from vqmnist.limits import StepCost


class BottleneckOutput(NamedTuple):
    z_q: Tensor  # (B, D, H, W) what the decoder reads; its gradient reaches z_e as the bottleneck chooses
    # (B, H, W) int64 code index of every position, (B, L, H, W) with L = code_levels > 1 codes a position;
    # None for a continuous bottleneck
    codes: Tensor | None
    losses: dict[str, Tensor]  # () loss terms by name, each a mean over the batch, added to the reconstruction loss
    figures: dict[str, Tensor]  # () the batch's health figures by name (perplexity, KL in bits per image, ...)


def option(default, flag: str, help: str, **argparse_options) -> Field:
    """A field of a bottleneck's Config together with its command-line flag: vqvae.py adds `flag` with this help
    and these add_argument options, its dest the field's name, its default the field's."""
    return field(default=default, metadata={"flag": flag, "help": help, **argparse_options})


class Bottleneck(nn.Module, abc.ABC):
    """What sits between encoder and decoder, on the 7x7 grid.

    A subclass declares:
    - `Config`, a dataclass of its settings (fields made with `option`), checked in its __post_init__ (ValueError
      naming the field), so that a bad flag or checkpoint fails in one line;
    - `discrete`: True if it gives codes, which the prior models; then `num_embeddings` (K) and `embed(codes)`,
      and `code_levels` (L), the codes of each position, each from its own K (a residual VQ's levels; 1 by default).
      A continuous one gives `sample_latents` (its prior's samples) and names its rate in `rate_figure`;
    - `input_dim` (channels of z_e it reads) and `code_dim` (channels of the z_q it gives), known from its config
      (`dims`); the autoencoder projects the encoder's hidden channels into and out of them where they differ.
    `forward(z_e)` returns a BottleneckOutput; `epoch_figures()` gives figures counted over an epoch (restarts).
    """

    Config: ClassVar[type]
    discrete: ClassVar[bool] = True
    rate_figure: ClassVar[str | None] = None  # continuous: the figure that is its rate, in bits per image
    code_levels: int = 1
    input_dim: int
    code_dim: int
    num_embeddings: int

    @classmethod
    @abc.abstractmethod
    def dims(cls, config, hidden_size: int) -> tuple[int, int]:
        """(input_dim, code_dim) of the bottleneck `config` would build behind an encoder of hidden_size channels.
        The autoencoder builds its projection into code space before the bottleneck, so that the weights are drawn
        in the order of the layers."""

    @classmethod
    @abc.abstractmethod
    def from_config(cls, config, hidden_size: int) -> "Bottleneck":
        """The bottleneck of `config` (an instance of cls.Config) behind an encoder of hidden_size channels."""

    def embed(self, codes: Tensor) -> Tensor:
        """Discrete: code indices (B, H, W), or (B, L, H, W) -> code vectors z_q (B, D, H, W)."""
        raise NotImplementedError(f"{type(self).__name__} gives no codes")

    @property
    def num_codes(self) -> int:
        """Discrete: the codes of all levels, L * K, each level's codebook counted as its own."""
        return self.code_levels * self.num_embeddings

    def count_codes(self, codes: Tensor) -> Tensor:
        """Discrete: how often each code appears in a code grid (B, H, W) or (B, L, H, W): (num_codes,) int64, level l's
        codes at l * K to l * K + K - 1, so that each level's codebook counts as its own."""
        if self.code_levels > 1:  # (B, L, H, W): level l's indices shifted by l * K
            codes = codes + torch.arange(self.code_levels, device=codes.device).view(1, -1, 1, 1) * self.num_embeddings
        return code_counts(codes, self.num_codes)

    def sample_latents(self, shape: tuple[int, int, int], temperature: float, generator: torch.Generator) -> Tensor:
        """Continuous: (count, H, W) latents z (count, D, H, W) drawn from its prior, on the CPU."""
        raise NotImplementedError(f"{type(self).__name__} has codes, which the learned prior samples")

    def epoch_figures(self) -> dict[str, float]:
        """Figures counted since the last call (which resets them), read once an epoch; none by default."""
        return {}

    def step_cost(self, positions: int) -> StepCost:
        """What a training step on `positions` vectors (B * 7 * 7) costs it, from its shapes alone (it may be on the
        meta device): by default, work in proportion to its inputs and outputs, as an elementwise bottleneck's. One
        that searches K codes, or builds a (positions, K) tensor, says so."""
        size = positions * max(self.input_dim, self.code_dim)
        return StepCost(values=size, operations=2 * size)


def perplexity_from_counts(counts: Tensor) -> Tensor:
    """exp(H(p)) of the code distribution p = counts / counts.sum(): 1 if one code is used, K if all K equally."""
    probabilities = counts.double() / counts.sum().clamp(min=1)
    entropy = -torch.special.xlogy(probabilities, probabilities).sum()
    return entropy.exp().float()


def code_counts(indices: Tensor, num_embeddings: int) -> Tensor:
    """How often each of the K codes appears among indices (any shape): (K,) int64, on their device."""
    # index_add_ rather than bincount: on CUDA, bincount reads the largest index back to the host.
    flat = indices.flatten()
    return torch.zeros(num_embeddings, dtype=torch.long, device=flat.device).index_add_(0, flat, torch.ones_like(flat))


# The figures code_statistics gives, which the epoch line and evaluate.py show in their own words.
CODE_STATISTICS = ("codes_used", "codebook_usage", "perplexity", "dead_codes")


def code_statistics(counts: Tensor) -> dict[str, float]:
    """The health of a discrete bottleneck over a whole image set, from its code counts (K,): CODE_STATISTICS."""
    codes_used = int((counts > 0).sum())
    return {"codes_used": codes_used, "codebook_usage": codes_used / len(counts),
            "perplexity": perplexity_from_counts(counts).item(), "dead_codes": len(counts) - codes_used}

