"""The likelihood decoders and the bounds in bits per dimension: each pixel's 256 probabilities sum to 1 whatever
the decoder outputs, a hand-worked example, a uniform decoder's 8 bits, a discrete model's bound as its two parts
computed apart, the importance-weighted bound against the ELBO, the fitted scale against a brute-force search,
older checkpoints, and bad input refused in one line."""
import json
import math

import pytest
import torch

import evaluate
from helpers import blob_images, format_2, model_config, tiny_run_in, write_tiny_mnist
from modules import VQVAE
from pixel_distributions import (LEVELS, categorical_log_probs, categorical_mean, images_to_inputs, mixture_log_probs,
                                 mixture_mean, one_logistic_log_probs)
from prior import encode_images, prior_nll_bits
from vqmnist.checkpoints.format import save_checkpoint
from vqmnist.checkpoints.loading import load_model
from vqmnist.configuration import training_flags
from vqmnist.io import data
from vqmnist.io.data import load_mnist
from vqmnist.scores.bits_per_dim import continuous_bounds, decoder_bits, fit_log_scale

ALL_LEVELS = torch.arange(LEVELS)


def every_level_log_probs(log_probs, params) -> torch.Tensor:
    """log p of each of the 256 levels at every pixel of params (B, P, H, W): (B, 1, 256, H, W)."""
    batch, _, height, width = params.shape
    return torch.stack([log_probs(params, torch.full((batch, 1, height, width), level))
                        for level in ALL_LEVELS.tolist()], dim=2)


