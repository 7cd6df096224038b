"""Vector quantisation layer of the VQ-VAE (van den Oord et al., 2017, "Neural Discrete Representation Learning").

Each encoder output vector z_e is replaced by its nearest codebook vector e_k. Gradients pass the
non-differentiable argmin with the straight-through estimator, and the encoder is kept close to its codes by the
commitment loss beta * ||z_e - sg[e]||^2. The codebook itself learns in one of two ways:
- "loss": by gradient descent on the codebook loss ||sg[z_e] - e||^2 (the paper's main text);
- "ema": as exponential moving averages of the counts and sums of the vectors assigned to each code, with
  Laplace smoothing of the counts (the paper's appendix; Sonnet's VectorQuantizerEMA).
Options that keep the whole codebook in use: initialising the codes from the first batch of encoder outputs
(random picks or k-means++ seeding) instead of a tiny uniform init, and restarting a code whose moving-average
use falls below a threshold onto a random encoder output of the current batch. With `cosine`, encoder outputs
and codes are L2-normalised, so the nearest code is the one with the highest cosine similarity.

Under torch.distributed (torchrun), the codebook stays identical on every process: the counts and sums behind
the moving averages are added up over all processes every step, so they are those of the global batch (as if
one process had taken all of it), and the initial codes and restart candidates come from process 0's batch,
broadcast to the others.
"""
from dataclasses import dataclass, fields
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from bottleneck import (Bottleneck, BottleneckOutput, beta_option, code_counts, code_dim_of, code_dim_option,
                        estimator_option, num_embeddings_option, perplexity_from_counts)
from nearest_code import nearest_codes, pass_gradient, search_cost
from options import MAX_LOSS_WEIGHT, SWITCH, UNIT_INTERVAL, StepCost, check_options, number, one_of, option

CODEBOOK_UPDATES = ("ema", "loss")
CODEBOOK_INITS = ("kmeans++", "random", "uniform")


@dataclass
class VQConfig:
    """The VQ's settings, each with its vqvae.py flag."""

    num_embeddings: int = num_embeddings_option()
    code_dim: int = code_dim_option()
    codebook_update: str = option("ema", one_of(*CODEBOOK_UPDATES), "--codebook", "how the codes learn: ema (moving "
                                  "averages of their assigned vectors) or loss (codebook loss and Adam, as the "
                                  "reference)")
    ema_decay: float = option(0.95, UNIT_INTERVAL, "--decay", "decay of the EMA codebook and of the per-code use counts")
    codebook_init: str = option("kmeans++", one_of(*CODEBOOK_INITS), "--init", "codebook initialisation: kmeans++ or "
                                "random picks from the first batch's encoder outputs, or the reference's tiny "
                                "uniform values")
    restart_threshold: float = option(3.0, number(0, MAX_LOSS_WEIGHT), "--restart-threshold", "a code whose "
                                      "moving-average use per batch falls below this moves onto a random encoder "
                                      "output of the batch; 0 never restarts")
    cosine: bool = option(False, SWITCH, "--cosine", "L2-normalise encoder outputs and codes")
    beta: float = beta_option()
    estimator: str = estimator_option()

    def __post_init__(self):
        check_options(self)


# The settings of a VectorQuantizer built without them: VQConfig's defaults, those `--bottleneck vq` trains with.
DEFAULTS = VQConfig()


def world_size() -> int:
    """The processes of the run: several under torchrun, whose codebooks must stay identical; else 1."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def sum_over_processes(tensor: Tensor) -> Tensor:
    """The sum of tensor over all processes, in place: the global batch's counts and sums."""
    if world_size() > 1:
        dist.all_reduce(tensor)
    return tensor


def from_process_zero(tensor: Tensor) -> Tensor:
    """Process 0's value of tensor, in place, on every process: initial codes and restart candidates."""
    if world_size() > 1:
        dist.broadcast(tensor, src=0)
    return tensor


class Assignment(NamedTuple):
    indices: Tensor  # (N,) int64 the index of each row's nearest code
    vectors: Tensor  # (N, D) those codes' vectors, with the codebook's gradient (the codebook loss trains them)
    counts: Tensor  # (K,) int64 how often each code was chosen


def kmeans_plus_plus(points: Tensor, count: int) -> Tensor:
    """`count` rows of points (N, D) chosen by k-means++ seeding (Arthur and Vassilvitskii, 2007): each next
    centre is drawn with probability proportional to its squared distance from the nearest centre so far."""
    centres = points.new_empty(count, points.shape[1])
    centres[0] = points[torch.randint(len(points), (), device=points.device)]
    nearest = (points - centres[0]).pow(2).sum(1)  # (N,) squared distance to the nearest centre so far
    for i in range(1, count):
        # The floor keeps the draw defined when every point already sits on a centre (N <= count, duplicates).
        chosen = torch.multinomial(nearest.clamp(min=1e-12), 1)
        centres[i] = points[chosen[0]]
        nearest = torch.minimum(nearest, (points - centres[i]).pow(2).sum(1))
    return centres


