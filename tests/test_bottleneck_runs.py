"""Every bottleneck's run trains, resumes, exports, generates and evaluates like the VQ one, on the tiny data; the codes
go in and out of generate.py; the epoch reports its dead codes and restarts."""
import json
import math
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import evaluate
import export_model
import generate
from helpers import TINY_BOTTLENECKS, signal_on_call, tiny_run_in, train_tiny
from pixel_distributions import images_to_inputs
from vector_quantizer import VectorQuantizer
from vqmnist.checkpoints.loading import load_model
from vqmnist.configuration import training_flags
from vqmnist.configuration.errors import RunStopped, UserError
from vqmnist.io.data import load_mnist
import vqvae

BOTTLENECKS = list(TINY_BOTTLENECKS)
TWO_EPOCHS = ("--num-epochs", "2")


def run_generate(*flags):
    generate.main(generate.build_parser().parse_args(list(flags)))


def run_evaluate(capsys, model, data_folder, *flags) -> dict:
    capsys.readouterr()
    evaluate.main(evaluate.build_parser().parse_args(["--model", str(model), "--json", "--data-folder",
                                                      str(data_folder), *flags]))
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """tiny_runs(bottleneck): the folder of that bottleneck's tiny two-epoch run (with its prior where it has codes),
    trained on first use and shared by the module's tests."""
    folders = {}

    def folder_of(bottleneck: str) -> Path:
        if bottleneck not in folders:
            folders[bottleneck] = tiny_run_in(tmp_path_factory.mktemp(f"tiny_{bottleneck}"), *TWO_EPOCHS,
                                              bottleneck=bottleneck)
        return folders[bottleneck]

    return folder_of


@pytest.mark.parametrize("bottleneck", BOTTLENECKS)
def test_each_bottleneck_is_stored_and_rebuilt_from_its_checkpoint(bottleneck, tiny_runs):
    folder = tiny_runs(bottleneck)
    model, _, checkpoint, _ = load_model(folder / "models" / "tiny" / "best.pt")
    last = torch.load(folder / "models" / "tiny" / "last.pt", weights_only=True)
    assert model.config.bottleneck == bottleneck and last["epoch"] == 2
    # best.pt is the epoch of the lowest validation loss, whichever of the two that was on this machine
    assert checkpoint["epoch"] == last["training"]["best_epoch"] and checkpoint["epoch"] in (1, 2)
    assert ("prior" in checkpoint) == (bottleneck != "gaussian"), "a prior exactly where there are codes"
    if bottleneck == "fsq":
        assert (model.bottleneck.num_embeddings, model.bottleneck.code_dim) == (16, 2)  # levels 4,4


@pytest.mark.parametrize("bottleneck", BOTTLENECKS)
def test_each_bottleneck_evaluates_with_its_rate(bottleneck, tiny_runs, tiny_mnist, capsys):
    folder = tiny_runs(bottleneck)
    report = run_evaluate(capsys, folder / "models" / "tiny" / "best.pt", tiny_mnist, "--samples", "70")
    assert report["bottleneck"] == bottleneck and 0 < report["test_mse"] < 1 and -1 <= report["ssim"] <= 1
    model = load_model(folder / "models" / "tiny" / "best.pt").model
    test_images, _ = load_mnist(tiny_mnist, train=False)
    quantized = model(images_to_inputs(test_images)).quantized
    if bottleneck == "gaussian":  # the rate is the mean KL, recomputed here over the whole test set at once
        assert report["rate_bits"] == pytest.approx(quantized.figures["kl_bits"].item(), rel=1e-4)
        assert {"prior_unconditional", "noise", "real"} <= set(report["samples"])
        assert "prior_conditional" not in report["samples"]
    else:
        codes = quantized.codes if quantized.codes.dim() == 4 else quantized.codes.unsqueeze(1)  # (N, L, 7, 7)
        levels = torch.arange(codes.shape[1]).view(1, -1, 1, 1).expand_as(codes)
        # A code is a (level, index) pair: each level's codebook is its own.
        assert report["codes_used"] == len(torch.stack([levels.flatten(), codes.flatten()]).unique(dim=1).T)
        assert report["code_levels"] == codes.shape[1] == (2 if bottleneck == "rvq" else 1)
        assert report["rate_bound_bits"] == pytest.approx(49 * codes.shape[1] * math.log2(16))
        assert 0 < report["rate_bits"] and 0 < report["rate_bits_given_class"]
        assert {"prior_conditional", "prior_no_class"} <= set(report["samples"])


