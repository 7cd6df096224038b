"""Residual vector quantisation, `--bottleneck rvq`: a stack of VQ codebooks, each quantising what the ones before it
left (Zeghidour et al., 2021, "SoundStream"; Lee et al., 2022, "Autoregressive Image Generation using Residual
Quantization").

Level 1 picks the code nearest to z_e, level 2 the code nearest to the residual z_e - e_1, and so on; z_q is the sum
e_1 + ... + e_L. Each level is a `VectorQuantizer` with the VQ's settings (its EMA or codebook loss, k-means++ start,
restarts), so the flags of `--bottleneck vq` apply to each level. Each position then has L codes, one a level, each
from its level's own K: the code grid is (L, 7, 7), and the prior models all L codes of every position.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bottleneck import Bottleneck, BottleneckOutput, code_dim_of, perplexity_from_counts
from nearest_code import pass_gradient
from options import MAX_CODES, MAX_CODE_LEVELS, StepCost, integer, option
from vector_quantizer import VQConfig, VectorQuantizer


@dataclass
class ResidualVQConfig(VQConfig):
    """The VQ's settings, which each level takes, and the number of levels."""

    depth: int = option(2, integer(2, MAX_CODE_LEVELS), "--depth", "rvq: codebooks in the stack, each of --k codes "
                        f"quantising what those before it left, 2 to {MAX_CODE_LEVELS}")

    def __post_init__(self):
        super().__post_init__()
        if self.depth * self.num_embeddings > MAX_CODES:
            raise ValueError(f"depth x num_embeddings is {self.depth * self.num_embeddings:,} codes, more than "
                             f"{MAX_CODES:,}")
        if self.cosine:
            raise ValueError("cosine must be false: a residual is not a direction, so its levels cannot be normalised")


class ResidualVectorQuantizer(Bottleneck):
    """The residual VQ bottleneck. z_e (B, D, H, W) -> BottleneckOutput with codes (B, L, H, W), level l's indices
    into its own K codes; the loss terms "codebook" (each level's against the residual it quantised, summed; with
    codebook_update "loss" only, as the VQ's) and "commitment" (beta times z_e's against the sum of its codes); the
    "perplexity" of the L * K codes."""

    Config = ResidualVQConfig

    def __init__(self, config: ResidualVQConfig, code_dim: int):
        super().__init__()
        self.num_embeddings, self.code_levels = config.num_embeddings, config.depth
        self.input_dim = self.code_dim = code_dim
        self.beta, self.estimator = config.beta, config.estimator
        self.codebook_update = config.codebook_update
        # Each level the VQ of the same settings; its estimator is unused, since the gradient passes the sum below.
        self.levels = nn.ModuleList(VectorQuantizer.from_config(config, code_dim) for _ in range(config.depth))

    @classmethod
    def from_config(cls, config: ResidualVQConfig, hidden_size: int) -> "ResidualVectorQuantizer":
        return cls(config, code_dim_of(config, hidden_size))

    def epoch_figures(self) -> dict[str, float]:
        """{"restarts": the codes restarted on every level since the last call}, which resets the counts."""
        return {"restarts": sum(level.epoch_figures()["restarts"] for level in self.levels)}

    def step_cost(self, positions: int) -> StepCost:
        """Each level's, one after the other."""
        costs = [level.step_cost(positions) for level in self.levels]
        return StepCost(max(cost.values for cost in costs), sum(cost.operations for cost in costs))

    def embed(self, codes: Tensor) -> Tensor:
        """Code vectors of a grid of levels: codes (B, L, H, W) -> z_q (B, D, H, W), the sum of each level's code."""
        return sum(level.embed(codes[:, index]) for index, level in enumerate(self.levels))

    def forward(self, z_e: Tensor) -> BottleneckOutput:
        batch, dim, height, width = z_e.shape
        # z_e (B, D, H, W) -> flat (B*H*W, D); each level: residual (B*H*W, D) -> indices (B*H*W,)
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, dim)
        # The codebooks' own computations (init, search, updates) take no gradient and run in fp32.
        residual = flat.detach().float()
        quantized = torch.zeros_like(residual)
        # EMA codebooks are not the optimizer's: their codebook loss would train nothing, only add to the loss logged.
        trained_by_loss = self.codebook_update == "loss"
        codebook_loss = torch.zeros((), device=z_e.device)
        indices, counts = [], []
        for level in self.levels:
            assignment = level.assign(residual)  # vectors (B*H*W, D), with the codebook's gradient
            if trained_by_loss:
                codebook_loss = codebook_loss + F.mse_loss(assignment.vectors, residual)
            residual = residual - assignment.vectors.detach()
            quantized = quantized + assignment.vectors
            indices.append(assignment.indices)
            counts.append(assignment.counts)
        vectors = quantized.view(batch, height, width, dim).permute(0, 3, 1, 2)  # (B, D, H, W), fp32
        z_q = vectors.to(z_e.dtype)
        commitment_loss = self.beta * F.mse_loss(z_e, z_q.detach())
        # In training, the straight-through estimator or the rotation trick; in eval, the codes' vectors (embed's).
        z_q = pass_gradient(z_e, z_q, self.estimator) if self.training else vectors.detach().contiguous()
        # L x (B*H*W,) -> (L, B, H, W) -> codes (B, L, H, W)
        codes = torch.stack(indices).view(self.code_levels, batch, height, width).transpose(0, 1).contiguous()
        losses = {"codebook": codebook_loss} if trained_by_loss else {}
        losses["commitment"] = commitment_loss
        return BottleneckOutput(z_q=z_q, codes=codes, losses=losses,
                                figures={"perplexity": perplexity_from_counts(torch.cat(counts))})
