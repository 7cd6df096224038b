"""A toy bottleneck in one file, as docs/code.md says to write one: each dimension of z_e becomes its sign."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from bottleneck import Bottleneck, BottleneckOutput, code_counts, perplexity_from_counts
from options import check_options, integer, number, option


@dataclass
class SignConfig:
    sign_bits: int = option(4, integer(1, 12), "--sign-bits",
                            "sign: dimensions, each quantised to its sign; K = 2^bits")
    sign_commitment: float = option(0.1, number(0, 10), "--sign-commitment", "sign: weight of the pull towards +-1")

    def __post_init__(self):
        check_options(self)


class SignQuantizer(Bottleneck):
    """Each dimension of z_e becomes its sign, +1 or -1, with the straight-through estimator; the code is the
    dimensions' bits read as a binary number."""

    Config = SignConfig

    def __init__(self, bits: int, commitment: float):
        super().__init__()
        self.input_dim = self.code_dim = bits
        self.num_embeddings = 2 ** bits
        self.commitment = commitment
        self.register_buffer("powers", 2 ** torch.arange(bits).view(1, -1, 1, 1), persistent=False)

    @classmethod
    def dims(cls, config: SignConfig, hidden_size: int) -> tuple[int, int]:
        return config.sign_bits, config.sign_bits

    @classmethod
    def from_config(cls, config: SignConfig, hidden_size: int) -> "SignQuantizer":
        return cls(config.sign_bits, config.sign_commitment)

    def forward(self, z_e: Tensor) -> BottleneckOutput:
        signs = torch.where(z_e >= 0, 1.0, -1.0).to(z_e.dtype)
        codes = ((signs > 0).long() * self.powers).sum(1)  # (B, bits, H, W) -> (B, H, W)
        counts = code_counts(codes, self.num_embeddings)
        return BottleneckOutput(z_q=z_e + (signs - z_e).detach(), codes=codes,
                                losses={"commitment": self.commitment * F.mse_loss(z_e.float(), signs.float())},
                                figures={"perplexity": perplexity_from_counts(counts)})

    def embed(self, codes: Tensor) -> Tensor:
        return torch.where(codes.unsqueeze(1) // self.powers % 2 == 1, 1.0, -1.0)
