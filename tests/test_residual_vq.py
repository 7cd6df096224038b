"""Residual VQ (`--bottleneck rvq`): each level picks the code nearest to what the levels before it left, z_q is the
sum of the picks, and the prior reads all L codes of every position, in order; recomputed by brute force here."""
import numpy as np
import pytest
import torch

import generate
from helpers import assert_every_loss_term_trains, model_config, tiny_run_in
from modules import VQVAE
from pixel_distributions import images_to_inputs
from prior import CodePrior, PriorConfig
from residual_vq import ResidualVQConfig, ResidualVectorQuantizer
from vqmnist.checkpoints.loading import load_model
from vqmnist.io.data import load_mnist


def quantizer(depth: int, codebook_update: str = "ema", beta: float = 0.25) -> ResidualVectorQuantizer:
    torch.manual_seed(depth)
    config = ResidualVQConfig(num_embeddings=8, code_dim=3, depth=depth, codebook_update=codebook_update, beta=beta,
                              restart_threshold=0.0)
    return ResidualVectorQuantizer(config, 3)


@pytest.mark.parametrize("depth", [2, 3])
def test_each_level_picks_the_code_nearest_to_the_residual_by_brute_force(depth):
    rvq = quantizer(depth)
    rvq.train()(torch.randn(4, 3, 5, 5))  # the first training batch places the codebooks (k-means++)
    rvq.eval()
    z_e = torch.randn(2, 3, 5, 5)
    output = rvq(z_e)
    assert output.codes.shape == (2, depth, 5, 5)
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, 3)
    residual, total = flat.clone(), torch.zeros_like(flat)
    for level in range(depth):
        codebook = rvq.levels[level].embedding.weight.detach()
        chosen = torch.cdist(residual, codebook).argmin(1)  # (N,) every distance, the nearest
        assert torch.equal(output.codes[:, level].reshape(-1), chosen)
        residual, total = residual - codebook[chosen], total + codebook[chosen]
    expected = total.view(2, 5, 5, 3).permute(0, 3, 1, 2)
    assert torch.allclose(output.z_q, expected, atol=1e-6)
    assert torch.allclose(rvq.embed(output.codes), expected, atol=1e-6)
    assert output.losses["commitment"].item() == pytest.approx(0.25 * (z_e - expected).pow(2).mean().item(), rel=1e-5)


def test_each_added_level_leaves_a_smaller_residual():
    errors = []
    for depth in (2, 3, 4):
        rvq = quantizer(depth)
        z_e = torch.randn(16, 3, 7, 7)
        output = rvq.train()(z_e)
        errors.append((output.z_q - z_e).pow(2).mean().item())
        # Each level's codebook is its own: the same torch.manual_seed places each level's codes apart.
        assert not torch.equal(rvq.levels[0].embedding.weight, rvq.levels[1].embedding.weight)
    assert errors[0] > errors[1] > errors[2]


def test_the_codebook_loss_is_each_levels_against_its_residual_and_reaches_every_codebook():
    rvq = quantizer(2, codebook_update="loss")
    rvq.train()(torch.randn(4, 3, 5, 5))
    z_e = torch.randn(2, 3, 5, 5)
    output = rvq(z_e)
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, 3)
    first = rvq.levels[0].embedding.weight[output.codes[:, 0].reshape(-1)].detach()
    second = rvq.levels[1].embedding.weight[output.codes[:, 1].reshape(-1)].detach()
    expected = (first - flat).pow(2).mean() + (second - (flat - first)).pow(2).mean()
    assert output.losses["codebook"].item() == pytest.approx(expected.item(), rel=1e-5)
    output.losses["codebook"].backward()
    assert all(level.embedding.weight.grad.abs().sum() > 0 for level in rvq.levels)


@pytest.mark.parametrize("codebook_update", ["ema", "loss"])
def test_every_loss_term_reaches_the_encoder_output_or_a_trained_parameter(codebook_update):
    """Under EMA no level's codebook is the optimizer's, so a codebook loss would train nothing and only add a constant
    to the loss logged and checked: there is none. With the codebook loss there is, and it reaches the codebooks."""
    rvq = quantizer(2, codebook_update=codebook_update)
    rvq.train()(torch.randn(4, 3, 5, 5))  # the first training batch places the codebooks
    z_e = torch.randn(2, 3, 5, 5, requires_grad=True)
    output = rvq(z_e)
    assert_every_loss_term_trains(output.losses, rvq, z_e, codebook_update)


