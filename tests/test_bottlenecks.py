"""FSQ and the Gaussian bottleneck against answers computed another way: the nearest grid point by brute force, the
KL by torch.distributions, the reparameterised samples' moments; the config they are built from; and the interface's
default widths."""
import math
import re
from dataclasses import dataclass

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from bottleneck import Bottleneck
from fsq import FiniteScalarQuantizer
from gaussian import GaussianBottleneck
from helpers import model_config
from modules import BOTTLENECKS, VQVAE, VQVAEConfig
from pixel_distributions import IMAGE_PIXELS
from vector_quantizer import VectorQuantizer

LEVELS = [(8, 8, 8), (5, 3), (2,), (7, 6, 4)]


def inputs(dim: int, scale: float = 2.0, seed: int = 0) -> torch.Tensor:
    return torch.randn(6, dim, 5, 5, generator=torch.Generator().manual_seed(seed)) * scale


@pytest.mark.parametrize("levels", LEVELS)
def test_fsq_codes_are_the_grid_points_and_each_index_is_its_own(levels):
    quantizer = FiniteScalarQuantizer(levels)
    codebook = quantizer.codebook()  # (K, d)
    assert codebook.shape == (math.prod(levels), len(levels))
    assert len(codebook.unique(dim=0)) == len(codebook), "two indices share a code"
    for dim, level in enumerate(levels):  # each dimension takes exactly L_i values, evenly spaced, 0 among them
        values = codebook[:, dim].unique()
        assert len(values) == level and 0 in values
        assert torch.allclose(values.diff(), torch.full_like(values.diff(), 1 / (level // 2)))


@pytest.mark.parametrize("levels", LEVELS)
def test_fsq_picks_the_grid_point_nearest_to_the_bounded_input(levels):
    quantizer = FiniteScalarQuantizer(levels)
    z = inputs(len(levels))
    output = quantizer(z)
    half_width = torch.tensor([level // 2 for level in levels], dtype=torch.float32).view(1, -1, 1, 1)
    bounded = (quantizer.bound(z) / half_width).permute(0, 2, 3, 1).reshape(-1, len(levels))
    brute_force = torch.cdist(bounded, quantizer.codebook()).argmin(1)  # the nearest of all K codes
    assert torch.equal(output.codes.flatten(), brute_force)
    assert torch.allclose(quantizer.embed(output.codes), output.z_q)
    assert output.losses == {} and "kl_bits" not in output.figures


@pytest.mark.parametrize("levels", LEVELS)
def test_fsq_reaches_every_code_and_maps_zero_to_the_middle(levels):
    quantizer = FiniteScalarQuantizer(levels)
    # The input the bound maps exactly onto each code's levels: tanh(z + shift) * half_range - offset = level.
    level_values = (quantizer.codebook() * torch.tensor([level // 2 for level in levels])).double()  # (K, d)
    level_counts = torch.tensor(levels, dtype=torch.float64)
    half_range = (level_counts - 1) * (1 + 1e-3) / 2
    offset = (level_counts % 2 == 0).double() * 0.5
    z = torch.atanh((level_values + offset) / half_range) - torch.atanh(offset / half_range)
    indices = quantizer(z.float().T.reshape(1, len(levels), 1, -1)).codes.flatten()
    assert torch.equal(indices, torch.arange(quantizer.num_embeddings))
    assert torch.equal(quantizer(torch.zeros(1, len(levels), 1, 1)).z_q, torch.zeros(1, len(levels), 1, 1))


def test_fsq_passes_the_gradient_of_the_bound_straight_through_the_rounding():
    quantizer = FiniteScalarQuantizer((8, 5))
    z = inputs(2).requires_grad_()
    quantizer(z).z_q.sum().backward()
    expected_z = z.detach().clone().requires_grad_()
    half_width = torch.tensor([4.0, 2.0]).view(1, -1, 1, 1)
    (quantizer.bound(expected_z) / half_width).sum().backward()
    assert torch.allclose(z.grad, expected_z.grad)
    assert (z.grad > 0).all(), "every position gets a gradient, the rounding notwithstanding"


def test_gaussian_kl_is_that_of_torch_distributions_and_evaluation_decodes_the_mean():
    bottleneck = GaussianBottleneck(code_dim=4)
    statistics = inputs(8, scale=0.7)  # mean and log-variance of D = 4
    mean, log_var = statistics.chunk(2, dim=1)
    expected = kl_divergence(Normal(mean, (0.5 * log_var).exp()), Normal(0.0, 1.0)).flatten(1).sum(1).mean()
    bottleneck.eval()
    output = bottleneck(statistics)
    assert output.figures["kl_bits"].item() == pytest.approx(expected.item() / math.log(2), rel=1e-5)
    assert torch.equal(output.z_q, mean) and output.codes is None


def test_gaussian_training_samples_have_the_posterior_moments_and_gradients():
    bottleneck = GaussianBottleneck(code_dim=3)
    mean = torch.tensor([0.5, -1.0, 2.0]).view(1, 3, 1, 1).expand(20000, 3, 1, 1)
    log_var = torch.tensor([0.0, -2.0, 1.0]).view(1, 3, 1, 1).expand(20000, 3, 1, 1)
    statistics = torch.cat([mean, log_var], dim=1).clone().requires_grad_()
    torch.manual_seed(0)
    z = bottleneck(statistics).z_q
    assert torch.allclose(z.mean((0, 2, 3)), mean[0].flatten(), atol=0.05)
    assert torch.allclose(z.var((0, 2, 3)), log_var[0].flatten().exp(), rtol=0.05)
    z.sum().backward()
    assert torch.all(statistics.grad[:, :3] == 1.0), "dz/dmean is 1 (the reparameterisation trick)"
    assert statistics.grad[:, 3:].abs().sum() > 0, "the log-variance learns through the noise"


@pytest.mark.parametrize("kl_weight", [0.0, 1.0, 0.25])
def test_gaussian_loss_is_the_kl_weight_times_the_kl_per_pixel(kl_weight):
    model = VQVAE(model_config("gaussian", hidden_size=8, code_dim=4, kl_weight=kl_weight))
    output = model(torch.rand(3, 1, 28, 28) * 2 - 1)
    assert output.quantized.z_q.shape == (3, 4, 7, 7)
    loss = model.bottleneck_loss(output.quantized)
    kl_nats = output.quantized.figures["kl_bits"].item() * math.log(2)
    assert loss.item() == pytest.approx(kl_weight * kl_nats / IMAGE_PIXELS, rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("levels", [(8, 8, 8), (4, 4), (3, 5, 7, 2)])
def test_fsq_config_takes_k_and_d_from_the_levels(levels):
    with pytest.raises(TypeError):  # K and D are not FSQ's to choose
        model_config("fsq", fsq_levels=list(levels), num_embeddings=7, code_dim=33)
    config = model_config("fsq", fsq_levels=list(levels))
    model = VQVAE(config)
    assert (model.bottleneck.num_embeddings, model.bottleneck.code_dim, config.bottleneck_config.fsq_levels) == (
        math.prod(levels), len(levels), levels)
    assert isinstance(model.bottleneck, FiniteScalarQuantizer) and model.discrete
    assert model.encode(torch.zeros(2, 1, 28, 28)).max() < math.prod(levels)


def test_the_default_bottleneck_is_the_vq():
    model = VQVAE(VQVAEConfig())
    assert isinstance(model.bottleneck, VectorQuantizer) and model.discrete
    assert not VQVAE(VQVAEConfig(bottleneck="gaussian")).discrete


@pytest.mark.parametrize("bottleneck, field, value, message", [
    ("vq", "bottleneck", "vqgan", "bottleneck must be one of"),
    ("fsq", "fsq_levels", (8, 1), "fsq_levels must be integers >= 2"),
    ("fsq", "fsq_levels", (), "fsq_levels must be integers >= 2"),
    ("gaussian", "kl_weight", -1.0, "kl_weight must be a number from 0 to"),
])
def test_a_config_that_cannot_be_built_names_its_field(bottleneck, field, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        if field == "bottleneck":
            VQVAEConfig(bottleneck=value)
        else:
            model_config(bottleneck, **{field: value})


def test_a_bottleneck_without_its_constructor_cannot_be_made():
    """from_config is the interface's abstract method: a new bottleneck missing it fails when it is made, not later
    inside the autoencoder."""
    class Incomplete(Bottleneck):
        def forward(self, z_e):
            return z_e

    with pytest.raises(TypeError, match="abstract method from_config"):
        Incomplete()


@dataclass
class WidthConfig:
    code_dim: int = 4


@dataclass
class LevelsConfig:
    levels: int = 3


@pytest.mark.parametrize("code_dim, expected", [(4, 4), (0, 8)])
def test_the_default_dims_read_and_give_the_configs_code_dim(code_dim, expected):
    """Without its own dims a bottleneck reads and gives D channels, D its Config's code_dim or, for 0, the encoder's
    hidden size; the registered bottlenecks that keep the default are built exactly so wide. A Config without
    code_dim is told to give its own dims."""
    class Plain(Bottleneck):
        Config = WidthConfig

        @classmethod
        def from_config(cls, config, hidden_size):
            return cls()

    class Levelled(Plain):
        Config = LevelsConfig

    assert Plain.dims(WidthConfig(code_dim), hidden_size=8) == (expected, expected)
    with pytest.raises(TypeError, match="give Levelled its own dims"):
        Levelled.dims(LevelsConfig(), hidden_size=8)
    for name in ("vq", "rvq", "simvq"):
        config = model_config(name, hidden_size=8, code_dim=code_dim, num_embeddings=8)
        model = VQVAE(config)
        assert BOTTLENECKS[name].dims(config.bottleneck_config, 8) == (expected, expected), name
        assert (model.bottleneck.input_dim, model.bottleneck.code_dim) == (expected, expected), name
        z_e = model.to_code_space(torch.zeros(1, 8, 7, 7))
        assert z_e.shape[1] == expected and model.from_code_space(model.bottleneck(z_e).z_q).shape[1] == 8, name
