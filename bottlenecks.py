"""The bottlenecks beside vector quantisation: finite scalar quantisation, and a diagonal Gaussian (continuous).

Both return a `QuantizerOutput`, as the VectorQuantizer does, so the autoencoder and its training loop treat the
three alike:
- FiniteScalarQuantizer (Mentzer et al., 2023, "Finite Scalar Quantization: VQ-VAE Made Simple"): each of the
  d = len(levels) dimensions of z_e is squashed into a bounded range and rounded to one of L_i levels, with the
  straight-through estimator. The codes are the points of that fixed grid, K = prod(L_i) of them: nothing to learn,
  no codebook or commitment loss, no dead code to restart. Each code's index is its digits in mixed radix.
- GaussianBottleneck: the encoder gives the mean and log-variance of q(z|x) = N(mean, diag(var)) at each position;
  training decodes z = mean + std * eps (the reparameterisation trick, eps ~ N(0, I)), evaluation the mean, and
  the output's `kl` is KL(q(z|x) || N(0, I)) in nats per image, the rate term of the negative ELBO.
"""
import math

import torch
from torch import Tensor, nn

from vector_quantizer import QuantizerOutput, perplexity_from_counts


class FiniteScalarQuantizer(nn.Module):
    def __init__(self, levels: tuple[int, ...]):
        super().__init__()
        self.num_embeddings = math.prod(levels)
        self.embedding_dim = len(levels)
        levels_tensor = torch.tensor(levels, dtype=torch.float32)
        # The index of digits (c_1, ..., c_d) is sum_i c_i * prod_{j<i} L_j.
        basis = torch.tensor([math.prod(levels[:i]) for i in range(len(levels))], dtype=torch.long)
        # Not persistent: they follow from the config, which the checkpoint stores.
        self.register_buffer("levels", levels_tensor, persistent=False)
        self.register_buffer("basis", basis, persistent=False)

    def _per_dim(self, tensor: Tensor) -> Tensor:
        return tensor.view(1, -1, 1, 1)  # (d,) -> (1, d, 1, 1), against z (B, d, H, W)

    def bound(self, z: Tensor) -> Tensor:
        """z (B, d, H, W) -> values whose rounding gives L_i integers per dimension, -(L_i // 2) .. (L_i - 1) // 2.
        An even L_i has no middle level: tanh is shifted by half a level so that z = 0 still lands on level 0."""
        levels = self._per_dim(self.levels)
        # A hair over (L - 1) / 2: the outer levels stay reachable, and an even L's shift finite (L = 2 included).
        half_range = (levels - 1) * (1 + 1e-3) / 2
        offset = torch.where(levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half_range)
        return torch.tanh(z + shift) * half_range - offset

    def forward(self, z_e: Tensor) -> QuantizerOutput:
        # Bounding and rounding in fp32 even under autocast: bf16 cannot hold the levels' boundaries exactly.
        with torch.autocast(device_type=z_e.device.type, enabled=False):
            bounded = self.bound(z_e.float())  # (B, d, H, W)
            rounded = bounded.round()
            # straight-through estimator: the forward pass uses the rounded value, the backward pass the bounded one.
            quantized = bounded + (rounded - bounded).detach()
            half_width = self._per_dim(torch.div(self.levels, 2, rounding_mode="floor"))
            z_q = quantized / half_width  # in [-1, 1]
            digits = (rounded + half_width).long()  # (B, d, H, W), in 0 .. L_i - 1
            indices = (digits * self._per_dim(self.basis)).sum(1)  # (B, H, W)
        counts = torch.zeros(self.num_embeddings, dtype=torch.long, device=z_e.device).index_add_(
            0, indices.flatten(), torch.ones_like(indices.flatten()))
        zero = z_e.new_zeros((), dtype=torch.float32)
        return QuantizerOutput(z_q=z_q.to(z_e.dtype), indices=indices, codebook_loss=zero, commitment_loss=zero,
                               perplexity=perplexity_from_counts(counts))

    def embed(self, indices: Tensor) -> Tensor:
        """Code vectors of an index grid: indices (B, H, W) -> z_q (B, d, H, W), each value in [-1, 1]."""
        digits = indices.unsqueeze(1) // self._per_dim(self.basis) % self._per_dim(self.levels).long()
        half_width = self._per_dim(torch.div(self.levels, 2, rounding_mode="floor"))
        return (digits - half_width) / half_width

    def codebook(self) -> Tensor:
        """All K codes (K, d), row k being the code of index k."""
        return self.embed(torch.arange(self.num_embeddings, device=self.basis.device).view(-1, 1, 1))[:, :, 0, 0]


class GaussianBottleneck(nn.Module):
    def forward(self, statistics: Tensor) -> QuantizerOutput:
        """statistics (B, 2D, H, W), the mean and log-variance of q(z|x) -> z (B, D, H, W) as `z_q` (sampled in
        training, the mean in evaluation) and its KL from N(0, I) in nats per image as `kl`; no indices."""
        with torch.autocast(device_type=statistics.device.type, enabled=False):
            mean, log_var = statistics.float().chunk(2, dim=1)
            log_var = log_var.clamp(-30.0, 20.0)  # keeps exp() finite while the encoder is still wild
            # KL(N(mean, var) || N(0, 1)) = (mean^2 + var - 1 - log var) / 2 per dimension, summed over an image.
            kl = 0.5 * (mean.pow(2) + log_var.exp() - 1.0 - log_var).flatten(1).sum(1).mean()
            # reparameterisation trick: z = mean + std * eps, differentiable in mean and log_var.
            z = mean + (0.5 * log_var).exp() * torch.randn_like(mean) if self.training else mean
        zero = statistics.new_zeros((), dtype=torch.float32)
        return QuantizerOutput(z_q=z.to(statistics.dtype), indices=None, codebook_loss=zero, commitment_loss=zero,
                               perplexity=zero, kl=kl)
