"""LFQ against answers computed another way: the nearest hypercube corner by brute force, the soft assignment's
entropies by enumerating the codes and by the closed form of each dimension's bit, the gradients by hand; its config."""
import itertools
import math
import re

import pytest
import torch

from helpers import model_config
from lfq import MAX_LFQ_BITS, LFQConfig, LookupFreeQuantizer
from modules import VQVAE
from vector_quantizer import VQConfig
from vqmnist.configuration import training_flags


def corners(bits: int) -> torch.Tensor:
    """The 2^bits corners of {-1, +1}^bits (K, bits), in no particular order."""
    return torch.tensor(list(itertools.product([-1.0, 1.0], repeat=bits)))


def index_of(corner: torch.Tensor) -> int:
    """The spec's index of a corner: bit i is set where dimension i is +1."""
    return sum(2 ** i for i, value in enumerate(corner.tolist()) if value > 0)


def as_grid(rows: torch.Tensor) -> torch.Tensor:
    """Rows (N, d) -> the bottleneck's input (1, d, 1, N)."""
    return rows.t().reshape(1, rows.shape[1], 1, -1)


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    return -(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p))


def soft_assignment(z: list[float], temperature: float) -> list[float]:
    """p(c | z) = softmax(-||z - c||^2 / T) over the corners in itertools.product order, in plain Python floats."""
    weights = [math.exp(-sum((zi - ci) ** 2 for zi, ci in zip(z, corner)) / temperature)
               for corner in itertools.product([-1.0, 1.0], repeat=len(z))]
    return [weight / sum(weights) for weight in weights]


def entropy(probabilities: list[float]) -> float:
    return -sum(p * math.log(p) for p in probabilities if p > 0)


@pytest.mark.parametrize("bits", [1, 3, 9])
def test_the_sign_is_the_nearest_corner_and_every_code_has_its_own_index(bits):
    quantizer = LookupFreeQuantizer(bits)
    all_corners = corners(bits)  # (K, d)
    expected_index = torch.tensor([index_of(corner) for corner in all_corners])
    generator = torch.Generator().manual_seed(bits)
    # One input inside each corner's orthant (so every code is reached), then Gaussian inputs.
    magnitudes = torch.rand(all_corners.shape, generator=generator) * 3 + 0.01
    z = torch.cat([all_corners * magnitudes, torch.randn(300, bits, generator=generator)])  # (N, d)
    nearest = torch.cdist(z, all_corners).argmin(1)  # brute force over all K corners
    output = quantizer(as_grid(z))
    assert torch.equal(output.codes.flatten(), expected_index[nearest])
    assert torch.equal(output.codes.flatten()[:len(all_corners)].sort().values, torch.arange(2 ** bits))
    assert torch.equal(output.z_q, as_grid(all_corners[nearest]))
    assert torch.equal(quantizer.embed(output.codes), output.z_q)
    codebook = quantizer.codebook()
    assert codebook.shape == (2 ** bits, bits) and torch.equal(codebook[expected_index], all_corners)


def test_zero_goes_to_minus_one_and_index_zero():
    output = LookupFreeQuantizer(3)(torch.zeros(2, 3, 4, 4))
    assert torch.equal(output.z_q, torch.full((2, 3, 4, 4), -1.0)) and not output.codes.any()


def test_the_gradient_passes_straight_through_and_the_commitment_pulls_towards_the_corner():
    quantizer = LookupFreeQuantizer(4, beta=0.4)
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(3, 4, 5, 5, generator=generator).requires_grad_()
    upstream = torch.randn(3, 4, 5, 5, generator=generator)
    output = quantizer(z)
    (output.z_q * upstream).sum().backward(retain_graph=True)
    assert torch.equal(z.grad, upstream), "the decoder's gradient reaches z_e unchanged"
    z.grad = None
    output.losses["commitment"].backward()
    sign = torch.where(z > 0, 1.0, -1.0).detach()
    assert output.losses["commitment"].item() == pytest.approx(0.4 * (z - sign).pow(2).mean().item(), rel=1e-6)
    assert torch.allclose(z.grad, 2 * 0.4 * (z - sign).detach() / z.numel())


