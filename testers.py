"""Reusable checks of a codebook vector quantizer, each computing the expected answer independently of the quantizer.

They check a module with the interface of `vector_quantizer.VectorQuantizer`, not the whole Bottleneck interface:
a learned codebook in `embedding` (an nn.Embedding of its K codes), `codebook()` (those codes as the search uses
them), `beta`, and a forward pass returning a `bottleneck.BottleneckOutput` with codes (B, H, W) and the loss terms
"commitment" and, where the codebook learns by loss, "codebook". FSQ, LFQ, SimVQ and the residual VQ have no such
`embedding` and have their own tests (tests/test_bottleneck_contract.py holds every registered bottleneck to what
the interface promises). Each check raises AssertionError on a fault. tests/test_vector_quantizer.py applies them to
the project's VQ; the tests below show that each check catches the fault it is written for.
"""
import contextlib
import math

import pytest
import torch

from bottleneck import BottleneckOutput
from vector_quantizer import VectorQuantizer

# The reference quantizer's settings where they differ from VectorQuantizer's defaults (VQConfig's): the codebook
# loss, a tiny uniform start, use counts of decay 0.99, no restarts. The tests build it unless they say otherwise.
REFERENCE_SETTINGS = {"codebook_update": "loss", "ema_decay": 0.99, "codebook_init": "uniform",
                      "restart_threshold": 0.0}


def reference_quantizer(num_embeddings: int, code_dim: int, beta: float = 0.25, **options) -> VectorQuantizer:
    """A VectorQuantizer of K = num_embeddings codes of D = code_dim with REFERENCE_SETTINGS, `options`
    (VectorQuantizer's keywords) overriding them."""
    return VectorQuantizer(num_embeddings, code_dim, beta, **{**REFERENCE_SETTINGS, **options})


def random_quantizer(num_embeddings: int, code_dim: int, beta: float = 0.25, seed: int = 0,
                     **options) -> VectorQuantizer:
    """A reference quantizer (options as reference_quantizer's) whose codes are spread like its inputs will be, so
    nearest codes are well separated; already initialised, so a training-mode call does not replace them from its
    input."""
    torch.manual_seed(seed)
    quantizer = reference_quantizer(num_embeddings, code_dim, beta, **options)
    quantizer.set_codebook(torch.randn(num_embeddings, code_dim), count=1.0)
    return quantizer


@contextlib.contextmanager
def evaluating(quantizer):
    """Eval mode for the block: forward passes then leave the codebook and its statistics alone."""
    was_training = quantizer.training
    quantizer.eval()
    try:
        yield quantizer
    finally:
        quantizer.train(was_training)


def random_inputs(batch: int, code_dim: int, height: int, width: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, code_dim, height, width, generator=generator)


