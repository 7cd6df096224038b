"""Finite scalar quantisation, `--bottleneck fsq` (Mentzer et al., 2023, "Finite Scalar Quantization: VQ-VAE Made
Simple").

Each of the d = len(levels) dimensions of z_e is squashed into a bounded range and rounded to one of L_i levels, with
the straight-through estimator. The codes are the points of that fixed grid, K = prod(L_i) of them: nothing to learn,
no codebook or commitment loss, no dead code to restart. Each code's index is its digits in mixed radix.
"""
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from bottleneck import Bottleneck, BottleneckOutput, code_counts, perplexity_from_counts
from options import MAX_CODES, Rule, check_options, option


def levels_list(text: str) -> tuple[int, ...]:
    """Comma-separated integers such as "8,8,8"; ValueError saying so otherwise."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"expected comma-separated integers such as 8,8,8, got {text!r}") from None


def levels_problem(levels: tuple) -> str | None:
    """What is wrong with the levels of finite scalar quantisation, or None: integers >= 2, at most MAX_CODES codes."""
    if not levels or not all(type(level) is int and level >= 2 for level in levels):
        return "integers >= 2"
    if math.prod(levels) > MAX_CODES:
        return (f"levels whose product, K, is at most {MAX_CODES:,} (these make {math.prod(levels):,} codes): give "
                "fewer or smaller levels")
    return None


@dataclass
class FSQConfig:
    fsq_levels: tuple[int, ...] = option((8, 8, 8), Rule(tuple, parse=levels_list, problem=levels_problem),
                                         "--fsq-levels", "fsq: levels of each code dimension; D is their number, K "
                                         "their product")

    def __post_init__(self):
        if isinstance(self.fsq_levels, list):  # a checkpoint hands back a list
            self.fsq_levels = tuple(self.fsq_levels)
        check_options(self)


class FiniteScalarQuantizer(Bottleneck):
    Config = FSQConfig

    def __init__(self, levels: tuple[int, ...]):
        super().__init__()
        self.num_embeddings = math.prod(levels)
        self.input_dim = self.code_dim = len(levels)
        # Each dimension's constants, shaped (1, d, 1, 1) against z (B, d, H, W). Not persistent: they follow from
        # the levels, which the checkpoint's config stores.
        per_dim = torch.tensor(levels, dtype=torch.float32).view(1, -1, 1, 1)
        # A hair over (L - 1) / 2: the outer levels stay reachable, and an even L's shift finite (L = 2 included).
        half_range = (per_dim - 1) * (1 + 1e-3) / 2
        # An even L has no middle level: tanh is shifted by half a level so that z = 0 still lands on level 0.
        offset = torch.where(per_dim % 2 == 0, 0.5, 0.0)
        # The index of digits (c_1, ..., c_d) is sum_i c_i * prod_{j<i} L_j.
        basis = torch.tensor([math.prod(levels[:i]) for i in range(len(levels))]).view(1, -1, 1, 1)
        for name, value in (("levels", per_dim.long()), ("half_width", torch.div(per_dim, 2, rounding_mode="floor")),
                            ("half_range", half_range), ("offset", offset),
                            ("shift", torch.atanh(offset / half_range)), ("basis", basis)):
            self.register_buffer(name, value, persistent=False)

    @classmethod
    def dims(cls, config: FSQConfig, hidden_size: int) -> tuple[int, int]:
        return len(config.fsq_levels), len(config.fsq_levels)

    @classmethod
    def from_config(cls, config: FSQConfig, hidden_size: int) -> "FiniteScalarQuantizer":
        return cls(config.fsq_levels)

    def bound(self, z: Tensor) -> Tensor:
        """z (B, d, H, W) -> values whose rounding gives L_i integers per dimension, -(L_i // 2) .. (L_i - 1) // 2."""
        return torch.tanh(z + self.shift) * self.half_range - self.offset

    def forward(self, z_e: Tensor) -> BottleneckOutput:
        # Bounding and rounding in fp32 even under autocast: bf16 cannot hold the levels' boundaries exactly.
        with torch.autocast(device_type=z_e.device.type, enabled=False):
            bounded = self.bound(z_e.float())  # (B, d, H, W)
            rounded = bounded.round()
            # straight-through estimator: the forward pass uses the rounded value, the backward pass the bounded one.
            quantized = bounded + (rounded - bounded).detach()
            z_q = quantized / self.half_width  # in [-1, 1]
            digits = (rounded + self.half_width).long()  # (B, d, H, W), in 0 .. L_i - 1
            indices = (digits * self.basis).sum(1)  # (B, H, W)
        return BottleneckOutput(z_q=z_q.to(z_e.dtype), codes=indices, losses={},
                                figures={"perplexity": perplexity_from_counts(code_counts(indices,
                                                                                          self.num_embeddings))})

    def embed(self, codes: Tensor) -> Tensor:
        """Code vectors of an index grid: codes (B, H, W) -> z_q (B, d, H, W), each value in [-1, 1]."""
        digits = codes.unsqueeze(1) // self.basis % self.levels
        return (digits - self.half_width) / self.half_width

    def codebook(self) -> Tensor:
        """All K codes (K, d), row k being the code of index k."""
        return self.embed(torch.arange(self.num_embeddings, device=self.basis.device).view(-1, 1, 1))[:, :, 0, 0]
