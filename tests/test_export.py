"""export_model.py writes a checkpoint's model without its training state, and the export works in generate.py
and evaluate.py exactly as the checkpoint does."""
import hashlib
import json
import shutil

import pytest
import torch

import evaluate
import export_model
import generate
from helpers import fail_on_call, tiny_run_in, train_tiny
from vqmnist.checkpoints.format import FORMAT
from vqmnist.configuration.errors import UserError


def export(*flags):
    export_model.main(export_model.build_parser().parse_args(list(flags)))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The default tiny run's models/tiny (its autoencoder and prior), trained once for the module."""
    return tiny_run_in(tmp_path_factory.mktemp("tiny_run")) / "models" / "tiny"


def copy_of(tiny_run, folder):
    """The shared tiny run's checkpoints copied into folder/models/tiny, as training there would leave them."""
    shutil.copytree(tiny_run, folder / "models" / "tiny")


def test_export_drops_the_training_state_and_scores_like_the_checkpoint(tiny_run, tiny_mnist, tmp_path, monkeypatch,
                                                                        capsys):
    monkeypatch.chdir(tmp_path)
    copy_of(tiny_run, tmp_path)
    export("--model", "models/tiny/best.pt", "--output", "shared/tiny.pt")
    printed = capsys.readouterr().out
    assert hashlib.sha256((tmp_path / "shared" / "tiny.pt").read_bytes()).hexdigest() in printed

    original = torch.load("models/tiny/best.pt", weights_only=True)
    exported = torch.load("shared/tiny.pt", weights_only=True)
    assert set(exported) == {"format", "config", "model", "prior", "epoch", "step", "val", "args"}
    assert exported["format"] == FORMAT
    for name, tensor in original["model"].items():
        assert torch.equal(tensor, exported["model"][name]), name
    for name, tensor in original["prior"]["model"].items():
        assert torch.equal(tensor, exported["prior"]["model"][name]), name

    reports = []
    for path in ("models/tiny/best.pt", "shared/tiny.pt"):
        evaluate.main(evaluate.build_parser().parse_args(
            ["--model", path, "--json", "--data-folder", str(tiny_mnist), "--samples", "30"]))
        reports.append(json.loads(capsys.readouterr().out))
    assert reports[0] == reports[1]
    generate.main(generate.build_parser().parse_args(["--model", "shared/tiny.pt", "--input", "random"]))
    assert (tmp_path / "generatedImages" / "random.png").is_file()


def test_export_does_not_replace_a_file_unless_asked(tiny_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    copy_of(tiny_run, tmp_path)
    (tmp_path / "mine.pt").write_bytes(b"something of the user's")
    with pytest.raises(UserError, match="--overwrite"):
        export("--model", "models/tiny/best.pt", "--output", "mine.pt")
    assert (tmp_path / "mine.pt").read_bytes() == b"something of the user's"
    export("--model", "models/tiny/best.pt", "--output", "mine.pt", "--overwrite")
    assert "prior" in torch.load("mine.pt", weights_only=True)


@pytest.mark.parametrize("flags, message", [
    (["--model", "models/tiny/best.pt", "--output", "models/tiny/best.pt"], "must differ"),
    (["--model", "models/tiny/missing.pt", "--output", "out.pt"], "no checkpoint"),
])
def test_export_errors(flags, message, tiny_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    copy_of(tiny_run, tmp_path)
    with pytest.raises(UserError, match=message):
        export(*flags)


def test_export_without_a_prior_needs_to_be_asked_for(tiny_mnist, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train_tiny(tiny_mnist, "--prior-epochs", "0")
    with pytest.raises(UserError, match="no prior"):
        export("--model", "models/tiny/best.pt", "--output", "out.pt")
    assert not (tmp_path / "out.pt").exists()
    export("--model", "models/tiny/best.pt", "--output", "out.pt", "--allow-no-prior")
    assert "prior" not in torch.load("out.pt", weights_only=True)


def test_a_full_disk_during_the_export_is_one_line_and_leaves_no_file(tiny_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    copy_of(tiny_run, tmp_path)
    fail_on_call(monkeypatch, torch, "save", 1, RuntimeError("[enforce fail at inline_container.cc:672] . unexpected "
                                                             "pos 2368 vs 2256"))
    with pytest.raises(UserError, match="^no space left on the device holding shared: free space, then export again$"):
        export("--model", "models/tiny/best.pt", "--output", "shared/tiny.pt")
    assert list((tmp_path / "shared").iterdir()) == [], "the export left a file"
