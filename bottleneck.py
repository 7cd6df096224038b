"""The bottleneck interface between encoder and decoder: what every bottleneck takes, returns and declares.

A bottleneck is one file beside this one: a subclass of `Bottleneck` with a `Config` dataclass whose fields are made
with `vqmnist.options.option` (so that vqvae.py makes each its flag, its rule checks it, and the checkpoint stores
it), registered by name in `modules.BOTTLENECKS` through `registry`. The settings several bottlenecks share are the
SharedOptions here (--k, --code-dim, --beta, --gradient). The autoencoder, the training loop, TensorBoard, run.json,
evaluate.py, generate.py and the study read only what this interface declares, so none of them names a particular
bottleneck.
"""
import abc
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from nearest_code import ESTIMATORS
from options import (MAX_CODES, MAX_LOSS_WEIGHT, MAX_WIDTH, SharedOption, StepCost, check_shared_names, integer, number,
                     one_of)


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


class BottleneckOutput(NamedTuple):
    z_q: Tensor  # (B, D, H, W) what the decoder reads; its gradient reaches z_e as the bottleneck chooses
    # (B, H, W) int64 code index of every position, (B, L, H, W) with L = code_levels > 1 codes a position;
    # None for a continuous bottleneck
    codes: Tensor | None
    losses: dict[str, Tensor]  # () loss terms by name, each a mean over the batch, added to the reconstruction loss
    figures: dict[str, Tensor]  # () the batch's health figures by name (perplexity, KL in bits per image, ...)


class Bottleneck(nn.Module, abc.ABC):
    """What sits between encoder and decoder, on the 7x7 grid.

    A subclass declares:
    - `Config`, a dataclass of its settings (fields made with `vqmnist.options.option` or a SharedOption below),
      whose __post_init__ calls `check_options(self)` (ValueError naming the field), so that a bad flag or checkpoint
      fails in one line, and checks there what its fields must be together;
    - `discrete`: True if it gives codes, which the prior models; then `num_embeddings` (K) and `embed(codes)`,
      and `code_levels` (L), the codes of each position, each from its own K (a residual VQ's levels; 1 by default).
      A continuous one gives `sample_latents` (its prior's samples), `posterior` and `latent_prior` (q(z|x) and
      p(z), for the likelihood bounds), and names its rate in `rate_figure`;
    - `input_dim` (channels of z_e it reads) and `code_dim` (channels of the z_q it gives), known from its config
      (`dims`); the autoencoder projects the encoder's hidden channels into and out of them where they differ.
    `forward(z_e)` returns a BottleneckOutput; `epoch_figures()` gives figures counted over an epoch (restarts).

    Under `--amp` the encoder and decoder run in bf16 autocast on a device that computes bf16 in hardware, and so does
    the bottleneck's forward: z_e may arrive in bf16. A bottleneck keeps its own arithmetic (distances, codebook
    updates) in fp32 where it matters, and in eval mode its z_q equals `embed(codes)` exactly, autocast or not, so
    that decoding a code grid (generate.py, the prior's samples) gives the picture the reconstruction gave
    (tests/test_bottlenecks.py checks every registered bottleneck).
    """

    Config: ClassVar[type]
    discrete: ClassVar[bool] = True
    rate_figure: ClassVar[str | None] = None  # continuous: the figure that is its rate, in bits per image
    code_levels: int = 1
    input_dim: int
    code_dim: int
    num_embeddings: int

    @classmethod
    def dims(cls, config, hidden_size: int) -> tuple[int, int]:
        """(input_dim, code_dim) of the bottleneck `config` would build behind an encoder of hidden_size channels.
        The autoencoder builds its projection into code space before the bottleneck, so that the weights are drawn
        in the order of the layers.

        By default (D, D) for a Config with a code_dim field, D as `code_dim_of` says: a bottleneck that reads and
        gives D channels. One whose widths come otherwise (FSQ's levels, LFQ's bits, a Gaussian's mean and
        log-variance a dimension) overrides it."""
        if not hasattr(config, "code_dim"):
            raise TypeError(f"{cls.__name__}.Config has no code_dim field, from which the default dims are read: "
                            f"give {cls.__name__} its own dims")
        code_dim = code_dim_of(config, hidden_size)
        return code_dim, code_dim

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

    def posterior(self, z_e: Tensor) -> torch.distributions.Distribution:
        """Continuous: q(z|x) from z_e (B, input_dim, H, W), a distribution over z (B, D, H, W) whose log_prob is per
        element; with `latent_prior` it gives the ELBO and importance-weighted bounds (vqmnist/bits_per_dim.py)."""
        raise NotImplementedError(f"{type(self).__name__} has codes, whose prior is the learned prior")

    def latent_prior(self, z: Tensor) -> torch.distributions.Distribution:
        """Continuous: p(z), a distribution over a z shaped like `z` whose log_prob is per element."""
        raise NotImplementedError(f"{type(self).__name__} has codes, whose prior is the learned prior")

    def epoch_figures(self) -> dict[str, float]:
        """Figures counted since the last call (which resets them), read once an epoch; none by default."""
        return {}

    def step_cost(self, positions: int) -> StepCost:
        """What a training step on `positions` vectors (B * 7 * 7) costs it, from its shapes alone (it may be on the
        meta device): by default, work in proportion to its inputs and outputs, as an elementwise bottleneck's. One
        that searches K codes, or builds a (positions, K) tensor, says so."""
        size = positions * max(self.input_dim, self.code_dim)
        return StepCost(values=size, operations=2 * size)


num_embeddings_option = SharedOption(
    "num_embeddings", 512, integer(1, MAX_CODES), "--k",
    f"number of codes K in the codebook (of each level), at most {MAX_CODES:,}")
code_dim_option = SharedOption(
    "code_dim", 16, integer(0, MAX_WIDTH), "--code-dim",
    "dimension D of the codes, or of a continuous z; if it differs from --hidden-size, 1x1 convolutions project into "
    "and out of code space; 0 means D = --hidden-size")
beta_option = SharedOption("beta", 0.25, number(0, MAX_LOSS_WEIGHT), "--beta", "weight of the commitment loss")
estimator_option = SharedOption(
    "estimator", "straight-through", one_of(*ESTIMATORS), "--gradient",
    "how the gradient passes the choice of code: straight-through (copied onto z_e) or rotation (the rotation trick: "
    "rotated and rescaled from z_q's direction onto z_e's)")


def code_dim_of(config, hidden_size: int) -> int:
    """D of a config with a code_dim field behind an encoder of hidden_size channels: code_dim, where 0 means
    hidden_size."""
    return config.code_dim or hidden_size


def registry(bottlenecks: dict[str, type[Bottleneck]]) -> dict[str, type[Bottleneck]]:
    """The bottlenecks by name, once their Configs are known not to clash: a field name or flag two of them use must
    be one SharedOption (or a field one inherits from the other), else TypeError names both, at import."""
    for name, bottleneck in bottlenecks.items():
        if not (isinstance(bottleneck, type) and issubclass(bottleneck, Bottleneck)):
            raise TypeError(f"bottleneck {name!r} is {bottleneck!r}, not a subclass of bottleneck.Bottleneck")
    check_shared_names({name: bottleneck.Config for name, bottleneck in bottlenecks.items()})
    return bottlenecks
