"""Every benchmark refuses a bad flag, file or output place in one line with exit status 2, before any work: no
training, sampling or scoring, no subprocess, nothing written; the counts it prints are the counts it used (the
sampling floor's digits, the frontier's samples); and study.py's --train-flags cannot set what the study sets itself.

Each benchmark but the study runs as `python -m benchmarks.NAME` runs it (runpy, as __main__, in this process, which
saves a Python start a case); the study's main runs through run_cli with its ROOT in tmp_path and its scripts
faked, as in test_study_folders.py."""
import runpy
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import prior
from benchmarks import frontier, loops, study
from helpers import tiny_run_in, write_tiny_mnist
from test_benchmarks import fake_scripts
from vqmnist.configuration.cli import run_cli
from vqmnist.configuration.limits import MAX_SEED
from vqmnist.io import data
from vqmnist.scores import samples as sample_scores
from vqmnist.scores.samples import FRECHET_MIN_SAMPLES

ROOT = Path(__file__).resolve().parent.parent
VALIDATION = 100  # the tiny run's validation split: 220 training images of its 320 are left
TRAINING = 220
BROKEN = "/MNIST/raw/"  # a refusal of the broken data names the file it cannot read


class Work(AssertionError):
    """What a benchmark did that a refused command must not do."""


@pytest.fixture
def no_work(monkeypatch):
    """Make any work a benchmark could start fail the test: a subprocess (training, scoring, a busy process), a
    prior's sample, an encoding of grids, a timed loop."""
    def work(what):
        def refuse(*args, **kwargs):
            raise Work(f"a refused command did work: {what}")
        return refuse

    monkeypatch.setattr(subprocess, "run", work("subprocess.run"))
    monkeypatch.setattr(subprocess, "Popen", work("subprocess.Popen"))
    monkeypatch.setattr(prior.CodePrior, "sample", work("CodePrior.sample"))
    monkeypatch.setattr(prior, "encode_images", work("encode_images"))
    for name in ("autoencoder_plain", "autoencoder_project", "prior_plain", "prior_project"):
        monkeypatch.setattr(loops, name, work(name))


def run_benchmark(name: str, *flags: str, monkeypatch, capsys) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `python -m benchmarks.NAME FLAGS`, run as __main__ in this process."""
    monkeypatch.setattr(sys, "argv", [str(ROOT / "benchmarks" / f"{name}.py"), *flags])
    with warnings.catch_warnings(), pytest.raises(SystemExit) as exit_:
        warnings.simplefilter("ignore", RuntimeWarning)  # runpy's: the module is imported already
        runpy.run_module(f"benchmarks.{name}", run_name="__main__")
    captured = capsys.readouterr()
    return exit_.value.code, captured.out, captured.err


def assert_one_line_refusal(name: str, result: tuple[int, str, str], expected: str) -> None:
    code, out, err = result
    lines = err.splitlines()
    assert (code, out) == (2, "") and len(lines) == 1, (code, out, err)
    assert lines[0].startswith(f"{name}.py: error: ") and expected in lines[0], lines


@pytest.fixture(scope="module")
def broken_data(tmp_path_factory) -> str:
    """A data folder whose MNIST files are not gzip files."""
    raw = tmp_path_factory.mktemp("broken") / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (raw / f"{name}.gz").write_bytes(b"not a gzip file")
    return str(raw.parent.parent)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict]:
    """A folder with the tiny run (a VQ and its prior, VALIDATION validation digits) in models/tiny, its data in
    data/ and a copy of its best.pt without the prior; and the tiny data's checksums."""
    folder = tiny_run_in(tmp_path_factory.mktemp("tiny"), "--val-size", str(VALIDATION))
    checkpoint = torch.load(folder / "models" / "tiny" / "best.pt", weights_only=True)
    del checkpoint["prior"]
    torch.save(checkpoint, folder / "no_prior.pt")
    return folder, write_tiny_mnist(folder / "checksums")