class VectorQuantizer(Bottleneck):
    """The VQ bottleneck (`--bottleneck vq`, the default). z_e (B, D, H, W) -> BottleneckOutput with codes (B, H, W),
    the loss terms "codebook" (with codebook_update "loss" only: an EMA codebook learns from no loss) and
    "commitment", the batch's "perplexity"; `epoch_figures` gives the "restarts"."""

    Config = VQConfig
    nonnegative_buffers = ("cluster_size",)  # moving averages of counts: checked on every load

    def __init__(self, num_embeddings: int, code_dim: int, beta: float = DEFAULTS.beta,
                 codebook_update: str = DEFAULTS.codebook_update, ema_decay: float = DEFAULTS.ema_decay,
                 epsilon: float = 1e-5, codebook_init: str = DEFAULTS.codebook_init,
                 restart_threshold: float = DEFAULTS.restart_threshold, cosine: bool = DEFAULTS.cosine,
                 estimator: str = DEFAULTS.estimator):
        """K = num_embeddings codes of D = code_dim; the other settings are VQConfig's fields of the same names
        (checked there), with its defaults; epsilon is the EMA's Laplace smoothing."""
        super().__init__()
        self.num_embeddings = num_embeddings
        self.input_dim = self.code_dim = code_dim
        self.beta = beta
        self.codebook_update = codebook_update
        self.decay = ema_decay
        self.epsilon = epsilon
        self.init = codebook_init
        self.restart_threshold = restart_threshold
        self.cosine = cosine
        self.estimator = estimator
        self.embedding = nn.Embedding(num_embeddings, code_dim)
        self.embedding.weight.data.uniform_(-1.0 / num_embeddings, 1.0 / num_embeddings)
        # With EMA the codebook is set from the moving averages below, never by the optimizer.
        self.embedding.weight.requires_grad_(codebook_update == "loss")
        # Buffers, so they live in the checkpoint and a resumed run continues them.
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("cluster_size", torch.zeros(num_embeddings))  # EMA of each code's count per batch
        self.register_buffer("embed_sum", torch.zeros(num_embeddings, code_dim))  # EMA of its vectors' sum
        # Codes restarted since the training loop last read and reset it; not persistent, so that checkpoints of
        # before it existed still load.
        self.register_buffer("restarts", torch.zeros((), dtype=torch.long), persistent=False)
        # A Python copy of `initialized`, so the training step does not read a device tensor back to the host.
        self.needs_init = True
        self.register_load_state_dict_post_hook(
            lambda module, _: setattr(module, "needs_init", not bool(module.initialized)))

    @classmethod
    def from_config(cls, config: VQConfig, hidden_size: int) -> "VectorQuantizer":
        settings = {item.name: getattr(config, item.name) for item in fields(VQConfig) if item.name != "code_dim"}
        return cls(code_dim=code_dim_of(config, hidden_size), **settings)

    def step_cost(self, positions: int) -> StepCost:
        """The nearest-code search; k-means++ seeding, on the first step, costs as much again (K passes over the
        rows)."""
        search = search_cost(positions, self.num_embeddings, self.code_dim)
        return StepCost(search.values, search.operations * (2 if self.init == "kmeans++" else 1))

    def epoch_figures(self) -> dict[str, float]:
        """{"restarts": the codes restarted since the last call}, which resets the count."""
        restarts = int(self.restarts)
        self.restarts.zero_()
        return {"restarts": restarts}

    def codebook(self) -> Tensor:
        """The K codes (K, D) as used: the embedding's rows, L2-normalised with `cosine`."""
        weight = self.embedding.weight
        return F.normalize(weight, dim=1) if self.cosine else weight

    def nearest_codes(self, flat: Tensor) -> Tensor:
        """Index of the nearest code for each row of flat (N, D), by Euclidean distance: (N,) int64."""
        return nearest_codes(flat, self.codebook())

    def embed(self, codes: Tensor) -> Tensor:
        """Code vectors of an index grid: codes (B, H, W) -> z_q (B, D, H, W)."""
        return F.embedding(codes, self.codebook()).permute(0, 3, 1, 2).contiguous()

    @torch.no_grad()
    def set_codebook(self, codes: Tensor, count: float) -> None:
        """Make codes (K, D) the codebook, each with moving-average count `count`, and mark it initialised."""
        self.embedding.weight.copy_(codes)
        self.cluster_size.fill_(count)
        self.embed_sum.copy_(codes * count)
        self.initialized.fill_(True)
        self.needs_init = False

    @torch.no_grad()
    def initialize_codebook(self, flat: Tensor) -> None:
        """Place the codes on encoder outputs flat (N, D) of the first training batch (or keep the uniform init),
        and start every code's moving-average count at a fair share N / K, so none counts as dead at once."""
        if self.init == "kmeans++":
            codes = kmeans_plus_plus(flat, self.num_embeddings)
        elif self.init == "random":
            picks = torch.randperm(len(flat), device=flat.device)[:self.num_embeddings]
            if len(picks) < self.num_embeddings:  # fewer vectors than codes: draw with replacement
                picks = torch.randint(len(flat), (self.num_embeddings,), device=flat.device)
            codes = flat[picks]
        else:
            codes = self.embedding.weight.detach().clone()
        self.set_codebook(from_process_zero(codes.contiguous()), len(flat) * world_size() / self.num_embeddings)

    @torch.no_grad()
    def update_codebook(self, flat: Tensor, indices: Tensor, counts: Tensor) -> None:
        """One training step's codebook update from the batch's encoder outputs flat (N, D) and their codes."""
        decay = self.decay
        # Added up over processes: every process then takes the same step, that of the global batch.
        counts = sum_over_processes(counts.to(self.cluster_size.dtype))
        self.cluster_size.mul_(decay).add_(counts, alpha=1 - decay)
        weight = self.embedding.weight
        if self.codebook_update == "ema":
            sums = torch.zeros_like(self.embed_sum).index_add_(0, indices, flat.to(self.embed_sum.dtype))
            self.embed_sum.mul_(decay).add_(sum_over_processes(sums), alpha=1 - decay)
            # Laplace smoothing: a code with a (near) zero count is divided by epsilon-sized counts, not by zero.
            total = self.cluster_size.sum()
            smoothed = (self.cluster_size + self.epsilon) / (total + self.num_embeddings * self.epsilon) * total
            weight.copy_(self.embed_sum / smoothed.unsqueeze(1))
        if self.restart_threshold > 0:
            # Every code gets a candidate and only the dead ones take it: no host sync to count them.
            dead = (self.cluster_size < self.restart_threshold).unsqueeze(1)  # (K, 1)
            self.restarts += dead.sum()
            candidates = from_process_zero(flat[torch.randint(len(flat), (self.num_embeddings,), device=flat.device)])
            weight.copy_(torch.where(dead, candidates.to(weight.dtype), weight))
            fair_share = len(flat) * world_size() / self.num_embeddings
            self.cluster_size.copy_(torch.where(dead.squeeze(1), fair_share, self.cluster_size))
            self.embed_sum.copy_(torch.where(dead, weight * fair_share, self.embed_sum))

    def assign(self, flat: Tensor) -> "Assignment":
        """The nearest codes of the rows of flat (N, D), fp32 without gradient. In training, the first call places
        the codebook on them and every call then updates it: after the codes are taken, so that this step's output
        uses the codes its indices were chosen from."""
        if self.training and self.needs_init:
            self.initialize_codebook(flat)
        indices = self.nearest_codes(flat)
        vectors = F.embedding(indices, self.codebook())
        counts = code_counts(indices, self.num_embeddings)
        if self.training:
            self.update_codebook(flat, indices, counts)
        return Assignment(indices, vectors, counts)

    def forward(self, z_e: Tensor) -> BottleneckOutput:
        batch, dim, height, width = z_e.shape
        # z_e (B, D, H, W) -> flat (B*H*W, D) -> indices (B*H*W,)
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, dim)
        if self.cosine:
            flat = F.normalize(flat, dim=1)
            z_e = flat.view(batch, height, width, dim).permute(0, 3, 1, 2)
        # The codebook's own computations (init, search, updates) take no gradient and run in fp32.
        assignment = self.assign(flat.detach().float())
        # vectors (B*H*W, D) -> code vectors (B, D, H, W), fp32
        vectors = assignment.vectors.view(batch, height, width, dim).permute(0, 3, 1, 2).contiguous()
        z_q = vectors.to(z_e.dtype)
        # An EMA codebook is not the optimizer's: its codebook loss would train nothing, only add to the loss logged.
        losses = {"codebook": F.mse_loss(z_q, z_e.detach())} if self.codebook_update == "loss" else {}
        losses["commitment"] = self.beta * F.mse_loss(z_e, z_q.detach())
        # In training, the straight-through estimator or the rotation trick; in eval, the codes' vectors themselves,
        # which the sum z_e + (z_q - z_e) would round away from (in bf16, visibly).
        z_q = pass_gradient(z_e, z_q, self.estimator) if self.training else vectors.detach()
        return BottleneckOutput(z_q=z_q, codes=assignment.indices.view(batch, height, width), losses=losses,
                                figures={"perplexity": perplexity_from_counts(assignment.counts)})
