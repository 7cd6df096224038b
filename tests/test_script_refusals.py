"""evaluate.py, generate.py and export_model.py check everything before any work, and say what they did.

Each class of the rule has its test here:
- every count printed is the count used (the fitted scale's validation digits, a grid of fewer than 100 digits);
- every refusal comes before the work, in one line and exit status 2 (a validation split or a training split the data
  cannot give, running out of memory, an --output that names no file), and nothing that is not refused fails later
  (a --classifier given while the default judge is absent);
- a typed flag that cannot apply is refused in one line naming why (refuse_inapplicable), whatever the script;
- messages name the right cause: the missing --data-folder, the data set scored, no "--k None", the log scale as used,
  and a file that exists is not replaced without --overwrite.
Two tiny runs serve them all: a VQ with its prior (tanh decoder, 64 validation digits) and a Gaussian VAE.
"""
import gzip
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import evaluate
import export_model
import generate
from helpers import blob_images, idx_images, idx_labels, tiny_run_in
from pixel_distributions import MIN_LOG_SCALE
from vqmnist.checkpoints.format import save_checkpoint
from vqmnist.configuration.cli import run_cli

ROOT = Path(__file__).resolve().parent.parent
VAL_SIZE = 64  # the tiny run's --val-size


@pytest.fixture(scope="module")
def vq_run(tmp_path_factory) -> Path:
    """The folder of a tiny VQ run with its prior; its tiny digits, read as --dataset own, are in own_data(folder)."""
    return tiny_run_in(tmp_path_factory.mktemp("refusals_vq"))


@pytest.fixture(scope="module")
def gaussian_model(tmp_path_factory) -> Path:
    return tiny_run_in(tmp_path_factory.mktemp("refusals_gaussian"), bottleneck="gaussian") / "models" / "tiny" / \
        "best.pt"


def best(folder: Path) -> Path:
    return folder / "models" / "tiny" / "best.pt"


def own_data(folder: Path) -> str:
    """The tiny run's MNIST-format files, which --dataset own reads as they are (no MD5 to match)."""
    return str(folder / "data" / "MNIST" / "raw")


def edited(source: Path, target: Path, edit) -> Path:
    checkpoint = torch.load(source, weights_only=True)
    edit(checkpoint)
    save_checkpoint(target, checkpoint)
    return target


@pytest.fixture(scope="module")
def no_prior_model(vq_run, tmp_path_factory) -> Path:
    """The tiny VQ run's best.pt without its prior."""
    return edited(best(vq_run), tmp_path_factory.mktemp("no_prior") / "no_prior.pt", lambda c: c.pop("prior"))