@pytest.fixture
def tiny_files(tiny, broken_data, monkeypatch) -> dict:
    """The tiny run's files and others by what they are, the tiny data's checksums accepted as MNIST's."""
    folder, checksums = tiny
    monkeypatch.setattr(data, "MNIST_MD5", checksums)
    return {"model": str(folder / "models" / "tiny" / "best.pt"), "no prior": str(folder / "no_prior.pt"),
            "data": str(folder / "data"), "broken data": broken_data, "missing": str(folder / "nothing.pt"),
            "not a checkpoint": str(folder / "data" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz")}


# --- sampling.py

SAMPLING_FLAGS = {
    "guidance nan": (["--guidance", "nan"], "argument --guidance: must be a number from 0 to 100, got nan"),
    "a nan among guidances": (["--guidance", "0.5,nan"], "got nan"),
    "guidance inf": (["--guidance", "inf"], "got inf"),
    "temperature 0": (["--temperatures", "0"], "argument --temperatures: must be a number from 0.01"),
    "temperature nan": (["--temperatures", "nan"], "argument --temperatures"),
    "top-k -1": (["--top-k", "-1"], "argument --top-k: must be an integer from 0"),
    "top-p 0": (["--top-p", "0"], "argument --top-p: must be a number above 0 and at most 1, got 0"),
    "top-p 1.5": (["--top-p", "1.5"], "argument --top-p"),
    "repeats 0": (["--repeats", "0"], "argument --repeats: must be an integer from 1"),
    "a negative seed": (["--seeds", "-1"], "argument --seeds"),
    "a seed twice": (["--seeds", "0,1,0"], "0 is given twice"),
    "an empty value": (["--temperatures", "1.0,"], "argument --temperatures"),
    "too few samples": (["--samples", str(FRECHET_MIN_SAMPLES - 1)], "argument --samples"),
}


@pytest.mark.parametrize("case", SAMPLING_FLAGS)
def test_sampling_refuses_a_bad_value_in_one_line_before_any_work(case, no_work, monkeypatch, capsys):
    flags, expected = SAMPLING_FLAGS[case]
    assert_one_line_refusal("sampling", run_benchmark("sampling", *flags, monkeypatch=monkeypatch, capsys=capsys),
                            expected)


SAMPLING_FILES = {
    "a missing model": (["--model", "missing"], "no checkpoint at"),
    "a file that is no checkpoint": (["--model", "not a checkpoint"], "is not a checkpoint written by vqvae.py"),
    "a model without a prior": (["--model", "no prior"], "holds no prior over the codes"),
    "unreadable data": (["--model", "model", "--data-folder", "broken data"], BROKEN),
    "a missing classifier": (["--model", "model", "--data-folder", "data", "--classifier", "missing"],
                             "no classifier at"),
    # 1,000 samples by default, and a floor of 1,000 real digits, from a split of 100: refused, not misprinted
    "a split smaller than the samples": (["--model", "model", "--data-folder", "data"],
                                         f"holds {VALIDATION} digits, fewer than the --samples 1,000"),
    "a split one digit short": (["--model", "model", "--data-folder", "data", "--samples", str(VALIDATION + 1)],
                                f"pass --samples {VALIDATION} or fewer"),
}


def with_files(flags: list[str], files: dict) -> list[str]:
    """The flags with each name of tiny_files replaced by its path."""
    return [files.get(flag, flag) for flag in flags]


@pytest.mark.parametrize("case", SAMPLING_FILES)
def test_sampling_refuses_a_bad_file_in_one_line_before_any_work(case, tiny_files, no_work, monkeypatch, capsys):
    flags, expected = SAMPLING_FILES[case]
    result = run_benchmark("sampling", *with_files(flags, tiny_files), monkeypatch=monkeypatch, capsys=capsys)
    assert_one_line_refusal("sampling", result, expected)


def test_the_sampling_floor_and_samples_are_the_counts_printed(tiny_files, monkeypatch, capsys):
    scored = []
    original = sample_scores.score_samples

    def counted(classifier, pixels, reference, *args, **kwargs):
        scored.append((len(pixels), len(reference)))
        return original(classifier, pixels, reference, *args, **kwargs)

    monkeypatch.setattr(sample_scores, "score_samples", counted)
    code, out, err = run_benchmark_to_the_end("sampling", "--model", tiny_files["model"], "--data-folder",
                                              tiny_files["data"], "--samples", str(FRECHET_MIN_SAMPLES), "--seeds",
                                              "0", "--temperatures", "1", "--guidance", "0.75", "--repeats", "1",
                                              monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, err
    assert f"floor: {FRECHET_MIN_SAMPLES} random validation digits of {VALIDATION}, " in out
    assert f"each setting: {FRECHET_MIN_SAMPLES} samples of each kind a seed" in out
    # the floor, then the digit asked for and the unconditional samples of the one setting, each against the split
    assert scored == [(FRECHET_MIN_SAMPLES, VALIDATION)] * 3
    assert out.splitlines()[-1].startswith("| 1.0 | 0.75 | 0 | 1.0 | ")


def run_benchmark_to_the_end(name: str, *flags: str, monkeypatch, capsys) -> tuple[int, str, str]:
    """As run_benchmark, for a command that may end without SystemExit (status 0)."""
    monkeypatch.setattr(sys, "argv", [str(ROOT / "benchmarks" / f"{name}.py"), *flags])
    code = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            runpy.run_module(f"benchmarks.{name}", run_name="__main__")
        except SystemExit as exit_:
            code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- prior_fit.py

PRIOR_FIT = {
    "train grids -100": (["--train-grids", "-100"], "argument --train-grids: must be an integer from 1"),
    "train grids 0": (["--train-grids", "0"], "argument --train-grids"),
    "train grids 1.5": (["--train-grids", "1.5"], "argument --train-grids"),
    "a missing model": (["--model", "missing"], "no checkpoint at"),
    "a file that is no checkpoint": (["--model", "not a checkpoint"], "is not a checkpoint written by vqvae.py"),
    "a model without a prior": (["--model", "no prior"], "holds no prior over the codes"),
    "unreadable data": (["--model", "model", "--data-folder", "broken data"], BROKEN),
    "more grids than the split": (["--model", "model", "--data-folder", "data", "--train-grids", str(TRAINING + 1)],
                                  f"more than the {TRAINING} grids of the training split"),
}


@pytest.mark.parametrize("case", PRIOR_FIT)
def test_prior_fit_refuses_a_bad_value_or_file_in_one_line_before_any_work(case, tiny_files, no_work, monkeypatch,
                                                                            capsys):
    flags, expected = PRIOR_FIT[case]
    result = run_benchmark("prior_fit", *with_files(flags, tiny_files), monkeypatch=monkeypatch, capsys=capsys)
    assert_one_line_refusal("prior_fit", result, expected)


# --- speed.py

SPEED = {
    "steps 0": (["--steps", "0"], "argument --steps"),
    "repeats 0": (["--repeats", "0"], "argument --repeats"),
    "warmup -1": (["--warmup", "-1"], "argument --warmup"),
    "batch size 0": (["--batch-size", "0"], "argument --batch-size"),
    "prior batch size 0": (["--prior-batch-size", "0"], "argument --prior-batch-size"),
    "threads -1": (["--threads", "-1"], "argument --threads"),
    "cuda without a GPU": (["--device", "cuda"], "--device cuda: CUDA is not available"),
    "a loop alone beside a busy process": (["--loop", "prior-plain", "--beside-busy"], "--beside-busy does not apply"),
    "a profile's repeats": (["--profile", "prior-plain", "--repeats", "2"], "--repeats does not apply"),
    "the ablation's own settings": (["--ablation", "--no-amp"], "--amp does not apply with --ablation"),
    "the ablation and a full run": (["--ablation", "--full"], "--full does not apply"),
    "compile for the plain loop": (["--loop", "autoencoder-plain", "--compile"], "--compile does not apply"),
    "a batch size for the prior alone": (["--loop", "prior-project", "--batch-size", "8"],
                                         "--batch-size does not apply"),
    "unreadable data": (["--data-folder", "broken data"], BROKEN),
}


@pytest.mark.parametrize("case", SPEED)
def test_speed_refuses_a_bad_value_in_one_line_before_any_work(case, broken_data, no_work, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    flags, expected = SPEED[case]
    result = run_benchmark("speed", *with_files(flags, {"broken data": broken_data}), monkeypatch=monkeypatch,
                           capsys=capsys)
    assert_one_line_refusal("speed", result, expected)


# --- quality.py, frontier.py, gpu_check.py: their work is subprocesses, which no_work refuses


def out_places(tmp_path) -> dict:
    """A file, and a place under a file: no output folder can be either."""
    (tmp_path / "taken").write_text("a file")
    return {"a file": str(tmp_path / "taken"), "under a file": str(tmp_path / "taken" / "tables")}


QUALITY = {
    "a negative seed": (["--seeds", "-1"], "argument --seeds"),
    "epochs 0": (["--epochs", "0"], "argument --epochs"),
    "ablation epochs 0": (["--ablation", "--ablation-epochs", "0"], "argument --ablation-epochs"),
    "a seed twice": (["--seeds", "1", "1"], "1 is given twice"),
    "cuda without a GPU": (["--device", "cuda"], "--device cuda: CUDA is not available"),
    "epochs the ablation ignores": (["--ablation", "--epochs", "5"], "--epochs does not apply with --ablation"),
    "seeds the ablation ignores": (["--ablation", "--seeds", "1", "2"], "on one seed, not the 2 of --seeds 1 2"),
    "ablation epochs without the ablation": (["--ablation-epochs", "5"], "--ablation-epochs does not apply"),
}


@pytest.mark.parametrize("case", QUALITY)
def test_quality_refuses_a_bad_value_in_one_line_before_any_work(case, no_work, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    flags, expected = QUALITY[case]
    assert_one_line_refusal("quality", run_benchmark("quality", *flags, monkeypatch=monkeypatch, capsys=capsys),
                            expected)


FRONTIER = {
    "a negative seed": (["--seeds", "-1"], "argument --seeds"),
    "a seed too large": (["--seeds", str(MAX_SEED + 1)], "argument --seeds"),
    "a seed twice": (["--seeds", "3", "3"], "3 is given twice"),
    "a preset twice": (["--presets", "fast", "fast"], "fast is given twice"),
    "an unknown preset": (["--presets", "fastest"], "argument --presets: invalid choice"),
    "cuda without a GPU": (["--device", "cuda"], "--device cuda: CUDA is not available"),
    "an --out-dir that is a file": (["--out-dir", "a file"], "is a file, not a folder"),
    "an --out-dir under a file": (["--out-dir", "under a file"], "cannot write to it (Not a directory)"),
}


@pytest.mark.parametrize("case", FRONTIER)
def test_frontier_refuses_a_bad_value_or_place_in_one_line_before_any_training(case, tmp_path, no_work, monkeypatch,
                                                                                capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    flags, expected = FRONTIER[case]
    result = run_benchmark("frontier", *with_files(flags, out_places(tmp_path)), monkeypatch=monkeypatch,
                           capsys=capsys)
    assert_one_line_refusal("frontier", result, expected)


def test_the_frontier_scores_as_many_samples_as_it_prints(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(frontier, "ROOT", tmp_path)
    commands = []
    scores = {"test_mse": 0.001, "psnr": 30.0, "codes_used": 500, "num_embeddings": 512, "rate_bits": 250.0,
              "samples": {"prior_conditional": {"recognisable": 0.9, "matches_class": 0.9, "frechet_distance": 1.0},
                          "prior_unconditional": {"recognisable": 0.9, "frechet_distance": 2.0},
                          "real": {"frechet_distance": 0.5}}}
    monkeypatch.setattr(frontier, "run_script", fake_scripts(tmp_path, commands, {"autoencoder": {"seconds": 1.0},
                                                                                  "prior": {"seconds": 2.0}},
                                                             lambda command: scores))
    frontier.main(frontier.build_parser().parse_args(["--presets", "fast", "--seeds", "0"]))
    evaluation = commands[1]
    assert evaluation[0] == "evaluate.py"
    count = int(evaluation[evaluation.index("--samples") + 1])
    assert f"Samples: {count:,} of each kind per seed" in capsys.readouterr().out
    assert count == frontier.SAMPLES


GPU_CHECK = {
    "an --out-dir that is a file": (["--device", "cpu", "--out-dir", "a file"], "is a file, not a folder"),
    "an --out-dir under a file": (["--device", "cpu", "--out-dir", "under a file"], "cannot write to it"),
    "cuda without a GPU": (["--out-dir", "fresh"], "--device cuda: CUDA is not available"),
    "an unknown device": (["--device", "gpu", "--out-dir", "fresh"], "argument --device: invalid choice"),
}


@pytest.mark.parametrize("case", GPU_CHECK)
def test_gpu_check_refuses_a_bad_value_or_place_in_one_line_before_any_step(case, tmp_path, no_work, monkeypatch,
                                                                             capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    places = {**out_places(tmp_path), "fresh": str(tmp_path / "fresh")}
    flags, expected = GPU_CHECK[case]
    result = run_benchmark("gpu_check", *with_files(flags, places), monkeypatch=monkeypatch, capsys=capsys)
    assert_one_line_refusal("gpu_check", result, expected)
    assert not list(tmp_path.rglob("gpu_check.log"))


# --- study.py


@pytest.fixture
def fake_study(tmp_path, monkeypatch):
    """study.py with its ROOT in tmp_path and its scripts faked; the commands it runs, as a list that grows."""
    monkeypatch.setattr(study, "ROOT", tmp_path)
    monkeypatch.setattr(sys, "argv", ["benchmarks/study.py"])
    commands = []
    monkeypatch.setattr(study, "run_script", fake_scripts(tmp_path, commands, {}, lambda command: {}))
    return commands


TRAIN_FLAGS = {
    "epochs and seed": ("k", "--num-epochs 2 --seed 7", "--train-flags --num-epochs: the study sets it from its own "
                        "--epochs"),
    "an abbreviated epochs": ("k", "--num-ep 2", "--train-flags --num-epochs"),
    "a seed with =": ("k", "--seed=7", "--train-flags --seed: the study sets it from its own --seed"),
    "the prior's epochs": ("k", "--prior-epochs 0", "--train-flags --prior-epochs"),
    "the output folder": ("k", "--output-folder X", "--train-flags --output-folder: the study names each row's folder"),
    "the data": ("k", "--dataset kmnist", "--train-flags --dataset"),
    "the device": ("k", "--device cuda", "--train-flags --device"),
    "a time limit": ("k", "--time-limit 60", "--train-flags --time-limit"),
    "a resume": ("k", "--resume", "--train-flags --resume"),
    "the prior alone": ("k", "--prior-only", "--train-flags --prior-only"),
    "a row's K": ("k", "--k 32", "--train-flags --k: the rows of --study k set it themselves"),
    "a row's bottleneck": ("bottleneck", "--bottleneck fsq", "--train-flags --bottleneck: the rows of --study "
                           "bottleneck set it themselves"),
    "a row's decoder": ("likelihood", "--decoder-output tanh", "--train-flags --decoder-output"),
    "a flag vqvae.py refuses": ("k", "--batch-size 0", "--train-flags: vqvae.py would refuse them: argument "
                                "--batch-size"),
    "no flag of vqvae.py": ("k", "--frob 1", "--train-flags: vqvae.py would refuse them: unrecognized arguments"),
    "a flag one row refuses": ("bottleneck", "--k 32", "vqvae.py would refuse the row 'FSQ, levels 8,8,8 (512 codes)' "
                               "with them: --k does not apply to --bottleneck fsq"),
    "a prior that cannot be": ("k", "--prior-heads 3", "--prior-heads 3 must divide --prior-width 128"),
    "help": ("k", "--help", "--train-flags: --help is not a flag to train with"),
}


@pytest.mark.parametrize("case", TRAIN_FLAGS)
def test_the_study_refuses_train_flags_it_sets_itself_before_any_training(case, fake_study, tmp_path, capsys):
    name, flags, expected = TRAIN_FLAGS[case]
    args = study.build_parser().parse_args(["--study", name, f"--train-flags={flags}", "--out-dir",
                                            str(tmp_path / "tables")])
    with pytest.raises(SystemExit) as exit_:
        run_cli(study.main, args)
    lines = capsys.readouterr().err.splitlines()
    assert exit_.value.code == 2 and len(lines) == 1 and lines[0].startswith("study.py: error: "), lines
    assert expected in lines[0], lines[0]
    assert fake_study == [] and not (tmp_path / "models").exists() and not (tmp_path / "tables").exists()


def test_every_flag_the_study_gives_a_row_is_one_train_flags_cannot_set():
    args = study.build_parser().parse_args(["--study", "all"])
    given = study.vqvae_arguments(study.row_command(study.DEFAULT, args)).typed
    assert given <= study.STUDY_SETS.keys()
