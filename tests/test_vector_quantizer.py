"""The project's quantizer against the independent checks of testers.py, over several shapes and codebook sizes."""
import pytest
import torch

from bottleneck import perplexity_from_counts
import nearest_code
from testers import ALL_CHECKS, brute_force_nearest, random_inputs, random_quantizer

# (batch, D, H, W, K): MNIST's 7x7 grid, odd shapes, a single code, more codes than positions.
SHAPES = [(2, 4, 3, 3, 16), (4, 40, 7, 7, 512), (1, 1, 1, 1, 1), (3, 8, 5, 2, 64)]


# Codebook variants, run in training mode so their updates happen during the checks.
OPTIONS = [
    {},
    {"codebook_update": "ema"},
    {"codebook_update": "ema", "restart_threshold": 2.0},
    {"codebook_update": "loss", "restart_threshold": 2.0},
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda options: "-".join(map(str, options.values())) or "loss")
@pytest.mark.parametrize("check", ALL_CHECKS)
@pytest.mark.parametrize("batch, dim, height, width, num_embeddings", SHAPES)
def test_quantizer_passes_check(check, batch, dim, height, width, num_embeddings, options):
    check(random_quantizer(num_embeddings, dim, **options), random_inputs(batch, dim, height, width))


@pytest.mark.parametrize("num_embeddings", [1, 7, 512])
def test_perplexity_of_counts(num_embeddings):
    assert perplexity_from_counts(torch.full((num_embeddings,), 5)).item() == pytest.approx(num_embeddings, rel=1e-5)
    one_code = torch.zeros(num_embeddings, dtype=torch.long)
    one_code[-1] = 100
    assert perplexity_from_counts(one_code).item() == pytest.approx(1.0)
    counts = torch.randint(0, 50, (num_embeddings,), generator=torch.Generator().manual_seed(0))
    counts[0] += 1
    probabilities = counts[counts > 0].double() / counts.sum()
    expected = torch.exp(-(probabilities * probabilities.log()).sum()).item()
    assert perplexity_from_counts(counts).item() == pytest.approx(expected, rel=1e-5)
    assert 1.0 <= perplexity_from_counts(counts).item() <= num_embeddings + 1e-4


def test_distances_stay_fp32_under_autocast():
    quantizer = random_quantizer(512, 40)
    z_e = random_inputs(4, 40, 7, 7)
    expected = quantizer(z_e).codes
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        assert torch.equal(quantizer(z_e.bfloat16()).codes, expected)


def test_decoding_indices_gives_the_quantized_tensor():
    quantizer = random_quantizer(64, 8)
    output = quantizer(random_inputs(3, 8, 7, 7))
    assert output.codes.shape == (3, 7, 7) and output.codes.dtype == torch.int64
    # The straight-through sum z_e + (z_q - z_e) equals z_q up to float rounding.
    assert torch.allclose(quantizer.embed(output.codes), output.z_q, rtol=0, atol=1e-6)


@pytest.mark.parametrize("budget", [1, 100, 1000, 1 << 25])
def test_nearest_code_search_keeps_its_distances_within_the_budget(budget, monkeypatch):
    """Whatever K and the number of rows, each (rows, K) distance tensor holds at most the budget (or one row), and
    the codes found are the brute-force nearest ones."""
    quantizer = random_quantizer(64, 8)
    z_e = random_inputs(5, 8, 7, 7)  # 245 rows
    shapes = []
    addmm = torch.addmm

    def recording_addmm(*args, **kwargs):
        result = addmm(*args, **kwargs)
        shapes.append(result.shape)
        return result

    monkeypatch.setattr(nearest_code, "DISTANCE_BUDGET", budget)
    monkeypatch.setattr(torch, "addmm", recording_addmm)
    indices = quantizer.eval()(z_e).codes
    _, expected = brute_force_nearest(z_e, quantizer.codebook().detach())
    assert torch.equal(indices, expected)
    assert sum(rows for rows, _ in shapes) == 245
    assert all(rows * codes <= max(budget, codes) for rows, codes in shapes)
    assert len(shapes) == -(-245 // max(1, budget // 64))
