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

from vector_quantizer import QuantizerOutput, code_counts, perplexity_from_counts


class FiniteScalarQuantizer(nn.Module):
    def __init__(self, levels: tuple[int, ...]):
        super().__init__()
        self.num_embeddings = math.prod(levels)
        self.embedding_dim = len(levels)
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

    def bound(self, z: Tensor) -> Tensor:
        """z (B, d, H, W) -> values whose rounding gives L_i integers per dimension, -(L_i // 2) .. (L_i - 1) // 2."""
        return torch.tanh(z + self.shift) * self.half_range - self.offset

    def forward(self, z_e: Tensor) -> QuantizerOutput:
        # Bounding and rounding in fp32 even under autocast: bf16 cannot hold the levels' boundaries exactly.
        with torch.autocast(device_type=z_e.device.type, enabled=False):
            bounded = self.bound(z_e.float())  # (B, d, H, W)
            rounded = bounded.round()
            # straight-through estimator: the forward pass uses the rounded value, the backward pass the bounded one.
            quantized = bounded + (rounded - bounded).detach()
            z_q = quantized / self.half_width  # in [-1, 1]
            digits = (rounded + self.half_width).long()  # (B, d, H, W), in 0 .. L_i - 1
            indices = (digits * self.basis).sum(1)  # (B, H, W)
        zero = z_e.new_zeros((), dtype=torch.float32)
        return QuantizerOutput(z_q=z_q.to(z_e.dtype), indices=indices, codebook_loss=zero, commitment_loss=zero,
                               perplexity=perplexity_from_counts(code_counts(indices, self.num_embeddings)))

    def embed(self, indices: Tensor) -> Tensor:
        """Code vectors of an index grid: indices (B, H, W) -> z_q (B, d, H, W), each value in [-1, 1]."""
        digits = indices.unsqueeze(1) // self.basis % self.levels
        return (digits - self.half_width) / self.half_width

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