def test_counts_keep_each_levels_codes_apart():
    rvq = quantizer(2)
    codes = torch.tensor([[[[1]], [[1]]], [[[7]], [[0]]]])  # (2, L=2, 1, 1): code 1 on both levels, then 7 and 0
    counts = rvq.count_codes(codes)
    assert counts.shape == (16,) and counts.nonzero().flatten().tolist() == [1, 7, 8, 9]


def test_a_config_that_normalises_residuals_or_has_one_level_is_refused():
    with pytest.raises(ValueError, match="cosine must be false"):
        ResidualVQConfig(cosine=True)
    with pytest.raises(ValueError, match="depth must be an integer from 2"):
        ResidualVQConfig(depth=1)
    assert VQVAE(model_config("rvq", num_embeddings=8, depth=3)).bottleneck.code_levels == 3


def test_the_prior_reads_a_positions_levels_in_order_and_each_levels_codes_as_its_own_tokens():
    prior = CodePrior(PriorConfig(num_embeddings=8, grid_size=2, levels=2, width=16, num_layers=1, num_heads=2)).eval()
    codes = torch.arange(8).view(1, 2, 2, 2)  # (B, L, 2, 2): level 0 holds 0..3, level 1 holds 4..7
    sequence = prior.to_sequence(codes)
    assert sequence.tolist() == [[0, 4, 1, 5, 2, 6, 3, 7]]  # position 0's two levels, then position 1's, ...
    assert torch.equal(prior.from_sequence(sequence), codes)
    assert prior.token_offsets.tolist() == [0, 8, 0, 8, 0, 8, 0, 8]
    classes = torch.tensor([1])
    logits = prior(codes, classes)  # (1, 8, 8): each place's distribution given the places before it
    changed = codes.clone()
    changed[0, 0, 0, 1] = 3  # position 1's level-0 code: place 2 in the sequence
    moved = (prior(changed, classes) - logits).abs().amax(-1)[0]
    assert (moved[:3] == 0).all() and (moved[3:] > 0).all(), "place 3 (position 1's level 1) reads place 2"


@pytest.fixture(scope="module")
def rvq_run(tmp_path_factory):
    return tiny_run_in(tmp_path_factory.mktemp("rvq"), bottleneck="rvq") / "models" / "tiny" / "best.pt"


@pytest.mark.parametrize("keep_rows", [1, 4])
def test_completion_keeps_both_levels_of_the_kept_rows_and_samples_the_rest(keep_rows, rvq_run, tiny_mnist, tmp_path,
                                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    generate.main(generate.build_parser().parse_args(["--model", str(rvq_run), "--input", "complete", "--data-folder",
                                                      str(tiny_mnist), "--save-codes", "codes.npy", "--seed", "3",
                                                      "--keep-rows", str(keep_rows)]))
    grids = np.load("codes.npy").reshape(10, 10, 2, 7, 7)  # row i: digit i's own grid of two levels, its completions
    model, prior, _, _ = load_model(rvq_run)
    images, labels = load_mnist(tiny_mnist, train=False)
    own = model.encode(images_to_inputs(images)).numpy()  # (N, 2, 7, 7)
    for digit in range(10):
        assert any((grids[digit, 0] == own[i]).all() for i in np.flatnonzero(labels.numpy() == digit))
        assert (grids[digit, 1:, :, :keep_rows] == grids[digit, 0, :, :keep_rows]).all()
    generator = torch.Generator().manual_seed(3)
    torch.randperm(len(labels), generator=generator)  # the draw that picks the digits comes first
    prefix = torch.from_numpy(grids[:, 0, :, :keep_rows]).permute(0, 2, 3, 1).flatten(1).repeat_interleave(9, 0)
    expected = prior.sample(torch.arange(10).repeat_interleave(9), 1.0, 0.75, generator, prefix)
    assert np.array_equal(grids[:, 1:].reshape(90, 2, 7, 7), expected.numpy())