FAMILIES = {
    "logistic, 1 component": (lambda p, v: mixture_log_probs(p, v, 1), 3),
    "logistic, 5 components": (lambda p, v: mixture_log_probs(p, v, 5), 15),
    "categorical": (categorical_log_probs, LEVELS),
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("spread", [1.0, 30.0, 1e4, 1e30])
def test_each_pixels_256_probabilities_sum_to_one_and_none_is_zero(family, spread):
    log_probs, channels = FAMILIES[family]
    params = torch.randn(2, channels, 3, 3, generator=torch.Generator().manual_seed(0)) * spread
    every = every_level_log_probs(log_probs, params)
    assert torch.isfinite(every).all(), "no level of any output has probability 0: the NLL is never infinite"
    assert torch.logsumexp(every.double(), dim=2).abs().max() < 1e-5


@pytest.mark.parametrize("spread", [1.0, 30.0])
def test_the_pictured_mean_is_the_distributions_mean(spread):
    params = torch.randn(2, 15, 3, 3, generator=torch.Generator().manual_seed(1)) * spread
    mean_level = (every_level_log_probs(lambda p, v: mixture_log_probs(p, v, 5), params).exp()
                  * ALL_LEVELS.view(1, 1, -1, 1, 1)).sum(2)
    # The closed form is the continuous mixture's mean clamped to the range: within half a level of the discrete one.
    assert (mixture_mean(params, 5) * 255 - mean_level).abs().max() < 0.5
    logits = torch.randn(2, LEVELS, 3, 3) * spread
    exact = (every_level_log_probs(categorical_log_probs, logits).exp()
             * ALL_LEVELS.view(1, 1, -1, 1, 1)).sum(2) / 255
    assert torch.allclose(categorical_mean(logits), exact, atol=1e-5)


def test_a_hand_worked_two_pixel_image():
    """One logistic of mean 0 and scale 1 in [-1, 1] units; a black pixel (level 0) and a mid-grey one (level 128).
    Level 0 takes all the mass below -1 + 1/255: sigmoid(-1 + 1/255). Level 128 sits at 2 * 128/255 - 1 = 1/255, its
    bin [0, 2/255]: sigmoid(2/255) - sigmoid(0)."""
    def sigmoid(t):
        return 1 / (1 + math.exp(-t))

    expected_bits = -math.log2(sigmoid(-1 + 1 / 255)) - math.log2(sigmoid(2 / 255) - 0.5)
    params = torch.zeros(1, 3, 1, 2)  # weight logit, mean 0, log scale 0, for both pixels
    log_probs = mixture_log_probs(params, torch.tensor([[[[0, 128]]]]), 1)
    assert -log_probs.sum().item() / math.log(2) == pytest.approx(expected_bits, rel=1e-5)
    # the same through the fitted-scale likelihood: pixels at 0.5 are the mean 0 of [-1, 1]
    same = one_logistic_log_probs(torch.full((1, 1, 1, 2), 0.5), 0.0, torch.tensor([[[[0, 128]]]]))
    assert -same.sum().item() / math.log(2) == pytest.approx(expected_bits, rel=1e-5)


def test_a_uniform_decoder_gives_exactly_8_bits_per_dimension():
    torch.manual_seed(0)
    model = VQVAE(model_config(decoder_output="categorical", hidden_size=8, num_embeddings=16))
    last = model.decoder.layers[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    images = blob_images(16, seed=3)
    bits = decoder_bits(model, images, 8, "cpu")
    assert torch.allclose(bits / 784, torch.full_like(bits, 8.0), atol=1e-5)


@pytest.fixture(scope="module")
def likelihood_run(tmp_path_factory):
    """A tiny run with the logistic decoder and a prior trained for 3 epochs: its folder."""
    return tiny_run_in(tmp_path_factory.mktemp("likelihood"), "--decoder-output", "logistic", "--prior-epochs", "3")


def evaluate_json(folder, capsys, monkeypatch, *flags) -> dict:
    """evaluate.py --json on a tiny run's folder (in it, its tiny MNIST files accepted) with flags."""
    monkeypatch.chdir(folder)
    monkeypatch.setattr(data, "MNIST_MD5", write_tiny_mnist(folder / "data" / "MNIST" / "raw"))
    capsys.readouterr()
    evaluate.main(evaluate.build_parser().parse_args(
        ["--data-folder", str(folder / "data"), "--json", "--samples", "0", *flags]))
    return json.loads(capsys.readouterr().out)


def test_a_discrete_bound_is_its_decoder_nll_plus_its_prior_nll_computed_apart(likelihood_run, capsys,
                                                                                 monkeypatch):
    path = likelihood_run / "models" / "tiny" / "best.pt"
    bits = evaluate_json(likelihood_run, capsys, monkeypatch, "--model", str(path))["bits_per_dim"]
    model, prior, _, _ = load_model(path)
    images, labels = load_mnist(likelihood_run / "data", train=False)
    with torch.no_grad():
        params = model(images_to_inputs(images)).x_recon
    # the decoder's own parameters read with the mixture's log-probabilities, by hand
    pixels = -mixture_log_probs(params, images.unsqueeze(1).long(), model.config.mixture_components).sum().item() \
        / math.log(2) / len(images)
    codes = encode_images(model, images, "cpu", 64)
    rate = prior_nll_bits(prior, codes, torch.full_like(labels, prior.no_class), 64) * 49
    assert bits["pixels_given_codes"] == pytest.approx(pixels / 784, rel=1e-5)
    assert bits["learned_prior"] == pytest.approx((pixels + rate) / 784, rel=1e-5)
    assert bits["uniform_prior"] == pytest.approx((pixels + 49 * math.log2(16)) / 784, rel=1e-6)
    assert bits["uniform_prior"] >= bits["learned_prior"], "a trained prior beats uniform codes"
    assert bits["learned_prior_given_class"] > 0


def tiny_gaussian_vae() -> VQVAE:
    torch.manual_seed(0)
    return VQVAE(model_config("gaussian", decoder_output="logistic", hidden_size=8, code_dim=2)).eval()


def test_the_importance_weighted_bound_tightens_with_samples_and_beats_the_elbo():
    model, images = tiny_gaussian_vae(), blob_images(48, seed=4)
    bounds = {k: continuous_bounds(model, images, 16, "cpu", k, torch.Generator().manual_seed(0))
              for k in (1, 4, 32)}
    elbo = bounds[1].negative_elbo.mean()
    iwae = {k: bound.importance_weighted.mean() for k, bound in bounds.items()}
    assert iwae[32] < iwae[4] < iwae[1] and iwae[4] < elbo
    # the ELBO's parts add up, and with one sample the two bounds estimate the same thing
    assert torch.allclose(bounds[4].negative_elbo, bounds[4].reconstruction + bounds[4].kl)
    assert abs(iwae[1] - elbo) < 0.05 * elbo


def test_the_fitted_scale_is_the_brute_force_optimum():
    torch.manual_seed(0)
    model = VQVAE(model_config(hidden_size=8, num_embeddings=16)).eval()
    images = blob_images(8, seed=5)  # in two batches; each of the brute force's 2,250 NLLs reads every pixel
    fitted = fit_log_scale(model, images, 4, "cpu")
    with torch.no_grad():
        pixels = model.to_pixels(model(images_to_inputs(images)).x_recon)
    levels = images.unsqueeze(1).long()

    def nll(log_scale):
        return -one_logistic_log_probs(pixels, log_scale, levels).double().mean().item()

    brute = min(torch.arange(-7.0, 2.0, 0.004).tolist(), key=nll)
    assert abs(fitted - brute) < 0.004 and nll(fitted) <= nll(brute) + 1e-9
    assert math.isfinite(decoder_bits(model, images, 4, "cpu", fitted).mean().item())


@pytest.fixture(scope="module")
def tanh_run(tmp_path_factory):
    return tiny_run_in(tmp_path_factory.mktemp("tanh"))


@pytest.mark.parametrize("written_by", ["format 3, before the likelihood decoders", "format 2"])
def test_older_checkpoints_load_and_get_a_bound(written_by, tanh_run, capsys, monkeypatch):
    checkpoint = torch.load(tanh_run / "models" / "tiny" / "best.pt", weights_only=True)
    config = {name: value for name, value in checkpoint["config"].items() if name != "mixture_components"}
    old = {**checkpoint, "config": config}
    path = tanh_run / "old.pt"
    save_checkpoint(path, format_2(old) if written_by == "format 2" else old)
    bits = evaluate_json(tanh_run, capsys, monkeypatch, "--model", str(path))["bits_per_dim"]
    assert bits["decoder"] == "tanh" and -7 <= bits["fitted_log_scale"] <= 2
    assert 0 < bits["pixels_given_codes"] < min(bits["learned_prior"], bits["uniform_prior"])
    assert all(math.isfinite(value) for value in bits.values() if isinstance(value, float))


@pytest.mark.parametrize("flags, message", [
    (["--iw-samples", "0"], "must be"), (["--iw-samples", "1000000"], "must be"),
])
def test_iw_samples_out_of_range_is_a_flag_error(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        evaluate.build_parser().parse_args(flags)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_iw_samples_for_a_model_with_codes_is_refused_in_one_line(tanh_run, capsys, monkeypatch):
    with pytest.raises(evaluate.UserError, match="--iw-samples samples a continuous z"):
        evaluate_json(tanh_run, capsys, monkeypatch, "--model", str(tanh_run / "models" / "tiny" / "best.pt"),
                      "--iw-samples", "4")


@pytest.mark.parametrize("bottleneck, decoder", [("gaussian", "logistic"), ("vq", "categorical")])
def test_every_bottleneck_and_likelihood_decoder_trains_and_gets_its_bounds(bottleneck, decoder, tmp_path, capsys,
                                                                            monkeypatch):
    folder = tiny_run_in(tmp_path, "--decoder-output", decoder, bottleneck=bottleneck)
    flags = ["--iw-samples", "3"] if bottleneck == "gaussian" else []
    path = folder / "models" / "tiny" / "best.pt"
    bits = evaluate_json(folder, capsys, monkeypatch, "--model", str(path), *flags)["bits_per_dim"]
    assert bits["decoder"] == decoder and bits["fitted_log_scale"] is None
    if bottleneck == "gaussian":
        assert bits["iw_samples"] == 3 and 0 < bits["importance_weighted"] <= bits["negative_elbo"] + 0.05
        assert bits["negative_elbo"] == pytest.approx(bits["reconstruction"] + bits["kl"])
    else:
        assert 0 < bits["pixels_given_codes"] < bits["uniform_prior"] < 8 + 49 * 4 / 784


def test_mixture_components_for_another_decoder_is_refused_in_one_line():
    with pytest.raises(evaluate.UserError, match="--mixture-components is the logistic decoder's"):
        training_flags.check_request(training_flags.build_parser().parse_args(["--mixture-components", "3"]))


def test_a_checkpoint_with_an_unknown_decoder_output_is_refused_in_one_line(tanh_run, capsys, monkeypatch):
    checkpoint = torch.load(tanh_run / "models" / "tiny" / "best.pt", weights_only=True)
    path = tanh_run / "crafted.pt"
    save_checkpoint(path, {**checkpoint, "config": {**checkpoint["config"], "decoder_output": "gibbs"}})
    with pytest.raises(evaluate.UserError, match="cannot build: decoder_output must be one of"):
        evaluate_json(tanh_run, capsys, monkeypatch, "--model", str(path))
