"""Hostile files and flags are refused in one line before any work or allocation: a checkpoint whose sizes are valid
integers but absurd, numbers out of a run's range, a judge or output that cannot serve, a replaced run's leftovers,
folder names that are not names, and hints that point the right way."""
import pickle
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import evaluate
import generate
from helpers import format_2, signal_on_call, tiny_run_in, train_tiny
from options import MAX_CODES
import train_classifier
from vqmnist.checkpoints.format import load_checkpoint, load_prior, save_checkpoint
from vqmnist.checkpoints.loading import load_model
from vqmnist.configuration import training_flags
from vqmnist.configuration.errors import RunStopped, UserError
from vqmnist.configuration.limits import MAX_MODEL_VALUES
from vqmnist.scores import samples as scores

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """models/tiny/best.pt (with its prior) of the tiny one-epoch run."""
    return tiny_run_in(tmp_path_factory.mktemp("hostile")) / "models" / "tiny" / "best.pt"


def edited(checkpoint: dict, path: Path, edit) -> Path:
    copy = {**checkpoint, "config": {**checkpoint["config"], "bottleneck_config": dict(
        checkpoint["config"]["bottleneck_config"])}}
    if "prior" in checkpoint:
        copy["prior"] = {**checkpoint["prior"], "config": dict(checkpoint["prior"]["config"])}
    edit(copy)
    save_checkpoint(path, copy)
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["config"]["bottleneck_config"].update(num_embeddings=10 ** 9), "num_embeddings must be an integer"),
    (lambda c: c["config"].update(hidden_size=60_000), "the autoencoder would hold"),
    (lambda c: c["config"].update(num_residual_blocks=10 ** 6), "num_residual_blocks must be an integer"),
    (lambda c: c["config"]["bottleneck_config"].update(code_dim=60_000, num_embeddings=100_000),
     "the autoencoder would hold"),
])
def test_a_checkpoint_asking_for_an_absurd_autoencoder_is_refused_before_it_is_built(edit, message, tiny_run, tmp_path,
                                                                                      monkeypatch):
    path = edited(torch.load(tiny_run, weights_only=True), tmp_path / "crafted.pt", edit)
    built = []
    # Counted on the meta device, which allocates nothing; a convolution made anywhere else was allocated.
    monkeypatch.setattr(torch.nn.Conv2d, "reset_parameters",
                        lambda self: built.append(self) if self.weight.device.type != "meta" else None)
    with pytest.raises(UserError, match=message) as error:
        load_model(path)
    assert "\n" not in str(error.value) and not built, "nothing of it was allocated"


def test_a_format_2_checkpoint_with_an_absurd_codebook_is_refused(tiny_run, tmp_path):
    checkpoint = format_2(torch.load(tiny_run, weights_only=True))
    checkpoint["config"]["num_embeddings"] = 10 ** 9
    save_checkpoint(tmp_path / "old.pt", checkpoint)
    with pytest.raises(UserError, match=f"num_embeddings must be an integer from 1 to {MAX_CODES:,}"):
        load_model(tmp_path / "old.pt")


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["prior"]["config"].update(width=8192, num_layers=200, num_heads=8), "the prior would hold"),
    (lambda c: c["prior"]["config"].update(num_embeddings=10 ** 9), "num_embeddings must be an integer"),
    (lambda c: c["prior"]["config"].update(grid_size=10 ** 5), "grid_size must be an integer"),
])
def test_a_checkpoint_asking_for_an_absurd_prior_is_refused_before_it_is_built(edit, message, tiny_run, tmp_path):
    path = edited(torch.load(tiny_run, weights_only=True), tmp_path / "crafted.pt", edit)
    with pytest.raises(UserError, match=message):
        load_model(path)


@pytest.mark.parametrize("flags", [
    ["--threads", "1000"], ["--threads", str(10 ** 21)], ["--seed", str(2 ** 70)], ["--seed", "-1"],
    ["--k", str(10 ** 9)], ["--bottleneck", "fsq", "--fsq-levels", "100000,100000"], ["--batch-size", "60000"],
    ["--lr", "1e308"], ["--time-limit", "1e300"], ["--prior-layers", "100000"], ["--beta", "inf"],
])
def test_vqvae_numbers_out_of_a_runs_range_are_flag_errors(flags, capsys):
    with pytest.raises(SystemExit) as exit_:
        training_flags.build_parser().parse_args(flags)
    assert exit_.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize("script, flags", [
    (evaluate, ["--seed", str(2 ** 70)]), (evaluate, ["--temperature", "1e-300"]),
    (evaluate, ["--guidance", "1e308"]), (evaluate, ["--samples", str(10 ** 9)]),
    (evaluate, ["--top-k", "-1"]), (evaluate, ["--top-p", "0"]), (evaluate, ["--top-p", "1.5"]),
    (training_flags, ["--prior-distorted", "1.5"]), (training_flags, ["--prior-distorted", "-0.1"]),
    (train_classifier, ["--batch-size", "60000"]), (train_classifier, ["--seed", str(2 ** 70)]),
])
def test_other_scripts_numbers_out_of_range_are_flag_errors(script, flags, capsys):
    with pytest.raises(SystemExit) as exit_:
        script.build_parser().parse_args(flags)
    assert exit_.value.code == 2 and "must be" in capsys.readouterr().err


@pytest.mark.parametrize("flags", [["--hidden-size", "60000"], ["--prior-width", "8192", "--prior-layers", "200",
                                                                 "--prior-heads", "8"]])