@pytest.mark.parametrize("bottleneck", BOTTLENECKS)
def test_each_bottleneck_generates_and_exports(bottleneck, tiny_runs, tiny_mnist, tmp_path, monkeypatch, capsys):
    folder = tiny_runs(bottleneck)
    monkeypatch.chdir(tmp_path)
    model = folder / "models" / "tiny" / "best.pt"
    for name, flags in (("recon", ["--input", "MNIST", "--data-folder", str(tiny_mnist)]),
                        ("samples", ["--input", "random", "--temperature", "0.7"]), ("noise", ["--input", "noise"]),
                        *([("complete", ["--input", "complete", "--data-folder", str(tiny_mnist)])]
                          if bottleneck != "gaussian" else [])):
        run_generate("--model", str(model), "--filename", name, *flags)
        assert Image.open(tmp_path / "generatedImages" / f"{name}.png").size == (302, 302)
    export_model.main(export_model.build_parser().parse_args(["--model", str(model), "--output", "shared.pt"]))
    assert run_evaluate(capsys, "shared.pt", tiny_mnist, "--samples", "0") == \
        run_evaluate(capsys, model, tiny_mnist, "--samples", "0")


@pytest.mark.parametrize("bottleneck", ["fsq", "lfq", "simvq", "gaussian", "rvq"])  # test_robustness.py resumes the VQ
def test_a_stopped_run_resumes_to_the_weights_of_an_uninterrupted_one(bottleneck, tiny_runs, tiny_mnist, tmp_path,
                                                                      monkeypatch):
    folder = tiny_runs(bottleneck)
    monkeypatch.chdir(tmp_path)
    with monkeypatch.context() as patch:
        signal_on_call(patch, torch.optim.Adam, "step", 3, signal.SIGTERM)
        with pytest.raises(RunStopped):
            train_tiny(tiny_mnist, *TWO_EPOCHS, bottleneck=bottleneck)
    train_tiny(tiny_mnist, *TWO_EPOCHS, "--resume", bottleneck=bottleneck)
    expected = torch.load(folder / "models" / "tiny" / "last.pt", weights_only=True)["model"]
    resumed = torch.load("models/tiny/last.pt", weights_only=True)["model"]
    for name, tensor in expected.items():
        assert torch.allclose(tensor.double(), resumed[name].double(), atol=1e-6), name


@pytest.mark.parametrize("bottleneck", ["vq", "fsq", "lfq", "simvq", "rvq"])
@pytest.mark.parametrize("suffix", [".npy", ".pt"])
def test_saved_codes_are_the_encoders_and_decode_to_the_same_picture(suffix, bottleneck, tiny_runs, tiny_mnist,
                                                                    tmp_path, monkeypatch):
    folder = tiny_runs(bottleneck)
    monkeypatch.chdir(tmp_path)
    model_path, data_folder = str(folder / "models" / "tiny" / "best.pt"), str(tiny_mnist)
    run_generate("--model", model_path, "--input", "MNIST", "--data-folder", data_folder, "--save-codes",
                 f"codes{suffix}", "--filename", "recon")
    codes = torch.from_numpy(np.load("codes.npy")) if suffix == ".npy" else torch.load("codes.pt", weights_only=True)
    model = load_model(model_path).model
    shown = np.asarray(Image.open("generatedImages/recon_input.png"))[2:30, 2:30, 0]  # the grid's first tile
    assert codes.shape == ((100, 2, 7, 7) if bottleneck == "rvq" else (100, 7, 7)) and codes.dtype == torch.int64
    assert torch.equal(codes[0], model.encode(images_to_inputs(torch.from_numpy(shown.copy())[None]))[0])
    run_generate("--model", model_path, "--input", "codes", "--codes", f"codes{suffix}", "--filename", "decoded")
    decoded, reconstructed = (np.asarray(Image.open(f"generatedImages/{name}.png")).astype(int)
                              for name in ("decoded", "recon"))
    # The same codes, decoded; the straight-through sum z_e + (z_q - z_e) may round one grey level differently.
    assert np.abs(decoded - reconstructed).max() <= 1


