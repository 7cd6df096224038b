"""End to end on tiny MNIST-format files: train one short epoch, generate every grid, evaluate; the checkpoint,
run.json and TensorBoard hold what they should, and every model option is stored and rebuilt."""
import json
from dataclasses import fields

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import evaluate
import generate
from helpers import model_config, tiny_run_in, train_tiny
from modules import BOTTLENECKS, VQVAE, VQVAEConfig
from prior import PriorConfig
from vqmnist.checkpoints.loading import load_model
from vqmnist.configuration import training_flags
from vqmnist.configuration.errors import UserError
from vqmnist.scores.samples import FRECHET_MIN_SAMPLES

TILE, PADDING = 28, 2  # make_grid's default padding


def assert_grid_of_tiles(path):
    """A 10x10 make_grid of 28x28 tiles: 10 tiles and 11 padding lines each way, the padding lines all black."""
    pixels = np.asarray(Image.open(path).convert("L"))
    side = 10 * TILE + 11 * PADDING
    assert pixels.shape == (side, side)
    padding_lines = [i * (TILE + PADDING) + offset for i in range(11) for offset in range(PADDING)]
    assert not pixels[padding_lines, :].any() and not pixels[:, padding_lines].any()
    tiles = [pixels[r * 30 + 2:r * 30 + 30, c * 30 + 2:c * 30 + 30] for r in range(10) for c in range(10)]
    assert sum(tile.any() for tile in tiles) >= 90, "most tiles are blank"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The folder of the default tiny run (one epoch, then its prior), trained once for the tests that only read it
    (each writes its pictures in a folder of its own)."""
    return tiny_run_in(tmp_path_factory.mktemp("tiny_run"))


def test_train_generate_evaluate(tiny_run, tiny_mnist, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for name in ("best.pt", "last.pt"):
        assert (tiny_run / "models" / "tiny" / name).is_file()
    checkpoint = torch.load(tiny_run / "models" / "tiny" / "last.pt", weights_only=True)
    config = checkpoint["config"]
    assert config["hidden_size"] == 8 and config["bottleneck_config"]["num_embeddings"] == 16
    assert checkpoint["epoch"] == 1 and checkpoint["step"] == 4  # 256 training images in batches of 64

    events = EventAccumulator(str(tiny_run / "logs" / "tiny"), size_guidance={"images": 0, "histograms": 0})
    events.Reload()
    tags = events.Tags()
    for tag in ("train/loss", "train/loss_reconstruction", "train/loss_commitment", "train/perplexity",
                "val/loss_reconstruction", "val/codebook_usage", "val/perplexity"):
        assert tag in tags["scalars"], tag
    # The default EMA codebook learns from no loss, so none is logged or added to the loss.
    assert "train/loss_codebook" not in tags["scalars"]
    assert len(events.Scalars("train/loss")) == 4
    assert "val/code_usage" in tags["histograms"] and "val/reconstructions" in tags["images"]

    model = str(tiny_run / "models" / "tiny" / "best.pt")
    generate.main(generate.build_parser().parse_args(
        ["--model", model, "--input", "MNIST", "--filename", "recon", "--data-folder", str(tiny_mnist)]))
    for extra in (["--input", "random"], ["--input", "random", "--digit", "3"], ["--input", "random",
                  "--unconditional", "--temperature", "0.5"], ["--input", "noise"]):
        name = "_".join(flag.lstrip("-") for flag in extra)
        generate.main(generate.build_parser().parse_args(["--model", model, "--filename", name, *extra]))
        assert_grid_of_tiles(tmp_path / "generatedImages" / f"{name}.png")
    for name in ("recon.png", "recon_input.png"):
        assert_grid_of_tiles(tmp_path / "generatedImages" / name)

    capsys.readouterr()
    evaluate.main(evaluate.build_parser().parse_args(["--model", model, "--json", "--data-folder", str(tiny_mnist),
                                                      "--samples", "100"]))
    report = json.loads(capsys.readouterr().out)
    assert 0 < report["test_mse"] < 1
    assert report["psnr"] == pytest.approx(10 * np.log10(1 / report["test_mse"]))
    assert 0 < report["codebook_usage"] <= 1 and 1 <= report["perplexity"] <= 16
    samples = report["samples"]
    kinds = ("prior_conditional", "prior_unconditional", "prior_no_class", "noise", "real", "real_training")
    assert samples["count"] == 100 and set(kinds) <= set(samples)
    for kind in kinds:
        assert 0 <= samples[kind]["recognisable"] <= 1 and 0 <= samples[kind]["class_entropy"] <= 1 + 1e-9
        assert samples[kind]["frechet_distance"] >= 0
    assert 0 <= samples["prior_conditional"]["matches_class"] <= 1


def test_run_json_holds_the_figures_of_each_epoch(tiny_mnist, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train_tiny(tiny_mnist, "--num-epochs", "2")
    figures = json.loads((tmp_path / "models" / "tiny" / "run.json").read_text())
    last = torch.load(tmp_path / "models" / "tiny" / "last.pt", weights_only=True)
    best = torch.load(tmp_path / "models" / "tiny" / "best.pt", weights_only=True)
    autoencoder, prior = figures["autoencoder"], figures["prior"]
    assert [row["epoch"] for row in autoencoder["epochs"]] == [1, 2]
    assert [row["step"] for row in autoencoder["epochs"]] == [4, 8]
    for key, value in last["val"].items():
        assert autoencoder["epochs"][-1][key] == value, key
    assert autoencoder["epochs"][-1]["psnr"] == pytest.approx(10 * np.log10(1 / last["val"]["mse"]))
    assert autoencoder["best_epoch"] == best["epoch"] and autoencoder["seconds"] > 0
    assert [row["epoch"] for row in prior["epochs"]] == [1] and prior["seconds"] > 0
    assert prior["epochs"][0]["val_nll_bits"] == best["prior"]["val_nll_bits"]
    assert "stopped" not in figures


def test_generate_checks_architecture_flags_against_the_checkpoint(tiny_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = str(tiny_run / "models" / "tiny" / "best.pt")
    generate.main(generate.build_parser().parse_args(["--model", model, "--input", "random", "--hidden-size", "8"]))
    with pytest.raises(UserError, match="--hidden-size 8, not 40"):
        generate.main(generate.build_parser().parse_args(["--model", model, "--hidden-size", "40"]))
    with pytest.raises(UserError, match="--k 16, not 512"):
        generate.main(generate.build_parser().parse_args(["--model", model, "--k", "512"]))


def test_training_refuses_to_overwrite_a_run_unless_asked(tiny_mnist, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train_tiny(tiny_mnist)
    before = (tmp_path / "models" / "tiny" / "best.pt").read_bytes()
    with pytest.raises(UserError, match="--overwrite"):
        train_tiny(tiny_mnist, "--seed", "1")
    assert (tmp_path / "models" / "tiny" / "best.pt").read_bytes() == before
    train_tiny(tiny_mnist, "--seed", "1", "--overwrite")
    assert (tmp_path / "models" / "tiny" / "best.pt").read_bytes() != before


def test_missing_data_fails_before_creating_run_folders(tmp_path, monkeypatch, offline):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="MNIST files not found"):
        train_tiny(tmp_path / "no-data")
    assert not (tmp_path / "models").exists() and not (tmp_path / "logs").exists()


@pytest.mark.parametrize("filename, expected", [("recon", "recon.png"), ("recon.png", "recon.png"),
                                                ("sweep/seed1", "sweep/seed1.png"), ("v1.2", "v1.2.png")])
def test_grid_file_names(filename, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert generate.output_path(filename) == generate.OUTPUT_FOLDER / expected


def test_worker_processes_do_not_change_the_result(tiny_run, tiny_mnist, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    without_workers = torch.load(tiny_run / "models" / "tiny" / "last.pt", weights_only=True)["model"]
    train_tiny(tiny_mnist, "--num-workers", "2")
    with_workers = torch.load(tmp_path / "models" / "tiny" / "last.pt", weights_only=True)["model"]
    for name, tensor in without_workers.items():
        assert torch.equal(tensor, with_workers[name]), name


@pytest.mark.parametrize("flags, stored", [
    ([], {"codebook_update": "ema", "codebook_init": "kmeans++", "code_dim": 4}),
    (["--codebook", "loss", "--init", "uniform", "--restart-threshold", "0", "--code-dim", "0", "--beta", "1"],
     {"codebook_update": "loss", "codebook_init": "uniform", "restart_threshold": 0.0, "code_dim": 0, "beta": 1.0}),
    (["--cosine", "--init", "random", "--decoder-output", "logits", "--decay", "0.9"],
     {"cosine": True, "codebook_init": "random", "decoder_output": "logits", "ema_decay": 0.9}),
    (["--decoder-output", "linear", "--num-residual-blocks", "0", "--lr-schedule", "constant"],
     {"decoder_output": "linear", "num_residual_blocks": 0}),
    (["--amp"], {"codebook_update": "ema"}),
    (["--decoder-output", "logistic", "--mixture-components", "3"], {"decoder_output": "logistic",
                                                                     "mixture_components": 3}),
])
def test_quantizer_options_are_stored_and_rebuilt(flags, stored, tiny_mnist, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    train_tiny(tiny_mnist, "--code-dim", "4", *flags)
    path = tmp_path / "models" / "tiny" / "best.pt"
    config = torch.load(path, weights_only=True)["config"]
    for key, value in stored.items():
        assert {**config, **config["bottleneck_config"]}[key] == value, key
    model = load_model(path).model
    assert model.bottleneck.code_dim == (config["bottleneck_config"]["code_dim"] or 8), "D = 0 is --hidden-size's"
    capsys.readouterr()
    evaluate.main(evaluate.build_parser().parse_args(["--model", str(path), "--json", "--data-folder",
                                                      str(tiny_mnist), "--samples", "20"]))
    assert 0 < json.loads(capsys.readouterr().out)["test_mse"] < 1
    generate.main(generate.build_parser().parse_args(["--model", str(path), "--input", "MNIST",
                                                      "--data-folder", str(tiny_mnist)]))
    assert_grid_of_tiles(tmp_path / "generatedImages" / "MNIST.png")


def test_each_config_field_has_one_flag_that_sets_it():
    parser = training_flags.build_parser()
    dests = set(vars(parser.parse_args([])))
    assert {field.name for field in fields(VQVAEConfig)} - dests == {"in_channels", "bottleneck_config"}
    for bottleneck in BOTTLENECKS.values():
        assert {field.name for field in fields(bottleneck.Config)} <= dests
    prior_fields = {name.removeprefix("prior_") for name in dests if name.startswith("prior_")}
    set_from_the_autoencoder = {"num_embeddings", "grid_size", "levels", "num_classes"}
    assert {field.name for field in fields(PriorConfig)} - prior_fields == set_from_the_autoencoder
    args = parser.parse_args(["--k", "7", "--hidden-size", "8", "--code-dim", "0", "--decay", "0.5", "--init", "random",
                              "--prior-layers", "5", "--prior-heads", "3", "--prior-width", "9"])
    assert training_flags.model_config(args) == model_config(num_embeddings=7, hidden_size=8, code_dim=0, ema_decay=0.5,
                                                             codebook_init="random")
    assert VQVAE(training_flags.model_config(args)).bottleneck.code_dim == 8, "--code-dim 0 means D = --hidden-size"
    assert training_flags.prior_config(args) == PriorConfig(num_layers=5, num_heads=3, width=9)


@pytest.mark.parametrize("count", [1, 2])
def test_too_few_samples_give_no_frechet_distance_and_keep_every_other_score(count, tiny_run, tiny_mnist, tmp_path,
                                                                            monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    flags = ["--model", str(tiny_run / "models" / "tiny" / "best.pt"), "--data-folder", str(tiny_mnist), "--samples",
             str(count)]
    capsys.readouterr()
    evaluate.main(evaluate.build_parser().parse_args([*flags, "--json"]))
    samples = json.loads(capsys.readouterr().out)["samples"]
    for kind in ("prior_conditional", "prior_unconditional", "prior_no_class", "noise", "real", "real_training"):
        assert samples[kind]["frechet_distance"] is None
        assert 0 <= samples[kind]["recognisable"] <= 1
    evaluate.main(evaluate.build_parser().parse_args(flags))
    table = capsys.readouterr().out
    assert "test MSE" in table and f"no Frechet distance for fewer than {FRECHET_MIN_SAMPLES} samples" in table
