"""benchmarks/study.py against hostile folders and flags: a kept scores.json it cannot read is scored again, a
run.json or evaluate.py output it cannot read, an --out-dir it cannot write, a bad number flag and a second study
at once are each one line with exit status 2."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import study
from test_benchmarks import fake_scores, fake_scripts
from vqmnist.configuration.cli import run_cli
from vqmnist.configuration.errors import UserError
from vqmnist.scores.samples import DigitClassifier

ROOT = Path(__file__).resolve().parent.parent
RUN_FIGURES = {"autoencoder": {"seconds": 5.0}, "prior": {"seconds": 7.0}}
ROW = study.STUDIES["bottleneck"][1]  # the default VQ
FOLDER = "study/default-e3-p2-s0"  # its run under the default flags


@pytest.fixture
def fake_study(tmp_path, monkeypatch):
    """study.py with its ROOT in tmp_path and its scripts faked (vqvae.py writes RUN_FIGURES, evaluate.py prints a
    VQ's scores); returns the commands run, as a list that grows."""
    monkeypatch.setattr(study, "ROOT", tmp_path)
    monkeypatch.setattr(sys, "argv", ["benchmarks/study.py"])  # run_cli names the script from it
    commands = []
    monkeypatch.setattr(study, "run_script", fake_scripts(tmp_path, commands, RUN_FIGURES,
                                                          lambda command: fake_scores("vq", 150.25)))
    return commands


def parse(*flags: str):
    return study.build_parser().parse_args(["--study", "k", *flags])


def one_error_line(capsys) -> str:
    """The one line a failed study printed on stderr, without its `study.py: error: `."""
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("study.py: error: "), lines
    return lines[0].removeprefix("study.py: error: ")


def without_wall_time(scores: dict) -> dict:
    return {key: value for key, value in scores.items() if key != "wall_seconds"}


GOOD = fake_scores("vq", 150.25)
UNREADABLE = {
    "empty": b"",
    "not JSON": b'{"test_mse": 0.0015, ',
    "not UTF-8": b"\xff\xfe\x00garbage",
    "a list": b"[1, 2, 3]",
    "null": b"null",
    "nested too deep": b"[" * 100_000 + b"]" * 100_000,
    "larger than any scores": b" " * (2 << 20) + json.dumps(GOOD).encode(),
    **{f"without {key}": json.dumps({k: v for k, v in GOOD.items() if k != key}).encode()
       for key in ("test_mse", "psnr", "ssim", "rate_bits", "seconds", "samples")},
    "without the real digits' scores": json.dumps({**GOOD, "samples": {"count": 1000}}).encode(),
    "codes without their count": json.dumps({k: v for k, v in GOOD.items() if k != "num_embeddings"}).encode(),
    "a text test_mse": json.dumps({**GOOD, "test_mse": "low"}).encode(),
    "seconds as a list": json.dumps({**GOOD, "seconds": [60.4, 100.6]}).encode(),
}


@pytest.mark.parametrize("content", UNREADABLE.values(), ids=UNREADABLE.keys())
def test_a_kept_scores_file_the_table_cannot_read_is_scored_again(content, fake_study, tmp_path, capsys):
    model_dir = tmp_path / "models" / FOLDER
    model_dir.mkdir(parents=True)
    for checkpoint in ("best.pt", "last.pt"):
        (model_dir / checkpoint).write_bytes(b"")
    (model_dir / "scores.json").write_bytes(content)
    scores = study.train_and_score(ROW, parse())
    assert capsys.readouterr().err.splitlines()[0] == (
        f"study: models/{FOLDER}/scores.json is unreadable; scoring the row again")
    # A finished run's --resume trains nothing, so the row is evaluated again on its best.pt.
    assert [command[0] for command in fake_study] == ["vqvae.py", "evaluate.py"]
    assert "--resume" in fake_study[0] and fake_study[1][2] == str(model_dir / "best.pt")
    expected = {**GOOD, "seconds": {"autoencoder": 5.0, "prior": 7.0}}
    assert without_wall_time(scores) == expected
    assert without_wall_time(json.loads((model_dir / "scores.json").read_text())) == expected


def test_an_unreadable_kept_scores_file_without_checkpoints_trains_the_row_again(fake_study, tmp_path, capsys):
    model_dir = tmp_path / "models" / FOLDER
    model_dir.mkdir(parents=True)
    (model_dir / "scores.json").write_text("")
    study.train_and_score(ROW, parse())
    assert "scores.json is unreadable; scoring the row again" in capsys.readouterr().err
    assert "--overwrite" in fake_study[0] and fake_study[0][fake_study[0].index("--num-epochs") + 1] == "3"


KEPT = {"VQ": GOOD, "Gaussian without a rate": fake_scores("gaussian", None),
        "without a prior's samples": {**GOOD, "samples": {k: v for k, v in GOOD["samples"].items()
                                                          if k != "prior_unconditional"}}}


@pytest.mark.parametrize("scores", KEPT.values(), ids=KEPT.keys())
def test_kept_scores_the_table_can_read_are_read_back(scores, fake_study, tmp_path, capsys):
    model_dir = tmp_path / "models" / FOLDER
    model_dir.mkdir(parents=True)
    (model_dir / "scores.json").write_text(json.dumps(scores))
    assert study.train_and_score(ROW, parse()) == scores
    assert fake_study == [] and capsys.readouterr().err == ""


RUN_JSON = {"missing": None, "empty": b"", "not JSON": b"{", "a list": b"[]",
            "a part without its seconds": json.dumps({"autoencoder": {"epochs": []}}).encode(),
            "seconds as text": json.dumps({"autoencoder": {"seconds": "5"}}).encode()}


@pytest.mark.parametrize("content", RUN_JSON.values(), ids=RUN_JSON.keys())
def test_a_run_json_unreadable_after_training_is_one_line(content, tmp_path, monkeypatch):
    monkeypatch.setattr(study, "ROOT", tmp_path)
    commands = []

    def fake_run(command):
        commands.append(command)
        if content is not None:
            folder = tmp_path / "models" / command[command.index("--output-folder") + 1]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "run.json").write_bytes(content)
        return ""

    monkeypatch.setattr(study, "run_script", fake_run)
    with pytest.raises(UserError) as error:
        study.train_and_score(ROW, parse())
    assert str(error.value) == (f"models/{FOLDER}/run.json is missing or unreadable after vqvae.py trained it: "
                                f"delete models/{FOLDER} and run the study again to train the row anew")
    assert [command[0] for command in commands] == ["vqvae.py"], "nothing is evaluated"