def test_flags_asking_for_an_absurd_model_are_refused_before_anything_is_made(flags, tiny_mnist, tmp_path,
                                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=f"would hold .* more than the {MAX_MODEL_VALUES:,}"):
        train_tiny(tiny_mnist, *flags)
    assert not (tmp_path / "models").exists()


def fail_if_scored(*args, **kwargs):
    raise AssertionError("the test set was scored before the bad flag was found")


@pytest.mark.parametrize("kind", ["missing", "a VQ-VAE checkpoint", "a pickle", "integer weights"])
def test_a_bad_classifier_is_refused_before_scoring_with_no_warning_beside_the_line(kind, tiny_run, tiny_mnist,
                                                                                   tmp_path, monkeypatch):
    judge = {"missing": tmp_path / "nothere.pt", "a VQ-VAE checkpoint": tiny_run,
             "a pickle": tmp_path / "evil.pt", "integer weights": tmp_path / "int.pt"}[kind]
    if kind == "a pickle":
        judge.write_bytes(pickle.dumps(print))  # protocol 4: torch.load would warn of it
    if kind == "integer weights":
        state = torch.load(ROOT / "pretrained" / "mnist_classifier.pt", weights_only=True)
        state["model"] = {name: tensor.long() for name, tensor in state["model"].items()}
        save_checkpoint(judge, state)
    monkeypatch.setattr(evaluate, "score_reconstructions", fail_if_scored)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would be a second line on stderr
        with pytest.raises(UserError, match="classifier"):
            evaluate.main(evaluate.build_parser().parse_args(["--model", str(tiny_run), "--data-folder",
                                                              str(tiny_mnist), "--classifier", str(judge)]))


@pytest.mark.parametrize("output", ["a folder", "under a file"])
def test_the_classifiers_output_is_checked_before_training(output, tiny_mnist, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    path = {"a folder": tmp_path, "under a file": tmp_path / "file" / "classifier.pt"}[output]
    monkeypatch.setattr(train_classifier, "load_mnist", fail_if_scored)
    with pytest.raises(UserError, match="is a folder|cannot write"):
        train_classifier.main(train_classifier.build_parser().parse_args(["--output", str(path), "--data-folder",
                                                                          str(tiny_mnist)]))


def test_an_overwrite_stopped_in_its_first_epoch_leaves_nothing_of_the_replaced_run(tiny_mnist, tmp_path,
                                                                                    monkeypatch):
    monkeypatch.chdir(tmp_path)
    train_tiny(tiny_mnist, "--num-epochs", "2", bottleneck="gaussian")
    with monkeypatch.context() as patch:
        signal_on_call(patch, torch.optim.Adam, "step", 2, signal.SIGTERM)
        with pytest.raises(RunStopped):
            train_tiny(tiny_mnist, "--overwrite")
    model_dir = tmp_path / "models" / "tiny"
    assert not (model_dir / "best.pt").exists(), "the Gaussian run's best.pt would be taken for the VQ run's"
    assert load_checkpoint(model_dir / "last.pt")["config"]["bottleneck"] == "vq"
    with pytest.raises(UserError, match="no checkpoint at"):
        generate.main(generate.build_parser().parse_args(["--model", str(model_dir / "best.pt")]))


@pytest.mark.parametrize("name", [".", ""])
def test_an_output_folder_that_is_no_name_is_a_flag_error(name):
    with pytest.raises(SystemExit) as exit_:
        training_flags.build_parser().parse_args(["--output-folder", name])
    assert exit_.value.code == 2


@pytest.mark.parametrize("place, hint", [
    ("models/study/x/best.pt", "--output-folder study/x --prior-only"),
    ("elsewhere/model.pt", "copy it to models/NAME/best.pt"),
])
def test_the_no_prior_hint_names_the_run_folder_or_how_to_make_one(place, hint, tiny_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    checkpoint = torch.load(tiny_run, weights_only=True)
    del checkpoint["prior"]
    (tmp_path / place).parent.mkdir(parents=True)
    save_checkpoint(tmp_path / place, checkpoint)
    with pytest.raises(UserError, match=hint):
        load_prior(checkpoint, Path(place), None)


def test_a_resume_error_shows_levels_as_they_are_typed(tiny_mnist, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with monkeypatch.context() as patch:
        signal_on_call(patch, torch.optim.Adam, "step", 2, signal.SIGTERM)
        with pytest.raises(RunStopped):
            train_tiny(tiny_mnist, bottleneck="fsq")
    with pytest.raises(UserError, match="its own --fsq-levels 4,4: drop --fsq-levels 4,4,4,"):
        train_tiny(tiny_mnist, "--resume", "--bottleneck", "fsq", "--fsq-levels", "4,4,4", bottleneck=None)


def test_prior_only_for_a_run_that_is_not_there_makes_no_folder(tiny_mnist, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="train the autoencoder first"):
        train_tiny(tiny_mnist, "--prior-only", "--output-folder", "nothere")
    assert not (tmp_path / "models" / "nothere").exists()


def test_help_and_flag_errors_do_not_wait_for_torchvision_or_torchmetrics():
    """vqvae.py's imports, which --help and a flag error pay, leave out what only training and scoring need."""
    loaded = subprocess.run([sys.executable, "-c", "import sys, vqvae; print(sorted({name.split('.')[0] for name in "
                             "sys.modules} & {'torchvision', 'torchmetrics'}))"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.strip()
    assert loaded == "[]"
    assert scores.DigitClassifier  # the judge stays importable from where it was
