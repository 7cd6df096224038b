"""How a discrete bottleneck uses its codes: their counts, the perplexity of their distribution, its health figures."""
import torch
from torch import Tensor

# The figures code_statistics gives, which the epoch line and evaluate.py show in their own words.
CODE_STATISTICS = ("codes_used", "codebook_usage", "perplexity", "dead_codes")


def perplexity_from_counts(counts: Tensor) -> Tensor:
    """exp(H(p)) of the code distribution p = counts / counts.sum(): 1 if one code is used, K if all K equally."""
    probabilities = counts.double() / counts.sum().clamp(min=1)
    entropy = -torch.special.xlogy(probabilities, probabilities).sum()
    return entropy.exp().float()


def code_counts(indices: Tensor, num_embeddings: int) -> Tensor:
    """How often each of the K codes appears among indices (any shape): (K,) int64, on their device."""
    # index_add_ rather than bincount: on CUDA, bincount reads the largest index back to the host.
    flat = indices.flatten()
    return torch.zeros(num_embeddings, dtype=torch.long, device=flat.device).index_add_(0, flat, torch.ones_like(flat))


def code_statistics(counts: Tensor) -> dict[str, float]:
    """The health of a discrete bottleneck over a whole image set, from its code counts (K,): CODE_STATISTICS."""
    codes_used = int((counts > 0).sum())
    return {"codes_used": codes_used, "codebook_usage": codes_used / len(counts),
            "perplexity": perplexity_from_counts(counts).item(), "dead_codes": len(counts) - codes_used}
