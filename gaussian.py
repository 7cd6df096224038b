"""A continuous VAE's diagonal Gaussian bottleneck (Kingma and Welling, 2014), `--bottleneck gaussian`.

The encoder gives the mean and log-variance of q(z|x) = N(mean, diag(var)) at each position; training decodes
z = mean + std * eps (the reparameterisation trick, eps ~ N(0, I)), evaluation the mean. Its loss term is
kl_weight * KL(q(z|x) || N(0, I)) per pixel, the KL in nats per image: with "logits" and weight 1 that is the
negative ELBO per pixel; with MSE in [-1, 1], that of a Gaussian decoder of variance 1/2. It has no codes, so no
learned prior: its samples are z ~ N(0, I) decoded. `posterior` and `latent_prior` give q(z|x) and N(0, I) as
distributions, which evaluate.py's ELBO and importance-weighted bounds sample (vqmnist/bits_per_dim.py).
"""
import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.distributions import Normal

from bottleneck import Bottleneck, BottleneckOutput, code_dim_of, code_dim_option
from options import MAX_LOSS_WEIGHT, check_options, number, option
from pixel_distributions import IMAGE_PIXELS


@dataclass
class GaussianConfig:
    code_dim: int = code_dim_option()
    kl_weight: float = option(1.0, number(0, MAX_LOSS_WEIGHT), "--kl-weight", "gaussian: weight of KL(q(z|x) || "
                              "N(0, I)) against the reconstruction loss, per pixel")

    def __post_init__(self):
        check_options(self)


class GaussianBottleneck(Bottleneck):
    Config = GaussianConfig
    discrete = False
    rate_figure = "kl_bits"

    def __init__(self, code_dim: int, kl_weight: float = 1.0):
        super().__init__()
        self.code_dim, self.kl_weight = code_dim, kl_weight
        self.input_dim = 2 * code_dim  # a mean and a log-variance per dimension

    @classmethod
    def dims(cls, config: GaussianConfig, hidden_size: int) -> tuple[int, int]:
        code_dim = code_dim_of(config, hidden_size)
        return 2 * code_dim, code_dim

    @classmethod
    def from_config(cls, config: GaussianConfig, hidden_size: int) -> "GaussianBottleneck":
        return cls(code_dim_of(config, hidden_size), config.kl_weight)

    @staticmethod
    def mean_and_log_var(statistics: Tensor) -> tuple[Tensor, Tensor]:
        """statistics (B, 2D, H, W) -> the mean and log-variance of q(z|x), each (B, D, H, W), in float32."""
        mean, log_var = statistics.float().chunk(2, dim=1)
        return mean, log_var.clamp(-30.0, 20.0)  # keeps exp() finite while the encoder is still wild

    def posterior(self, statistics: Tensor) -> Normal:
        """q(z|x) = N(mean, diag(var)) at every element of z (B, D, H, W), from statistics (B, 2D, H, W)."""
        mean, log_var = self.mean_and_log_var(statistics)
        return Normal(mean, (0.5 * log_var).exp())

    def latent_prior(self, z: Tensor) -> Normal:
        """p(z) = N(0, I), at every element of a z shaped like `z`."""
        return Normal(torch.zeros_like(z), torch.ones_like(z))

    def forward(self, statistics: Tensor) -> BottleneckOutput:
        """statistics (B, 2D, H, W), the mean and log-variance of q(z|x) -> z (B, D, H, W) as `z_q` (sampled in
        training, the mean in evaluation), the weighted KL as the loss term "kl" and the KL in bits per image as
        the figure "kl_bits"; no codes."""
        with torch.autocast(device_type=statistics.device.type, enabled=False):
            mean, log_var = self.mean_and_log_var(statistics)
            # KL(N(mean, var) || N(0, 1)) = (mean^2 + var - 1 - log var) / 2 per dimension, summed over an image.
            kl = 0.5 * (mean.pow(2) + log_var.exp() - 1.0 - log_var).flatten(1).sum(1).mean()
            # reparameterisation trick: z = mean + std * eps, differentiable in mean and log_var.
            z = mean + (0.5 * log_var).exp() * torch.randn_like(mean) if self.training else mean
        return BottleneckOutput(z_q=z.to(statistics.dtype), codes=None,
                                losses={"kl": self.kl_weight * kl / IMAGE_PIXELS},
                                figures={"kl_bits": kl / math.log(2)})

    def sample_latents(self, shape: tuple[int, int, int], temperature: float, generator: torch.Generator) -> Tensor:
        """z ~ N(0, temperature^2 I) of shape (count, D, H, W), on the CPU."""
        count, height, width = shape
        return torch.randn(count, self.code_dim, height, width, generator=generator) * temperature
