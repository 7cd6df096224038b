"""The prior over the autoencoder's 7x7 code grids: a small class-conditional causal transformer, its sampling and
its likelihood of the grids of an image set.

A grid with L > 1 codes a position (a residual VQ's levels, (B, L, 7, 7)) is read position by position, each
position's L codes in level order: a sequence of 49 L codes, each level's indices its own tokens.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from options import (MAX_CLASSES, MAX_CODES, MAX_CODE_LEVELS, MAX_DEPTH, MAX_GRID_SIDE, MAX_WIDTH, UNIT_INTERVAL,
                     check_options, integer, number, option)
from pixel_distributions import images_to_inputs

# Sampling defaults of generate.py and evaluate.py, and of the samples TensorBoard shows; see CodePrior.sample. The
# temperature 1, for codes and continuous latents alike, changes nothing: the prior's (guided) logits are used as they
# are, and a continuous bottleneck's latents are drawn from its own prior as it was trained (the Gaussian's N(0, I)).
SAMPLING_TEMPERATURE = 1.0
GUIDANCE = 0.75


@dataclass(frozen=True)
class Truncation:
    """Which codes a sample may draw at each position, after the guidance and the temperature: only the top_k most
    likely, and only the nucleus, the smallest set of most likely codes whose probability reaches top_p
    (generate.py's and evaluate.py's flags). The defaults keep every code."""

    top_k: int = option(0, integer(0, MAX_CODES), "--top-k",
                        "draw each code from the k most likely ones only; 0 keeps all")
    top_p: float = option(1.0, number(0, 1, above_low=True), "--top-p",
                          "nucleus sampling: draw each code from the smallest set of most likely codes whose "
                          "probability reaches p; 1 keeps all")

    def __post_init__(self):
        check_options(self)

    def describe(self) -> str:
        """", top-k K, top-p P" for each setting that truncates, for the lines that say how samples were drawn."""
        settings = (("top-k", self.top_k, 0), ("top-p", self.top_p, 1))
        return "".join(f", {name} {value}" for name, value, keeps_all in settings if value != keeps_all)

    def __call__(self, logits: Tensor) -> Tensor:
        """Logits (B, K) -> the same, -inf outside the codes that may be drawn; a tie at the k-th logit keeps both."""
        if 0 < self.top_k < logits.shape[-1]:
            kth_largest = logits.topk(self.top_k, dim=-1).values[:, -1:]  # (B, 1)
            logits = logits.masked_fill(logits < kth_largest, float("-inf"))
        if self.top_p < 1:
            ordered, order = logits.sort(dim=-1, descending=True)  # (B, K) most likely first
            probabilities = ordered.softmax(dim=-1)
            # A code is left out once the codes before it already reach top_p; the most likely one always stays.
            left_out = probabilities.cumsum(dim=-1) - probabilities >= self.top_p
            logits = logits.masked_fill(left_out.scatter(-1, order, left_out), float("-inf"))
        return logits


@dataclass
class PriorConfig:
    """The shape of the prior over code grids: all that is needed to rebuild it from a checkpoint. The first three
    fields are the autoencoder's, set from its bottleneck and code grids where the prior's task is built; num_classes
    keeps its default, MNIST's ten digits; the others are set by vqvae.py's --prior-* flags (dest prior_FIELD)."""

    num_embeddings: int = option(512, integer(1, MAX_CODES))  # K, the autoencoder's number of codes (of each level)
    grid_size: int = option(7, integer(1, MAX_GRID_SIDE))  # the code grid is grid_size x grid_size, in raster order
    levels: int = option(1, integer(1, MAX_CODE_LEVELS))  # codes a position, L
    num_classes: int = option(10, integer(1, MAX_CLASSES))  # class tokens 0..num_classes-1; num_classes: no class
    width: int = option(128, integer(1, MAX_WIDTH), "--prior-width", "width of the prior's transformer")
    num_layers: int = option(3, integer(1, MAX_DEPTH), "--prior-layers", "layers of the prior's transformer")
    num_heads: int = option(4, integer(1, MAX_WIDTH), "--prior-heads", "attention heads; must divide --prior-width")
    dropout: float = option(0.0, UNIT_INTERVAL, "--prior-dropout", "dropout in the prior")

    def __post_init__(self):
        """Refuse a shape that cannot be built (ValueError naming the field), so a bad checkpoint fails in one line."""
        check_options(self)
        if self.width % self.num_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must divide width ({self.width})")


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout: float = 0.0) -> Tensor:
    """softmax(q k^T / sqrt(d)) v: queries (B, heads, T, d), keys and values (B, heads, T', d) -> (B, heads, T, d);
    mask (T, T') is True where a query may not look. The scores and their softmax are fp32 under autocast.

    Written out rather than F.scaled_dot_product_attention: under bf16 autocast the CPU's fused attention takes
    longer than all the rest of the prior's step, and these 49 x 49 products are cheap (docs/speed.md)."""
    scores = (q @ k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5  # (B, heads, T, T')
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))
    return F.dropout(scores.softmax(dim=-1), dropout, dropout > 0).to(v.dtype) @ v


class CausalSelfAttention(nn.Module):
    def __init__(self, config: PriorConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.qkv = nn.Linear(config.width, 3 * config.width)
        self.out = nn.Linear(config.width, config.width)
        self.dropout = config.dropout
        # future[t, s]: position s comes after t, so t may not attend to it.
        length = config.grid_size ** 2 * config.levels
        self.register_buffer("future", torch.ones(length, length, dtype=torch.bool).triu(1), persistent=False)

    def forward(self, x: Tensor, cache: dict | None = None) -> Tensor:
        """x (B, T, C) -> (B, T, C). With a cache (sampling, one position at a time), the keys and values of the
        earlier positions come from it and this position's are appended, so position t sees 0..t."""
        batch, length, width = x.shape
        # (B, T, 3C) -> 3 x (B, heads, T, C / heads)
        q, k, v = self.qkv(x).view(batch, length, 3, self.num_heads, width // self.num_heads).permute(2, 0, 3, 1, 4)
        if cache is not None:  # sampling: this one query sees every key so far, so no mask is needed
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        mask = self.future[:length, :length] if cache is None else None  # causal: position t sees 0..t
        y = attention(q, k, v, mask, self.dropout if self.training else 0.0)  # (B, heads, T, C / heads)
        return self.out(y.transpose(1, 2).reshape(batch, length, width))


class TransformerBlock(nn.Module):
    def __init__(self, config: PriorConfig):
        super().__init__()
        self.attention_norm = nn.LayerNorm(config.width)
        self.attention = CausalSelfAttention(config)
        self.mlp_norm = nn.LayerNorm(config.width)
        self.mlp = nn.Sequential(nn.Linear(config.width, 4 * config.width), nn.GELU(),
                                 nn.Linear(4 * config.width, config.width), nn.Dropout(config.dropout))

    def forward(self, x: Tensor, cache: dict | None = None) -> Tensor:
        x = x + self.attention(self.attention_norm(x), cache)
        return x + self.mlp(self.mlp_norm(x))


class CodePrior(nn.Module):
    """An autoregressive prior p(class) p(codes | class) over the autoencoder's code grid: a small causal
    transformer.

    The sequence is the class token followed by the 49 codes in raster order (49 L with L levels, see the module
    docstring); the output at position t is the distribution of code t given the class and codes 0..t-1. The class
    token num_classes means "no class": training shows some grids without their class, so the model also knows
    p(codes) alone, which classifier-free guidance contrasts with p(codes | class). p(class) is the class
    frequencies of the training set (`class_frequencies`), so the prior can also draw a sample's class itself.
    """

    nonnegative_buffers = ("class_frequencies",)  # checked on every load

    def __init__(self, config: PriorConfig):
        super().__init__()
        self.config = config
        self.sequence_length = config.grid_size ** 2 * config.levels
        self.class_embedding = nn.Embedding(config.num_classes + 1, config.width)
        # Each level's K codes are tokens of their own: level l's code k is token l * K + k.
        self.code_embedding = nn.Embedding(config.num_embeddings * config.levels, config.width)
        self.position_embedding = nn.Parameter(torch.zeros(self.sequence_length, config.width))
        self.blocks = nn.ModuleList(TransformerBlock(config) for _ in range(config.num_layers))
        self.norm = nn.LayerNorm(config.width)
        self.head = nn.Linear(config.width, config.num_embeddings)
        self.register_buffer("class_frequencies", torch.full((config.num_classes,), 1.0 / config.num_classes))
        # (49 L,) the token offset l * K of each place in the sequence; not persistent, it follows from the config.
        self.register_buffer("token_offsets", torch.arange(config.levels).repeat(config.grid_size ** 2)
                             * config.num_embeddings, persistent=False)
        self.apply(self._init_weights)
        nn.init.normal_(self.position_embedding, std=0.02)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @property
    def no_class(self) -> int:
        return self.config.num_classes

    def to_sequence(self, codes: Tensor) -> Tensor:
        """Code grids (B, 7, 7), or (B, L, 7, 7) -> sequences (B, 49 L) in the prior's order."""
        if self.config.levels > 1:
            codes = codes.permute(0, 2, 3, 1)  # (B, L, 7, 7) -> (B, 7, 7, L): a position's levels side by side
        return codes.flatten(1)

    def from_sequence(self, sequence: Tensor) -> Tensor:
        """Sequences (B, 49 L) -> code grids (B, 7, 7), or (B, L, 7, 7): to_sequence undone."""
        side, levels = self.config.grid_size, self.config.levels
        if levels > 1:
            return sequence.view(-1, side, side, levels).permute(0, 3, 1, 2).contiguous()
        return sequence.view(-1, side, side)

    def forward(self, codes: Tensor, classes: Tensor) -> Tensor:
        """Codes (B, 7, 7) or (B, L, 7, 7) and classes (B,) -> logits (B, 49 L, K) of each code given the class and
        the codes before it in the prior's order."""
        sequence = self.to_sequence(codes) + self.token_offsets  # (B, 49 L) tokens
        # The input is shifted right by one: [class, code 0, ..., code 47] predicts [code 0, ..., code 48].
        x = torch.cat([self.class_embedding(classes)[:, None], self.code_embedding(sequence[:, :-1])], dim=1)
        x = x + self.position_embedding  # (B, 49 L, C)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))

    def loss(self, codes: Tensor, classes: Tensor) -> Tensor:
        """Mean negative log-likelihood per code, in nats."""
        logits = self(codes, classes)
        return F.cross_entropy(logits.float().flatten(0, 1), self.to_sequence(codes).flatten())

    def log_likelihood(self, codes: Tensor, classes: Tensor) -> Tensor:
        """log p(codes | class) of each grid, (B,) in nats: the sum over its 49 L codes."""
        log_probabilities = torch.log_softmax(self(codes, classes).float(), dim=-1)  # (B, 49 L, K)
        return log_probabilities.gather(-1, self.to_sequence(codes)[..., None])[..., 0].sum(dim=1)

    def draw_classes(self, count: int, generator: torch.Generator | None = None) -> Tensor:
        """count classes (count,) drawn from p(class), the training set's class frequencies."""
        drawn = torch.multinomial(self.class_frequencies.float().cpu(), count, replacement=True, generator=generator)
        return drawn.to(self.class_frequencies.device)

    @torch.no_grad()
    def sample(self, classes: Tensor, temperature: float = 1.0, guidance: float = 0.0,
               generator: torch.Generator | None = None, prefix: Tensor | None = None,
               truncation: Truncation = Truncation()) -> Tensor:
        """Classes (B,) -> code grids (B, 7, 7) or (B, L, 7, 7), all B at once in 49 L steps, each step reusing the
        keys and values of the earlier ones. With a prefix (B, P) of codes in the prior's order (`to_sequence`), the
        first P codes of each grid are the prefix's and only the rest are drawn, each given the class and all the
        codes before it.

        Each code is drawn from softmax(logits / temperature), where with guidance w > 0 the logits are
        classifier-free guided: (1 + w) log p(code | class, ...) - w log p(code | ...), which favours codes
        typical of the class over codes typical of any digit; `truncation` then leaves out the unlikely codes (top-k,
        nucleus). A class of no_class samples without a class.
        """
        count = len(classes)
        guided = guidance > 0
        if guided:  # the rows after the first `count` are the same grids seen without their class
            classes = torch.cat([classes, torch.full_like(classes, self.no_class)])
        caches = [{} for _ in self.blocks]
        codes = torch.empty(count, self.sequence_length, dtype=torch.long, device=classes.device)
        x = self.class_embedding(classes)[:, None] + self.position_embedding[0]  # (B, 1, C)
        kept = 0 if prefix is None else prefix.shape[1]
        for position in range(self.sequence_length):
            for block, cache in zip(self.blocks, caches):
                x = block(x, cache)
            if position < kept:  # a code of the prefix: it is fed in as it is, and nothing is drawn
                code = prefix[:, position:position + 1].to(classes.device)  # (B, 1)
            else:
                logits = torch.log_softmax(self.head(self.norm(x[:, -1])).float(), dim=-1)  # (B or 2B, K)
                if guided:
                    conditional, unconditional = logits[:count], logits[count:]
                    logits = conditional + guidance * (conditional - unconditional)
                probabilities = torch.softmax(truncation(logits / temperature), dim=-1)
                code = torch.multinomial(probabilities.cpu(), 1, generator=generator).to(classes.device)  # (B, 1)
            codes[:, position] = code[:, 0]
            if position + 1 < self.sequence_length:
                token = (code.repeat(2, 1) if guided else code) + self.token_offsets[position]
                x = self.code_embedding(token) + self.position_embedding[position + 1]
        return self.from_sequence(codes)


@torch.no_grad()
def encode_images(model: nn.Module, images: Tensor, device: torch.device, batch_size: int = 1000) -> Tensor:
    """uint8 images (N, 28, 28) -> the code grids (N, 7, 7) or (N, L, 7, 7) of a discrete autoencoder (its
    `encode`), on the device."""
    model.eval()
    return torch.cat([model.encode(images_to_inputs(batch.to(device))) for batch in images.split(batch_size)])


@torch.no_grad()
def prior_nll_bits(prior: CodePrior, codes: Tensor, classes: Tensor, batch_size: int = 1000) -> float:
    """Mean negative log-likelihood of code grids (N, 7, 7) or (N, L, 7, 7) given classes (N,), in bits per code."""
    was_training = prior.training
    prior.eval()
    total = torch.zeros((), dtype=torch.float64, device=codes.device)
    for batch_codes, batch_classes in zip(codes.split(batch_size), classes.split(batch_size)):
        total += prior.loss(batch_codes, batch_classes).double() * len(batch_codes)
    prior.train(was_training)
    return total.item() / len(codes) / math.log(2)


@torch.no_grad()
def marginal_nll_bits(prior: CodePrior, codes: Tensor, batch_size: int = 1000) -> float:
    """Mean -log2 p(codes) of code grids (N, 7, 7) or (N, L, 7, 7), in bits per code, where p(codes) = sum over the
    classes c of p(c) p(codes | c): the prior's own likelihood of a grid whose class it is not told, the one whose
    samples are the unconditional ones (draw_classes, then sample)."""
    was_training = prior.training
    prior.eval()
    log_class_frequencies = prior.class_frequencies.double().log()
    total = torch.zeros((), dtype=torch.float64, device=codes.device)
    possible = [label for label in range(prior.config.num_classes) if log_class_frequencies[label] > -math.inf]
    for batch in codes.split(batch_size):
        joint = torch.stack([prior.log_likelihood(batch, torch.full((len(batch),), label, device=batch.device))
                             .double() + log_class_frequencies[label] for label in possible])  # (classes, B)
        total -= torch.logsumexp(joint, dim=0).sum()  # -log sum over c of p(c) p(codes | c), each grid
    prior.train(was_training)
    return total.item() / len(codes) / prior.sequence_length / math.log(2)
