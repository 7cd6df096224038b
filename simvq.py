"""SimVQ, `--bottleneck simvq`: vector quantisation whose codes are one learned linear map of a frozen random basis.

Zhu et al., 2024, "Addressing Representation Collapse in Vector Quantized Models with One Linear Layer". The codebook
is C = W(B): B (K, D) is drawn once from N(0, 1/D) and never trained, W is a learned nn.Linear(D, D). The codebook
loss ||C[k] - sg[z_e]||^2 moves W, and so every code at once, not only the codes the batch chose: the whole codebook
follows the encoder, which is how the paper keeps codes from going unused, with no EMA, initialisation from data or
restarts. The choice of code, the commitment loss and the gradient estimator are the VQ's.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bottleneck import (Bottleneck, BottleneckOutput, beta_option, code_counts, code_dim_of, code_dim_option,
                        estimator_option, num_embeddings_option, perplexity_from_counts)
from nearest_code import nearest_codes, pass_gradient, search_cost
from options import StepCost, check_options


@dataclass
class SimVQConfig:
    """SimVQ's settings: the VQ's fields of the same names, so that one flag sets both."""

    num_embeddings: int = num_embeddings_option()
    code_dim: int = code_dim_option()
    beta: float = beta_option()
    estimator: str = estimator_option()

    def __post_init__(self):
        check_options(self)


class SimVQ(Bottleneck):
    """The SimVQ bottleneck. Built with K codes of dimension D, the commitment weight beta and the gradient estimator
    (one of ESTIMATORS). forward: z_e (B, D, H, W) -> BottleneckOutput with z_q (B, D, H, W), codes (B, H, W) int64,
    the loss terms "codebook" (mean of ||C[k] - sg[z_e]||^2, which trains W) and "commitment" (beta times the mean of
    ||z_e - sg[C[k]]||^2), and the batch's "perplexity". embed: codes (B, H, W) -> (B, D, H, W); codebook(): C (K, D).
    """

    Config = SimVQConfig

    def __init__(self, num_embeddings: int, code_dim: int, beta: float = 0.25, estimator: str = "straight-through"):
        super().__init__()
        self.num_embeddings = num_embeddings
        self.input_dim = self.code_dim = code_dim
        self.beta = beta
        self.estimator = estimator
        # Persistent: the basis is drawn once, and a checkpoint must give back the same codes.
        self.register_buffer("basis", torch.randn(num_embeddings, code_dim) * code_dim ** -0.5)  # (K, D)
        self.projection = nn.Linear(code_dim, code_dim)  # W, with a bias as in the authors' code

    @classmethod
    def from_config(cls, config: SimVQConfig, hidden_size: int) -> "SimVQ":
        return cls(config.num_embeddings, code_dim_of(config, hidden_size), config.beta, config.estimator)

    def codebook(self) -> Tensor:
        """The K codes C = W(B) (K, D), in fp32 even under autocast, with the gradient to W."""
        with torch.autocast(device_type=self.basis.device.type, enabled=False):
            return self.projection(self.basis.float())

    def embed(self, codes: Tensor) -> Tensor:
        """Code vectors of an index grid: codes (B, H, W) -> z_q (B, D, H, W)."""
        return F.embedding(codes, self.codebook()).permute(0, 3, 1, 2).contiguous()

    def step_cost(self, positions: int) -> StepCost:
        """The nearest-code search, and the map of the K basis vectors into the codebook."""
        search = search_cost(positions, self.num_embeddings, self.code_dim)
        return StepCost(search.values, search.operations + self.num_embeddings * self.code_dim ** 2)

    def forward(self, z_e: Tensor) -> BottleneckOutput:
        batch, dim, height, width = z_e.shape
        # Search and losses in fp32 even under autocast: bf16 would round near-ties between codes, and W's gradient.
        with torch.autocast(device_type=z_e.device.type, enabled=False):
            z_e_fp32 = z_e.float()
            codebook = self.codebook()  # (K, D)
            flat = z_e_fp32.permute(0, 2, 3, 1).reshape(-1, dim)  # (B*H*W, D)
            with torch.no_grad():
                indices = nearest_codes(flat, codebook)  # (B*H*W,)
            # Looked up in the live codebook, so that the codebook loss reaches W; by F.embedding, whose CPU backward
            # sums each code's gradient in a fixed order, where advanced indexing's adds them in the threads' order.
            quantized = F.embedding(indices, codebook).view(batch, height, width, dim).permute(0, 3, 1, 2)
            codebook_loss = F.mse_loss(quantized, z_e_fp32.detach())
            commitment_loss = self.beta * F.mse_loss(z_e_fp32, quantized.detach())
        # In training, the straight-through estimator or the rotation trick, neither letting the decoder's gradient
        # reach W; in eval, the codes' vectors themselves (embed's).
        z_q = (pass_gradient(z_e, quantized.to(z_e.dtype), self.estimator) if self.training
               else quantized.detach().contiguous())  # contiguous as embed's, so the decoder sums as it does
        return BottleneckOutput(z_q=z_q, codes=indices.view(batch, height, width),
                                losses={"codebook": codebook_loss, "commitment": commitment_loss},
                                figures={"perplexity": perplexity_from_counts(code_counts(indices,
                                                                                          self.num_embeddings))})
