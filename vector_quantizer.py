"""Vector quantisation layer of the VQ-VAE (van den Oord et al., 2017, "Neural Discrete Representation Learning").

Each encoder output vector z_e is replaced by its nearest codebook vector e_k. Gradients pass the
non-differentiable argmin with the straight-through estimator; the codebook learns from the codebook loss
||sg[z_e] - e||^2 and the encoder is kept close to its codes by the commitment loss beta * ||z_e - sg[e]||^2.
"""
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class QuantizerOutput(NamedTuple):
    z_q: Tensor  # (B, D, H, W) quantized vectors, carrying the straight-through gradient to z_e
    indices: Tensor  # (B, H, W) int64 code index of every position
    codebook_loss: Tensor  # ||sg[z_e] - e||^2, trains the codebook only
    commitment_loss: Tensor  # beta * ||z_e - sg[e]||^2, trains the encoder only
    perplexity: Tensor  # exp(entropy of the code usage in this batch), in [1, K]


def perplexity_from_counts(counts: Tensor) -> Tensor:
    """exp(H(p)) of the code distribution p = counts / counts.sum(): 1 if one code is used, K if all K equally."""
    probabilities = counts.double() / counts.sum().clamp(min=1)
    entropy = -torch.special.xlogy(probabilities, probabilities).sum()
    return entropy.exp().float()


class VectorQuantizer(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int, beta: float):
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.beta = beta
        self.embedding = nn.Embedding(num_embeddings, embedding_dim)
        self.embedding.weight.data.uniform_(-1.0 / num_embeddings, 1.0 / num_embeddings)

    def nearest_codes(self, flat: Tensor) -> Tensor:
        """Index of the nearest code for each row of flat (N, D), by Euclidean distance."""
        # Distances in fp32 even under autocast: in bf16 the near-ties between codes would round to the same value.
        with torch.autocast(device_type=flat.device.type, enabled=False):
            flat = flat.float()
            codebook = self.embedding.weight.float()
            # ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2 as one fused matrix product: (N, K), never (N, K, D).
            squared_norms = flat.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1)
            distances = torch.addmm(squared_norms, flat, codebook.t(), beta=1.0, alpha=-2.0)
            return distances.argmin(dim=1)

    def embed(self, indices: Tensor) -> Tensor:
        """Code vectors of an index grid: indices (B, H, W) -> z_q (B, D, H, W)."""
        return self.embedding(indices).permute(0, 3, 1, 2).contiguous()

    def forward(self, z_e: Tensor) -> QuantizerOutput:
        batch, dim, height, width = z_e.shape
        # z_e (B, D, H, W) -> flat (B*H*W, D) -> indices (B*H*W,)
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, dim)
        indices = self.nearest_codes(flat.detach())
        z_q = self.embed(indices.view(batch, height, width)).to(z_e.dtype)

        codebook_loss = F.mse_loss(z_q, z_e.detach())
        commitment_loss = self.beta * F.mse_loss(z_e, z_q.detach())
        # straight-through estimator: the forward pass uses z_q, the backward pass copies the gradient to z_e.
        z_q = z_e + (z_q - z_e).detach()

        counts = torch.bincount(indices, minlength=self.num_embeddings)
        return QuantizerOutput(
            z_q=z_q,
            indices=indices.view(batch, height, width),
            codebook_loss=codebook_loss,
            commitment_loss=commitment_loss,
            perplexity=perplexity_from_counts(counts),
        )
