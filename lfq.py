"""Lookup-free quantisation, `--bottleneck lfq`: each dimension of z_e becomes its sign, and the code is those bits.

Yu et al., 2023, "Language Model Beats Diffusion: Tokenizer is Key to Visual Generation" (MAGVIT-v2). The codes are
the K = 2^d corners of the hypercube {-1, +1}^d: nothing to learn and nothing to look up, since the nearest corner to
z is sign(z) (each dimension's distance term depends on that dimension's sign alone). z = 0 goes to -1, so that a
dimension's bit is exactly [z > 0]; the index is sum_i [z_i > 0] 2^i. The gradient passes with the straight-through
estimator. Two loss terms:
- "commitment": beta * ||z - sg[q]||^2, which holds z near its corner, as the VQ's does;
- "entropy": entropy_weight * (E[H(p(z))] - diversity * H(E[p(z)])), the paper's entropy penalty, with p(z) the
  soft assignment of z to the K codes, softmax(-||z - c_k||^2 / temperature). Lowering the first term makes each
  position confident of its code; raising the second spreads the batch over all the codes, which keeps them in use.
Under torchrun, each process's batch entropy is that of its own batch.

The soft assignment factorises over the dimensions: -||z - c||^2 = sum_i (2 z_i c_i - z_i^2 - 1), so p(z) is a product
of independent bits with P(c_i = +1) = sigmoid(4 z_i / temperature), and the per-position entropy is the sum of their
binary entropies, computed so in O(d), not O(K). The batch-mean distribution is a mixture of such products, which does
not factorise; it is computed exactly from the full (N, K) softmax, which is small at the default K = 512 but grows as
2^d; for a large d, an O(d) substitute is the sum of each dimension's batch-mean binary entropy, an upper bound of it.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from bottleneck import Bottleneck, BottleneckOutput, beta_option, code_counts, perplexity_from_counts
from options import MAX_CODES, MAX_LOSS_WEIGHT, StepCost, check_options, integer, number, option

MAX_LFQ_BITS = MAX_CODES.bit_length() - 1  # the most dimensions d whose 2^d codes stay within MAX_CODES


@dataclass
class LFQConfig:
    """LFQ's settings, each with its vqvae.py flag; beta is the VQ's field and flag (one flag sets both)."""

    lfq_bits: int = option(9, integer(1, MAX_LFQ_BITS), "--lfq-bits", "lfq: code dimensions d, each quantised to its "
                           f"sign; K = 2^d codes, d at most {MAX_LFQ_BITS}")
    beta: float = beta_option()
    entropy_weight: float = option(0.1, number(0, MAX_LOSS_WEIGHT), "--entropy-weight", "lfq: weight of the entropy "
                                   "loss, the mean entropy of each position's soft code assignment minus "
                                   "--entropy-diversity times the entropy of the batch's mean assignment")
    entropy_diversity: float = option(1.0, number(0, MAX_LOSS_WEIGHT), "--entropy-diversity", "lfq: weight of the "
                                      "batch's code entropy within the entropy loss")
    lfq_temperature: float = option(0.01, number(0, MAX_LOSS_WEIGHT, above_low=True), "--lfq-temperature", "lfq: "
                                    "temperature of the soft code assignment softmax(-||z - c||^2 / T) behind the "
                                    "entropy loss")

    def __post_init__(self):
        check_options(self)


class LookupFreeQuantizer(Bottleneck):
    """The LFQ bottleneck. Built with d bits, the commitment weight beta and the entropy loss's weight, diversity and
    temperature. forward: z_e (B, d, H, W) -> BottleneckOutput with z_q (B, d, H, W) of +-1 values, codes (B, H, W)
    int64 in [0, 2^d), the loss terms "commitment" and "entropy" (see the module docstring) and the batch's
    "perplexity". embed: codes (B, H, W) -> (B, d, H, W); codebook(): the K corners (K, d), row k that of index k;
    entropies: flat z (N, d) -> the mean per-position entropy and the batch entropy, in nats.
    """

    Config = LFQConfig

    def __init__(self, bits: int, beta: float = 0.25, entropy_weight: float = 0.1, diversity: float = 1.0,
                 temperature: float = 0.01):
        super().__init__()
        self.num_embeddings = 2 ** bits
        self.input_dim = self.code_dim = bits
        self.beta, self.entropy_weight, self.diversity, self.temperature = beta, entropy_weight, diversity, temperature
        # Dimension i is bit i of the index. Not persistent: it follows from the bits, which the config stores.
        self.register_buffer("powers", 2 ** torch.arange(bits).view(1, -1, 1, 1), persistent=False)  # (1, d, 1, 1)

    @classmethod
    def dims(cls, config: LFQConfig, hidden_size: int) -> tuple[int, int]:
        return config.lfq_bits, config.lfq_bits

    @classmethod
    def from_config(cls, config: LFQConfig, hidden_size: int) -> "LookupFreeQuantizer":
        return cls(config.lfq_bits, config.beta, config.entropy_weight, config.entropy_diversity,
                   config.lfq_temperature)

    def entropies(self, flat: Tensor) -> tuple[Tensor, Tensor]:
        """flat (N, d) fp32 -> (mean over the rows of the entropy of each row's soft assignment p to the K codes,
        entropy of the rows' mean assignment), both () in nats, with p = softmax(-||z - c_k||^2 / temperature)."""
        # Each bit is +1 with probability sigmoid(a), a = 4 z / T (module docstring); its entropy written with
        # softplus(-a) = -log sigmoid(a) stays finite, gradient included, where sigmoid(a) rounds to 0 or 1.
        bit_logits = flat * (4 / self.temperature)  # (N, d)
        per_sample = (torch.sigmoid(bit_logits) * F.softplus(-bit_logits)
                      + torch.sigmoid(-bit_logits) * F.softplus(bit_logits)).sum(1).mean()
        # -||z - c||^2 = 2 z.c - ||z||^2 - d: the last two are the same for every code of a row, so the softmax
        # leaves them out and the logits are one matrix product (scaled on the small (d, K) side, not on (N, K)).
        mean = torch.softmax(flat @ (self.codebook().t() * (2 / self.temperature)), dim=1).mean(0)  # (N, K) -> (K,)
        # The floor keeps the gradient of log finite at a code no row comes near; 0 log 0 is 0 either way.
        return per_sample, -(mean * mean.clamp(min=torch.finfo(mean.dtype).tiny).log()).sum()

    def step_cost(self, positions: int) -> StepCost:
        """The batch entropy's exact (positions, K) softmax over the K = 2^d codes."""
        size = positions * self.num_embeddings
        return StepCost(values=size, operations=size * self.code_dim)

    def forward(self, z_e: Tensor) -> BottleneckOutput:
        # In fp32 even under autocast: the entropy's softmax at temperature 0.01 needs it.
        with torch.autocast(device_type=z_e.device.type, enabled=False):
            z = z_e.float()  # (B, d, H, W)
            positive = z > 0
            quantized = positive.float() * 2 - 1  # (B, d, H, W), the nearest corner
            indices = (positive.long() * self.powers).sum(1)  # (B, H, W)
            # straight-through estimator: the forward pass uses the corner, the backward pass copies the gradient to z.
            z_q = z + (quantized - z).detach()
            commitment_loss = self.beta * F.mse_loss(z, quantized)
            per_sample, batch = self.entropies(z.permute(0, 2, 3, 1).reshape(-1, self.code_dim))
            entropy_loss = self.entropy_weight * (per_sample - self.diversity * batch)
        return BottleneckOutput(z_q=z_q.to(z_e.dtype), codes=indices,
                                losses={"commitment": commitment_loss, "entropy": entropy_loss},
                                figures={"perplexity": perplexity_from_counts(code_counts(indices,
                                                                                          self.num_embeddings))})

    def embed(self, codes: Tensor) -> Tensor:
        """Code vectors of an index grid: codes (B, H, W) -> z_q (B, d, H, W), -1 where a bit is 0 and +1 where 1."""
        bits = codes.unsqueeze(1) // self.powers % 2  # (B, d, H, W)
        return bits.float() * 2 - 1

    def codebook(self) -> Tensor:
        """All K codes (K, d), row k being the code of index k."""
        return self.embed(torch.arange(self.num_embeddings, device=self.powers.device).view(-1, 1, 1))[:, :, 0, 0]