def bad_codes(kind: str, tmp_path: Path) -> str:
    path = tmp_path / ("codes.txt" if kind == "suffix" else "codes.npy")
    arrays = {"shape": np.zeros((3, 7, 8), dtype=np.int64), "range": np.full((2, 7, 7), 16, dtype=np.int64),
              "negative": np.full((2, 7, 7), -1, dtype=np.int64), "float": np.zeros((2, 7, 7), dtype=np.float32),
              "empty": np.zeros((0, 7, 7), dtype=np.int64), "suffix": np.zeros((2, 7, 7), dtype=np.int64)}
    if kind == "corrupt":
        path.write_bytes(b"not numpy")
    else:
        with open(path, "wb") as file:
            np.save(file, arrays[kind])
    return str(path)


@pytest.mark.parametrize("kind, message", [
    ("shape", "shape (3, 7, 8): code grids have shape (N, 7, 7)"), ("range", "indices from 16 to 16"),
    ("negative", "indices from -1 to -1"), ("float", "one integer tensor"), ("empty", "shape (0, 7, 7)"),
    ("corrupt", "is not a readable code file"), ("suffix", "a code file ends in .pt or .npy")])
def test_unusable_code_files_are_one_line_errors(kind, message, tiny_runs, tmp_path):
    folder = tiny_runs("vq")
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_generate("--model", str(folder / "models" / "tiny" / "best.pt"), "--input", "codes", "--codes",
                     bad_codes(kind, tmp_path))


@pytest.mark.parametrize("flags", [["--input", "codes", "--codes", "codes.npy"], ["--save-codes", "codes.npy"],
                                   ["--input", "random", "--digit", "3"]])
def test_a_gaussian_vae_refuses_codes_and_classes(flags, tiny_runs, tiny_mnist, tmp_path, monkeypatch):
    folder = tiny_runs("gaussian")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="has a continuous bottleneck"):
        run_generate("--model", str(folder / "models" / "tiny" / "best.pt"), "--data-folder", str(tiny_mnist), *flags)
    with pytest.raises(UserError, match="has a continuous bottleneck \\(gaussian\\): it has no codes for a prior"):
        monkeypatch.chdir(folder)
        vqvae.main(training_flags.build_parser().parse_args(["--output-folder", "tiny", "--prior-only", "--data-folder",
                                                             str(tiny_mnist)]))


def test_fsq_refuses_a_k_or_d_of_its_own(tiny_mnist, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="--k does not apply to --bottleneck fsq"):
        train_tiny(tiny_mnist, "--k", "16", bottleneck="fsq")
    assert not (tmp_path / "models").exists()


def test_each_epoch_reports_dead_codes_and_restarts(tiny_mnist, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    counted = []
    original = VectorQuantizer.epoch_figures

    def epoch_figures(bottleneck):
        counted.append(int(bottleneck.restarts))
        return original(bottleneck)

    monkeypatch.setattr(VectorQuantizer, "epoch_figures", epoch_figures)
    train_tiny(tiny_mnist, *TWO_EPOCHS, "--restart-threshold", "1000")  # every code dead at every step
    epochs = json.loads(Path("models/tiny/run.json").read_text())["autoencoder"]["epochs"]
    assert [epoch["restarts"] for epoch in epochs] == counted == [16 * 4, 16 * 4]  # 16 codes, 4 steps an epoch
    for epoch in epochs:
        assert epoch["dead_codes"] == 16 - epoch["codes_used"]
    assert f"dead {epochs[-1]['dead_codes']}  restarts 64" in capsys.readouterr().out