def test_the_entropies_of_a_hand_worked_example():
    temperature = 0.01
    # d = 1, z = 0.005: -||z - c||^2 / T differs between c = +1 and -1 by 4 z / T = 2, so p(+1) = sigmoid(2).
    p = 1 / (1 + math.exp(-2))
    by_hand = -p * math.log(p) - (1 - p) * math.log(1 - p)
    assert soft_assignment([0.005], temperature)[1] == pytest.approx(p)
    per_sample, batch = LookupFreeQuantizer(1, temperature=temperature).entropies(torch.tensor([[0.005]]))
    assert per_sample.item() == pytest.approx(by_hand, rel=1e-5) and batch.item() == pytest.approx(by_hand, rel=1e-5)
    # d = 2, two positions; the second's z_2 = 0 is a fair coin. Per position, the entropy is the sum of its two bits'
    # binary entropies, sigmoid(4 z_i / T) being each bit's probability of +1.
    rows = [[0.005, -0.0025], [-0.01, 0.0]]
    assignments = [soft_assignment(row, temperature) for row in rows]
    bits_entropy = [sum(entropy([1 / (1 + math.exp(-4 * zi / temperature)), 1 / (1 + math.exp(4 * zi / temperature))])
                        for zi in row) for row in rows]
    assert [entropy(a) for a in assignments] == pytest.approx(bits_entropy)
    assert bits_entropy[1] == pytest.approx(entropy([1 / (1 + math.exp(4)), 1 / (1 + math.exp(-4))]) + math.log(2))
    mean_assignment = [(a + b) / 2 for a, b in zip(*assignments)]
    per_sample, batch = LookupFreeQuantizer(2, temperature=temperature).entropies(torch.tensor(rows))
    assert per_sample.item() == pytest.approx(sum(bits_entropy) / 2, rel=1e-5)
    assert batch.item() == pytest.approx(entropy(mean_assignment), rel=1e-5)