def refused(capsys, script, *flags) -> str:
    """The one line `script` refuses flags with, under run_cli: exit status 2, nothing on stdout (no score, no
    'wrote'), and on stderr that line alone."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        run_cli(script.main, script.build_parser().parse_args([str(flag) for flag in flags]))
    out, err = capsys.readouterr()
    assert exit_.value.code == 2, err
    assert out == "" and err.count("\n") == 1 and err.startswith(f"{Path(sys.argv[0]).name}: error: "), \
        (out, err)
    return err


def no_work(*_args, **_kwargs):
    raise AssertionError("work began before the refusal")


@pytest.fixture
def quick_fit(monkeypatch) -> list[int]:
    """evaluate.py's fit of the tanh decoder's scale (a grid search of seconds) made at once: it finds a log scale
    0.2 below the logistic's range, as the search's finer steps around a best point at the range's end can; the
    returned list collects the counts of images it is given."""
    fitted = []
    monkeypatch.setattr(evaluate, "fit_log_scale",
                        lambda model, images, *rest: fitted.append(len(images)) or MIN_LOG_SCALE - 0.2)
    return fitted


# --- every count printed is the count used ---

def test_the_fitted_scale_names_the_validation_digits_it_was_fitted_on_and_the_data_set(vq_run, quick_fit, capsys):
    capsys.readouterr()
    evaluate.main(evaluate.build_parser().parse_args(["--model", str(best(vq_run)), "--dataset", "own",
                                                      "--data-folder", own_data(vq_run), "--samples", "0"]))
    out = capsys.readouterr().out
    assert quick_fit == [VAL_SIZE]
    assert f"fitted on all {VAL_SIZE} of the run's validation digits" in out and "1,000" not in out
    assert f"test set of own data in {own_data(vq_run)}, 120 images" in out and "MNIST test set" not in out
    assert f"scale exp({MIN_LOG_SCALE:.3f})" in out, "the log scale as used, held to the logistic's range"


def write_own(folder: Path, train: int, test: int) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, count, seed in (("train", train, 1), ("t10k", test, 2)):
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_images(blob_images(count, seed))))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_labels(torch.arange(count) % 10)))
    return str(folder)


def test_a_grid_of_fewer_test_digits_than_100_says_it_shows_them_all(vq_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    data = write_own(tmp_path / "twenty", train=100, test=20)
    capsys.readouterr()
    generate.main(generate.build_parser().parse_args(["--model", str(best(vq_run)), "--dataset", "own",
                                                      "--data-folder", data, "--save-codes", "codes.npy"]))
    out = capsys.readouterr().out
    assert f"reconstructions of all 20 test digits in {data}, fewer than the grid's 100" in out
    assert np.load("codes.npy").shape == (20, 7, 7) and "the 20 code grids behind it" in out


# --- refused before the work, in one line ---

def test_a_validation_split_the_data_cannot_give_is_refused_before_any_score(vq_run, capsys, monkeypatch):
    """The instance: the pretrained model (5,000 validation digits, a tanh decoder whose scale is fitted on them) on
    data of 320 training digits."""
    monkeypatch.setattr(evaluate, "score_reconstructions", no_work)
    err = refused(capsys, evaluate, "--model", ROOT / "pretrained" / "vqvae_mnist.pt", "--dataset", "own",
                  "--data-folder", own_data(vq_run), "--samples", "0")
    assert "the last 5,000 of its training set (vqvae.py --val-size 5000)" in err and "holds 320" in err
    assert "pass the --data-folder and --dataset it trained on" in err


def test_an_unreadable_training_split_is_refused_before_any_score(vq_run, tmp_path, capsys, monkeypatch):
    data = tmp_path / "damaged"
    shutil.copytree(own_data(vq_run), data)
    for path in data.glob("train-images-idx3-ubyte*"):  # gzipped, and as the MNIST loader unpacked it
        path.write_bytes(b"\x1f\x8b not a gzip")
    monkeypatch.setattr(evaluate, "score_reconstructions", no_work)
    err = refused(capsys, evaluate, "--model", best(vq_run), "--dataset", "own", "--data-folder", data,
                  "--samples", "0")
    assert "train-images-idx3-ubyte" in err and "is not a readable gzip file" in err


@pytest.mark.parametrize("where, error, advice", [
    ("score_reconstructions", torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
     "pass a smaller --batch-size than 1,000"),
    ("fit_log_scale", RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"),
     "pass a smaller --batch-size than 1,000"),
    ("sample_scores", MemoryError(), "pass fewer --samples than 20"),
])
def test_running_out_of_memory_is_one_line_naming_the_flag_to_lower(where, error, advice, vq_run, quick_fit, capsys,
                                                                    monkeypatch):
    def out_of_memory(*_args, **_kwargs):
        raise error

    monkeypatch.setattr(evaluate, where, out_of_memory)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        run_cli(evaluate.main, evaluate.build_parser().parse_args([
            "--model", str(best(vq_run)), "--dataset", "own", "--data-folder", own_data(vq_run), "--samples", "20",
            "--json"]))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "out of memory while scoring" in err and advice in err


def test_a_classifier_given_while_the_default_judge_is_absent_is_used(vq_run, quick_fit, tmp_path, capsys,
                                                                     monkeypatch):
    judge = tmp_path / "judge.pt"
    shutil.copy(ROOT / "pretrained" / "mnist_classifier.pt", judge)
    monkeypatch.setattr(evaluate, "DEFAULT_CLASSIFIER", tmp_path / "absent" / "mnist_classifier.pt")
    capsys.readouterr()
    evaluate.main(evaluate.build_parser().parse_args(["--model", str(best(vq_run)), "--dataset", "own",
                                                      "--data-folder", own_data(vq_run), "--samples", "20",
                                                      "--classifier", str(judge)]))
    out = capsys.readouterr().out
    assert "samples: 20 of each kind" in out and "the judge classifies MNIST digits" not in out


@pytest.mark.parametrize("output, message", [
    ("", "--output is empty"), (".", "--output '.' names a folder"), ("newdir/", "--output 'newdir/' names a folder"),
    ("a_folder", "--output a_folder is a folder"), ("a_folder/..", "names a folder"),
])
def test_an_export_output_that_names_no_file_is_refused_before_the_model_is_read(output, message, vq_run, tmp_path,
                                                                                 capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("a_folder").mkdir()
    monkeypatch.setattr(export_model, "load_model", no_work)
    err = refused(capsys, export_model, "--model", best(vq_run), "--output", output, "--overwrite")
    assert message in err and "give a file name such as" in err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a_folder"] and not any(Path("a_folder").iterdir())


# --- a typed flag that cannot apply: one line, naming why ---

@pytest.mark.parametrize("script, model, flags, named, why", [
    (generate, "vq", ["--input", "MNIST", "--temperature", "0.5"], "--temperature", "with --input MNIST"),
    (generate, "vq", ["--input", "noise", "--top-k", "3", "--top-p", "0.9"], "--top-k and --top-p",
     "with --input noise"),
    (generate, "vq", ["--input", "codes", "--codes", "codes.npy", "--guidance", "2"], "--guidance",
     "with --input codes"),
    (generate, "vq", ["--input", "codes", "--codes", "codes.npy", "--seed", "3"], "--seed", "nothing is picked"),
    (generate, "vq", ["--input", "complete", "--unconditional", "--guidance", "2"], "--guidance",
     "no class to guide"),
    (generate, "vq", ["--input", "complete", "--digit", "3"], "--digit", "use it with --input random"),
    (generate, "vq", ["--input", "noise", "--overwrite"], "--overwrite", "without --save-codes"),
    (generate, "gaussian", ["--input", "random", "--guidance", "2"], "--guidance", "continuous bottleneck"),
    (generate, "gaussian", ["--input", "random", "--top-p", "0.9"], "--top-p", "continuous bottleneck"),
    (generate, "gaussian", ["--k", "16"], "--k", "continuous: it has no codes to count"),
    (evaluate, "vq", ["--samples", "0", "--temperature", "0.5"], "--temperature", "with --samples 0"),
    (evaluate, "vq", ["--samples", "0", "--classifier", "judge.pt"], "--classifier", "with --samples 0"),
    (evaluate, "vq", ["--samples", "0", "--seed", "3"], "--seed", "nothing is drawn at random"),
    (evaluate, "gaussian", ["--guidance", "2", "--top-k", "3"], "--guidance and --top-k", "which is continuous"),
    (evaluate, "no_prior", ["--samples", "20", "--top-p", "0.9"], "--top-p", "which holds no prior"),
    (evaluate, "vq", ["--iw-samples", "3"], "--iw-samples", "gives codes"),
])
def test_a_flag_that_cannot_apply_is_refused_in_one_line_before_any_work(script, model, flags, named, why, vq_run,
                                                                         gaussian_model, no_prior_model, tmp_path,
                                                                         capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = {"vq": best(vq_run), "gaussian": gaussian_model, "no_prior": no_prior_model}[model]
    monkeypatch.setattr(evaluate, "load_mnist", no_work)
    monkeypatch.setattr(generate, "load_mnist", no_work)
    err = refused(capsys, script, "--model", path, *flags)
    assert f"{named} {'do' if ' and ' in named else 'does'} not apply" in err and why in err and "None" not in err
    assert list(tmp_path.iterdir()) == [], "a file or folder was made"


# --- messages that name the right cause; no file replaced unasked ---

def test_save_codes_does_not_replace_a_file_without_overwrite(vq_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("codes.npy").write_bytes(b"the user's own file")
    err = refused(capsys, generate, "--model", best(vq_run), "--input", "noise", "--save-codes", "codes.npy")
    assert "codes.npy already exists: pass --overwrite to replace it" in err
    assert Path("codes.npy").read_bytes() == b"the user's own file" and list(Path("generatedImages").iterdir()) == []
    generate.main(generate.build_parser().parse_args(["--model", str(best(vq_run)), "--input", "noise",
                                                      "--save-codes", "codes.npy", "--overwrite"]))
    assert np.load("codes.npy").shape == (100, 7, 7)


@pytest.mark.parametrize("script, flags", [(evaluate, ["--samples", "0"]), (generate, ["--input", "MNIST"])])
def test_own_data_without_a_data_folder_names_the_missing_flag(script, flags, vq_run, tmp_path, capsys,
                                                               monkeypatch):
    """A model trained on its own files, scored or drawn from where --data-folder is not given: the line says the
    flag is missing and where the run read its files, not "put them there" about a folder nobody chose."""
    def trained_on_own(checkpoint):
        checkpoint["args"].update(dataset="own", data_folder="my_digits")

    model = edited(best(vq_run), tmp_path / "own.pt", trained_on_own)
    monkeypatch.chdir(tmp_path)
    err = refused(capsys, script, "--model", model, *flags)
    assert "--data-folder, which was not given" in err and "(its run read them from my_digits)" in err
    assert "put them there" not in err