EVALUATIONS = {"not JSON": "Warning: something\n{}", "a list": "[]", "scores without the table's":
               json.dumps({"test_mse": 0.1})}


@pytest.mark.parametrize("output", EVALUATIONS.values(), ids=EVALUATIONS.keys())
def test_an_evaluation_the_table_cannot_read_is_one_line_and_not_kept(output, tmp_path, monkeypatch):
    monkeypatch.setattr(study, "ROOT", tmp_path)
    fake_run = fake_scripts(tmp_path, [], RUN_FIGURES, None)
    monkeypatch.setattr(study, "run_script", lambda command: output if command[0] == "evaluate.py"
                        else fake_run(command))
    with pytest.raises(UserError, match=r"^`python evaluate\.py --model .*best\.pt .*--json` printed no scores the "
                                        r"study's table can read: run it yourself to see what it prints$"):
        study.train_and_score(ROW, parse())
    assert not (tmp_path / "models" / FOLDER / "scores.json").exists()


def test_an_out_dir_that_is_a_file_is_one_line(fake_study, tmp_path, capsys):
    out = tmp_path / "taken"
    out.write_text("not a folder")
    with pytest.raises(SystemExit) as exit_:
        run_cli(study.main, parse("--out-dir", str(out)))
    assert exit_.value.code == 2 and fake_study == []
    assert one_error_line(capsys) == f"--out-dir {out} is a file, not a folder: give a folder for the tables and plots"


def test_an_out_dir_under_a_file_is_one_line(fake_study, tmp_path, capsys):
    (tmp_path / "taken").write_text("not a folder")
    out = tmp_path / "taken" / "tables"
    with pytest.raises(SystemExit) as exit_:
        run_cli(study.main, parse("--out-dir", str(out)))
    assert exit_.value.code == 2 and fake_study == []
    assert one_error_line(capsys) == f"--out-dir {out}: cannot write to it (Not a directory): give a folder that " \
                                     "can be written to"


@pytest.mark.parametrize("error", [PermissionError(13, "Permission denied"), OSError(30, "Read-only file system")])
def test_an_existing_out_dir_that_refuses_files_is_one_line_before_any_row_trains(error, fake_study, tmp_path,
                                                                                   monkeypatch, capsys):
    out = tmp_path / "tables"
    out.mkdir()
    original = Path.touch

    def touch(self, *args, **kwargs):  # as root, permissions refuse nothing: the folder's refusal is made here
        if self.parent == out:
            raise error
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "touch", touch)
    with pytest.raises(SystemExit) as exit_:
        run_cli(study.main, parse("--out-dir", str(out)))
    assert exit_.value.code == 2 and fake_study == []
    assert one_error_line(capsys) == f"--out-dir {out}: cannot write to it ({error.strerror}): give a folder that " \
                                     "can be written to"