def test_the_entropy_loss_factorises_over_the_dimensions_and_weighs_its_terms():
    bits, temperature, weight, diversity = 6, 0.05, 0.3, 0.7
    quantizer = LookupFreeQuantizer(bits, entropy_weight=weight, diversity=diversity, temperature=temperature)
    z = torch.randn(40, bits, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.05  # (N, d)
    # The full softmax over all K corners, in float64...
    probabilities = torch.softmax(-torch.cdist(z, corners(bits).double()).pow(2) / temperature, dim=1)  # (N, K)
    expected_per_sample = -torch.special.xlogy(probabilities, probabilities).sum(1).mean()
    mean = probabilities.mean(0)
    expected_batch = -torch.special.xlogy(mean, mean).sum()
    # ... whose per-position entropy is the sum over the dimensions of a bit's binary entropy.
    factorised = binary_entropy(torch.sigmoid(4 * z / temperature)).sum(1).mean()
    assert factorised.item() == pytest.approx(expected_per_sample.item(), rel=1e-9)
    per_sample, batch = quantizer.entropies(z.float())
    assert per_sample.item() == pytest.approx(expected_per_sample.item(), rel=1e-5)
    assert batch.item() == pytest.approx(expected_batch.item(), rel=1e-5)
    output = quantizer(as_grid(z.float()))
    expected_loss = weight * (expected_per_sample - diversity * expected_batch)
    assert output.losses["entropy"].item() == pytest.approx(expected_loss.item(), rel=1e-5)
    counts = output.codes.flatten().unique(return_counts=True)[1].double()
    code_entropy = -(counts / counts.sum() * (counts / counts.sum()).log()).sum()
    assert output.figures["perplexity"].item() == pytest.approx(code_entropy.exp().item(), rel=1e-5)


def test_a_batch_on_one_code_has_no_batch_entropy_and_a_higher_loss_than_one_spread_over_all():
    quantizer = LookupFreeQuantizer(4)  # the defaults: weight 0.1, diversity 1, temperature 0.01
    one_code = quantizer(as_grid(torch.full((32, 4), 0.5)))
    spread = quantizer(as_grid(corners(4).repeat(2, 1) * 0.5))  # each of the 16 codes twice
    assert one_code.codes.unique().numel() == 1 and spread.codes.unique().numel() == 16
    _, one_code_batch = quantizer.entropies(torch.full((32, 4), 0.5))
    per_sample, spread_batch = quantizer.entropies(corners(4).repeat(2, 1) * 0.5)
    assert one_code_batch.item() < 1e-6 and per_sample.item() < 1e-6
    assert spread_batch.item() == pytest.approx(math.log(16), rel=1e-5)
    assert one_code.losses["entropy"].item() > spread.losses["entropy"].item() + 0.1 * math.log(16) - 1e-4


def test_one_gradient_step_on_the_entropy_loss_sharpens_each_position_and_spreads_the_batch():
    quantizer = LookupFreeQuantizer(2)
    # A batch crowded near one code, each position unsure of it.
    z = (0.01 + 0.01 * torch.randn(64, 2, generator=torch.Generator().manual_seed(0))).requires_grad_()
    per_sample, batch = quantizer.entropies(z)
    loss = quantizer(as_grid(z)).losses["entropy"]
    loss.backward()
    stepped = (z - 0.01 * z.grad).detach()
    stepped_per_sample, stepped_batch = quantizer.entropies(stepped)
    assert quantizer(as_grid(stepped)).losses["entropy"] < loss
    assert stepped_per_sample < per_sample and stepped_batch > batch


def test_under_autocast_the_codes_and_losses_stay_fp32_and_z_q_takes_the_input_dtype():
    quantizer = LookupFreeQuantizer(5)
    z = torch.randn(2, 5, 7, 7, generator=torch.Generator().manual_seed(2)).bfloat16()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        output = quantizer(z)
    expected = quantizer(z.float())
    assert output.z_q.dtype == torch.bfloat16 and torch.equal(output.codes, expected.codes)
    for name, loss in output.losses.items():
        assert loss.dtype == torch.float32 and torch.equal(loss, expected.losses[name]), name


def test_the_flags_build_the_config_and_beta_is_the_vqs_flag():
    args = training_flags.build_parser().parse_args(["--bottleneck", "lfq", "--lfq-bits", "5", "--beta", "0.5",
                                                     "--entropy-weight", "0.2", "--entropy-diversity", "0.8",
                                                     "--lfq-temperature", "0.1", "--hidden-size", "8"])
    config = training_flags.model_config(args)
    assert config.bottleneck_config == LFQConfig(lfq_bits=5, beta=0.5, entropy_weight=0.2, entropy_diversity=0.8,
                                                 lfq_temperature=0.1)
    shared = VQConfig.__dataclass_fields__["beta"]
    beta = LFQConfig.__dataclass_fields__["beta"]
    # Two fields of one SharedOption: the same default, rule, flag and help, so one flag sets both.
    assert beta is not shared and beta.default == shared.default and dict(beta.metadata) == dict(shared.metadata)
    model = VQVAE(config)
    assert (model.bottleneck.num_embeddings, model.bottleneck.input_dim, model.bottleneck.code_dim) == (32, 5, 5)
    assert model.discrete and model.encode(torch.zeros(2, 1, 28, 28)).max() < 32
    with pytest.raises(SystemExit):
        training_flags.build_parser().parse_args(["--lfq-bits", str(MAX_LFQ_BITS + 1)])


@pytest.mark.parametrize("field, value, message", [
    ("lfq_bits", 0, "lfq_bits must be an integer from 1 to 17"),
    ("lfq_bits", 18, "lfq_bits must be an integer from 1 to 17"),
    ("lfq_bits", 4.0, "lfq_bits must be an integer"),
    ("lfq_bits", True, "lfq_bits must be an integer"),
    ("beta", -0.1, "beta must be a number from 0 to"),
    ("entropy_weight", math.inf, "entropy_weight must be a number from 0 to"),
    ("entropy_weight", math.nan, "entropy_weight must be a number from 0 to"),
    ("entropy_diversity", -1.0, "entropy_diversity must be a number from 0 to"),
    ("lfq_temperature", 0.0, "lfq_temperature must be a number above 0 and at most"),
    ("lfq_temperature", "0.01", "lfq_temperature must be a number above 0 and at most"),
])
def test_a_config_that_cannot_be_built_names_its_field(field, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        model_config("lfq", **{field: value})