def brute_force_nearest(z_e: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(distances (N, K), indices (B, H, W)) by torch.cdist in float64 over every pair."""
    batch, dim, height, width = z_e.shape
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, dim).double()
    distances = torch.cdist(flat, codebook.double())
    return distances, distances.argmin(dim=1).view(batch, height, width)


def check_nearest_codes(quantizer, z_e: torch.Tensor) -> None:
    """Every position gets its nearest code of `codebook()` to z_e (B, D, H, W), and z_q holds exactly that code's
    vector."""
    # The codebook as the forward pass sees it: in training mode the pass itself may update it afterwards.
    codebook = quantizer.codebook().detach().clone()
    with torch.no_grad():
        output: BottleneckOutput = quantizer(z_e)
    distances, expected = brute_force_nearest(z_e, codebook)
    chosen = distances.gather(1, output.codes.reshape(-1, 1)).squeeze(1)
    # Where two codes are nearly tied, fp32 may pick either: the chosen one must then be as near as the best.
    assert torch.allclose(chosen, distances.min(dim=1).values, rtol=0, atol=1e-5), "a position got a farther code"
    sorted_distances = torch.cat([distances.sort(dim=1).values, torch.full_like(distances[:, :1], torch.inf)], 1)
    clear = (sorted_distances[:, 1] - sorted_distances[:, 0] > 1e-4).view_as(expected)
    assert torch.equal(output.codes[clear], expected[clear]), "indices differ from the brute-force argmin"
    decoded = codebook[output.codes].permute(0, 3, 1, 2)
    assert torch.allclose(output.z_q, decoded, rtol=0, atol=1e-6), "z_q is not the codebook entry of its index"


def check_straight_through(quantizer, z_e: torch.Tensor) -> None:
    """A gradient arriving at z_q reaches z_e (B, D, H, W) unchanged (the straight-through estimator, not the
    rotation trick)."""
    z_e = z_e.clone().requires_grad_(True)
    output = quantizer(z_e)
    upstream = torch.randn_like(output.z_q)
    (output.z_q * upstream).sum().backward()
    assert z_e.grad is not None, "no gradient reached the encoder output"
    assert torch.equal(z_e.grad, upstream), "the gradient reaching the encoder output was altered"


def check_codebook_gradient(quantizer, z_e: torch.Tensor) -> None:
    """The codebook `embedding.weight`, trained by loss, gets the "codebook" loss term's gradient, 2 (e_k - z_e) /
    numel summed over its positions, and no gradient from anything computed from z_q (the reconstruction); an EMA
    codebook (requires_grad False) gets no gradient at all, and no "codebook" loss term, which would train nothing."""
    z_e = z_e.clone().requires_grad_(True)
    codebook = quantizer.embedding.weight
    codebook.grad = None
    before = codebook.detach().clone()
    output = quantizer(z_e)
    if not codebook.requires_grad:
        assert "codebook" not in output.losses, "an EMA codebook has a codebook loss, which trains nothing"
        loss = (output.z_q * torch.randn_like(output.z_q)).sum() + sum(output.losses.values())
        loss.backward()
        assert codebook.grad is None, "a gradient reached the EMA codebook"
        return
    (output.z_q * torch.randn_like(output.z_q)).sum().backward(retain_graph=True)
    assert codebook.grad is None or not codebook.grad.any(), "the reconstruction gradient reached the codebook"

    codebook.grad = None
    output.losses["codebook"].backward()
    flat = z_e.detach().permute(0, 2, 3, 1).reshape(-1, z_e.shape[1]).double()
    indices = output.codes.reshape(-1)
    expected = torch.zeros_like(codebook, dtype=torch.float64)
    expected.index_add_(0, indices, 2 * (before.double()[indices] - flat) / z_e.numel())
    assert codebook.grad is not None, "the codebook loss does not reach the codebook"
    assert torch.allclose(codebook.grad.double(), expected, rtol=1e-4, atol=1e-7), "wrong codebook-loss gradient"


def check_commitment_loss(quantizer, z_e: torch.Tensor) -> None:
    """The "commitment" loss term is beta * mean ||z_e - e||^2, and its gradient reaches z_e but not the codebook
    `embedding.weight`."""
    z_e = z_e.clone().requires_grad_(True)
    codebook = quantizer.embedding.weight
    codebook.grad = None
    before = codebook.detach().clone()
    output = quantizer(z_e)
    chosen = before[output.codes].permute(0, 3, 1, 2)
    expected = quantizer.beta * (z_e.detach() - chosen).pow(2).mean()
    assert torch.allclose(output.losses["commitment"], expected, rtol=1e-5), "commitment loss is not beta * MSE"
    output.losses["commitment"].backward()
    assert codebook.grad is None or not codebook.grad.any(), "the commitment loss moved the codebook"
    expected_grad = 2 * quantizer.beta * (z_e.detach() - chosen) / z_e.numel()
    assert torch.allclose(z_e.grad, expected_grad, rtol=1e-4, atol=1e-8), "wrong commitment-loss gradient"


def check_perplexity(quantizer, z_e: torch.Tensor) -> None:
    """The figure "perplexity" is exp(entropy) of the batch's code histogram: in [1, K] (K the rows of `embedding`),
    K when each code is hit equally often, 1 when one code takes all, exp(H(3/4, 1/4)) when one code is hit three
    times as often as another; the histograms are made by feeding in `codebook()`'s own codes."""
    num_embeddings = quantizer.embedding.weight.shape[0]
    with torch.no_grad(), evaluating(quantizer):
        perplexity = quantizer(z_e).figures["perplexity"].item()
        assert 1 - 1e-5 <= perplexity <= num_embeddings + 1e-3, f"perplexity {perplexity} outside [1, K]"
        # Feeding code vectors in as encoder outputs makes the histogram exactly what we choose.
        codes = quantizer.codebook().detach().t().reshape(1, -1, num_embeddings, 1)
        uniform = quantizer(codes).figures["perplexity"].item()
        assert uniform == pytest.approx(num_embeddings, rel=1e-4), f"uniform use gave {uniform}, not K"
        single = quantizer(codes[:, :, [0] * 5]).figures["perplexity"].item()
        assert single == pytest.approx(1.0, abs=1e-5), f"one code used gave perplexity {single}, not 1"
        if num_embeddings > 1:
            uneven = quantizer(codes[:, :, [0, 0, 0, 1]]).figures["perplexity"].item()
            expected = math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
            assert uneven == pytest.approx(expected, rel=1e-5), f"counts 3:1 gave {uneven}, not {expected:.4f}"


ALL_CHECKS = [check_nearest_codes, check_straight_through, check_codebook_gradient, check_commitment_loss,
              check_perplexity]


# Faulty quantizers, one fault each: every check must fail on the fault it is for.


class FarthestCodeQuantizer(VectorQuantizer):
    def nearest_codes(self, flat):
        return torch.cdist(flat.float(), self.codebook().float()).argmax(dim=1)


class NoStraightThroughQuantizer(VectorQuantizer):
    def forward(self, z_e):
        output = super().forward(z_e)
        return output._replace(z_q=self.embed(output.codes))


class ReconstructionTrainsCodebookQuantizer(VectorQuantizer):
    def forward(self, z_e):
        output = super().forward(z_e)
        return output._replace(z_q=output.z_q + self.embed(output.codes) - self.embed(output.codes).detach())


class UnweightedCommitmentQuantizer(VectorQuantizer):
    def forward(self, z_e):
        output = super().forward(z_e)
        return output._replace(losses={**output.losses, "commitment": output.losses["commitment"] / self.beta})


class CommitmentTrainsCodebookQuantizer(VectorQuantizer):
    def forward(self, z_e):
        output = super().forward(z_e)
        z_q = self.embed(output.codes)
        return output._replace(losses={**output.losses, "commitment": self.beta * (z_e - z_q).pow(2).mean()})


class DistinctCodesPerplexityQuantizer(VectorQuantizer):
    """Reports the number of distinct codes used instead of exp(entropy)."""

    def forward(self, z_e):
        output = super().forward(z_e)
        return output._replace(figures={"perplexity": torch.tensor(float(output.codes.unique().numel()))})


def faulty(cls, num_embeddings=16, code_dim=4):
    quantizer = random_quantizer(num_embeddings, code_dim)
    broken = cls(num_embeddings, code_dim, quantizer.beta, **REFERENCE_SETTINGS)
    broken.load_state_dict(quantizer.state_dict())
    return broken


@pytest.mark.parametrize("check, broken_class", [
    (check_nearest_codes, FarthestCodeQuantizer),
    (check_straight_through, NoStraightThroughQuantizer),
    (check_codebook_gradient, ReconstructionTrainsCodebookQuantizer),
    (check_commitment_loss, UnweightedCommitmentQuantizer),
    (check_commitment_loss, CommitmentTrainsCodebookQuantizer),
    (check_perplexity, DistinctCodesPerplexityQuantizer),
])
def test_check_catches_its_fault(check, broken_class):
    with pytest.raises(AssertionError):
        check(faulty(broken_class), random_inputs(2, 4, 3, 3))


@pytest.mark.parametrize("check", ALL_CHECKS)
def test_check_passes_the_reference_quantizer(check):
    check(random_quantizer(16, 4), random_inputs(2, 4, 3, 3))