def test_a_table_that_cannot_be_written_is_one_line(fake_study, tmp_path, capsys):
    for row in study.STUDIES["k"]:
        kept = tmp_path / "models" / "study" / f"{row.name}-e3-p2-s0" / "scores.json"
        kept.parent.mkdir(parents=True, exist_ok=True)
        kept.write_text(json.dumps(GOOD))
    out = tmp_path / "tables"
    (out / "study_k.md").mkdir(parents=True)  # where the table's file would go
    with pytest.raises(SystemExit) as exit_:
        run_cli(study.main, parse("--out-dir", str(out)))
    assert exit_.value.code == 2 and fake_study == []
    assert one_error_line(capsys) == f"cannot write {out / 'study_k.md'}: Is a directory"


def test_cuda_without_a_gpu_is_one_line_before_anything_trains(fake_study, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_:
        run_cli(study.main, parse("--device", "cuda", "--out-dir", str(tmp_path / "tables")))
    assert exit_.value.code == 2 and fake_study == []
    assert one_error_line(capsys).startswith("--device cuda: CUDA is not available")


FRECHET_MIN = DigitClassifier.feature_dim + 1  # a covariance of the features needs one sample more than them
TEST_DIGITS = 10_000
BAD_NUMBERS = [("--samples", "10"), ("--samples", str(FRECHET_MIN - 1)), ("--samples", str(TEST_DIGITS + 1)),
               ("--epochs", "0"), ("--epochs", "100001"), ("--prior-epochs", "-1"), ("--prior-epochs", "100001"),
               ("--seed", "-1"), ("--seed", str(2 ** 63)), ("--epochs", "1e9")]


@pytest.mark.parametrize("flag, value", BAD_NUMBERS)
def test_a_number_flag_out_of_bounds_is_one_line_and_status_2(flag, value, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse(flag, value)
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and f"error: argument {flag}: " in lines[0] and value in lines[0], lines


@pytest.mark.parametrize("flag, value", [("--samples", str(FRECHET_MIN)), ("--samples", str(TEST_DIGITS)),
                                         ("--epochs", "100000"), ("--prior-epochs", "0"), ("--seed", str(2 ** 63 - 1))])
def test_a_number_flag_at_its_bound_is_taken(flag, value):
    assert getattr(parse(flag, value), flag.lstrip("-").replace("-", "_")) == int(value)


def run_study(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.study", *flags], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def one_line_from_the_command_line(tmp_path) -> dict:
    """{case: (flags, the stderr expected)}. The --out-dir is checked before the study touches models/study, so
    these run nothing in the repository."""
    out = tmp_path / "taken"
    out.write_text("not a folder")
    return {
        "too few samples": (["--samples", "10"], f"argument --samples: must be an integer from {FRECHET_MIN} to "
                            f"{TEST_DIGITS:,}, got 10: the Frechet distance needs at least {FRECHET_MIN}, and the test "
                            f"set has {TEST_DIGITS:,} digits to compare them with (see --help)"),
        "an --out-dir that is a file": (["--out-dir", str(out)], f"--out-dir {out} is a file, not a folder: give a "
                                        "folder for the tables and plots"),
    }


@pytest.mark.parametrize("case", ["too few samples", "an --out-dir that is a file"])
def test_an_error_from_the_command_line_is_one_line_and_status_2(case, tmp_path):
    flags, expected = one_line_from_the_command_line(tmp_path)[case]
    result = subprocess.run([sys.executable, "-m", "benchmarks.study", "--study", "k", *flags], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout, result.stderr) == (2, "", f"study.py: error: {expected}\n")


# A first study, in its own process, stopped in its first vqvae.py until a line comes on its stdin.
FIRST_STUDY = """
import pathlib, sys
from benchmarks import study
study.ROOT = pathlib.Path(sys.argv[1])
def training(command):
    print("training", flush=True)
    sys.stdin.readline()
    sys.exit(0)
study.run_script = training
study.main(study.build_parser().parse_args(["--study", "k", "--out-dir", sys.argv[2]]))
"""


def test_a_second_study_at_once_stops_at_once_naming_the_folder(fake_study, tmp_path, capsys):
    first = subprocess.Popen([sys.executable, "-c", FIRST_STUDY, str(tmp_path), str(tmp_path / "first")], cwd=ROOT,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline() == "training\n", first.stderr.read()
        args = parse("--out-dir", str(tmp_path / "second"))
        with pytest.raises(SystemExit) as exit_:
            run_cli(study.main, args)
        assert exit_.value.code == 2 and fake_study == [], "the second study trains nothing"
        folder = tmp_path / "models" / "study"
        assert one_error_line(capsys) == (f"{folder} is in use by another study (process {first.pid}): wait until it "
                                          "ends, then run this one")
    finally:
        first.communicate("\n", timeout=60)
    assert first.returncode == 0
    run_cli(study.main, args)  # the first one's end let the folder go
    assert (tmp_path / "second" / "study_k.md").is_file() and len(fake_study) == 2 * len(study.STUDIES["k"])
