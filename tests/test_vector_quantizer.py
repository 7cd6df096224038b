"""The project's quantizer against the independent checks of testers.py, over several shapes and codebook sizes; its
defaults, which are its config's; its loss terms, each of which trains something."""
import inspect
from dataclasses import fields

import pytest
import torch
import torch.nn.functional as F

from bottleneck import perplexity_from_counts
from helpers import assert_every_loss_term_trains
from modules import VQVAE, VQVAEConfig
import nearest_code
from testers import ALL_CHECKS, brute_force_nearest, random_inputs, random_quantizer
from vector_quantizer import VQConfig, VectorQuantizer

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


def test_a_quantizer_built_without_settings_is_the_one_its_config_builds():
    """One set of defaults: each keyword default of VectorQuantizer is VQConfig's field default, so VectorQuantizer(K,
    D) draws, chooses and updates exactly as the quantizer `--bottleneck vq` builds; one width, D, by the interface's
    names."""
    parameters = inspect.signature(VectorQuantizer).parameters
    for item in fields(VQConfig):
        if item.name not in ("num_embeddings", "code_dim"):  # no default: K and D are always given
            assert parameters[item.name].default == item.default, item.name
    z_e = random_inputs(4, 6, 5, 5)
    built = []
    for build in (lambda: VectorQuantizer(16, 6),
                  lambda: VectorQuantizer.from_config(VQConfig(num_embeddings=16, code_dim=6), hidden_size=64)):
        torch.manual_seed(0)
        quantizer = build()
        # The first step places the codebook (k-means++); inputs near one point then leave most codes unused, whose
        # use counts decay (0.95 a step) below the restart threshold.
        codes = [quantizer(z_e * scale).codes for scale in (1.0, *[0.01] * 20)]
        built.append((quantizer, codes))
    (plain, plain_codes), (configured, configured_codes) = built
    assert plain.restarts > 0, "no code was restarted: the defaults' restarts went unchecked"
    assert all(torch.equal(a, b) for a, b in zip(plain_codes, configured_codes))
    configured_state = configured.state_dict()
    for name, tensor in plain.state_dict().items():
        assert torch.equal(tensor, configured_state[name]), name
    assert plain.input_dim == plain.code_dim == plain.embedding.embedding_dim == 6
    assert not hasattr(plain, "embedding_dim")


@pytest.mark.parametrize("codebook_update", ["ema", "loss"])
def test_every_loss_term_reaches_the_encoder_output_or_a_trained_parameter(codebook_update):
    """Under EMA the codebook is not the optimizer's, so a codebook loss would train nothing and only add a constant
    to the loss logged and checked: there is none. With the codebook loss there is, and it reaches the codebook."""
    quantizer = random_quantizer(16, 4, codebook_update=codebook_update)
    z_e = random_inputs(2, 4, 3, 3).requires_grad_()
    output = quantizer(z_e)
    assert_every_loss_term_trains(output.losses, quantizer, z_e, codebook_update)


def test_under_ema_training_reaches_the_weights_of_the_loss_with_the_codebook_term():
    """Adam steps of a small VQ-VAE under EMA end, to the bit, where they did when the loss also held the codebook
    loss ||e - sg[z_e]||^2: here recomputed from the encoder outputs and the codes each step chose from, and added in
    the old order. Only the loss's value differs, by that term."""
    images = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    runs = []
    for with_codebook_term in (False, True):
        torch.manual_seed(0)
        model = VQVAE(VQVAEConfig(hidden_size=8, bottleneck_config=VQConfig(num_embeddings=16, code_dim=4)))
        assert model.bottleneck.codebook_update == "ema"
        optimizer = torch.optim.Adam([parameter for parameter in model.parameters() if parameter.requires_grad],
                                     lr=1e-2)
        encoder_outputs = []
        model.bottleneck.register_forward_pre_hook(lambda module, inputs: encoder_outputs.append(inputs[0]))
        with torch.no_grad():
            model(images)  # the first pass places the codebook: from then on a step chooses from the codes before it
        losses, codebook_terms = [], []
        for _ in range(3):
            codebook = model.bottleneck.embedding.weight.detach().clone()  # before this step's EMA update
            x_recon, quantized = model(images)
            bottleneck_loss = model.bottleneck_loss(quantized)
            if with_codebook_term:
                chosen = codebook[quantized.codes].permute(0, 3, 1, 2)  # (B, D, 7, 7) the chosen codes' vectors
                codebook_terms.append(F.mse_loss(chosen, encoder_outputs[-1].detach()))
                bottleneck_loss = torch.zeros(()) + codebook_terms[-1] + quantized.losses["commitment"].float()
            loss = model.reconstruction_loss(x_recon, images) + bottleneck_loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        runs.append((model.state_dict(), losses, codebook_terms))
    (state, losses, _), (old_state, old_losses, codebook_terms) = runs
    for name, tensor in old_state.items():
        assert torch.equal(tensor, state[name]), name
    for loss, old_loss, term in zip(losses, old_losses, codebook_terms):
        assert term > 0 and old_loss == pytest.approx(loss + term.item(), rel=1e-6)
