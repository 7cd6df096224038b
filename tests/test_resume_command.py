"""The resume command a stopped run prints works as printed and ends where the unbroken run ends (its thread count and
its own data's folder kept in the checkpoint); a resume that changes the result says so; a flag that cannot apply to
vqvae.py's run is refused in one line."""
import shlex
import signal

import pytest
import torch

import vqvae
from helpers import TINY_PRIOR, assert_same_weights, signal_on_call, train_tiny, write_tiny_mnist
from vqmnist.configuration import training_flags
from vqmnist.configuration.errors import RunStopped, UserError
from vqmnist.running import autoencoder_task

OWN = ("--dataset", "own", "--threads", "1")


def printed_command(stopped: RunStopped) -> list[str]:
    """The vqvae.py flags of the command a stop's line says to continue with."""
    words = shlex.split(str(stopped).split("continue with: ")[1])
    assert words[:2] == ["python", "vqvae.py"]
    return words[2:]


def best_weights(folder) -> dict:
    checkpoint = torch.load(folder / "best.pt", weights_only=True)
    return {**checkpoint["model"], **{f"prior.{name}": value for name, value in checkpoint["prior"]["model"].items()}}


def test_the_printed_resume_command_ends_where_the_unbroken_run_ends(tmp_path, monkeypatch):
    own = tmp_path / "own"
    write_tiny_mnist(own)
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.chdir(run)  # no data/ here: the digits are only where --data-folder said
    train_tiny(own, *OWN, "--output-folder", "unbroken")
    with monkeypatch.context() as patch:
        signal_on_call(patch, autoencoder_task, "training_step", 3, signal.SIGINT)
        with pytest.raises(RunStopped) as stopped:
            train_tiny(own, *OWN, "--output-folder", "stopped")
    command = printed_command(stopped.value)
    assert command == ["--output-folder", "stopped", "--resume"]
    torch.set_num_threads(2)  # the default a new process would start with here, not the run's own
    vqvae.main(training_flags.build_parser().parse_args(command))
    assert torch.get_num_threads() == 1
    assert_same_weights(best_weights(run / "models" / "unbroken"), best_weights(run / "models" / "stopped"))


def test_a_resume_that_changes_how_the_sums_are_split_says_so(tmp_path, monkeypatch, capsys):
    own = tmp_path / "own"
    write_tiny_mnist(own)
    monkeypatch.chdir(tmp_path)
    with monkeypatch.context() as patch:
        signal_on_call(patch, autoencoder_task, "training_step", 2, signal.SIGINT)
        with pytest.raises(RunStopped):
            train_tiny(own, *OWN, "--prior-epochs", "0")
    capsys.readouterr()
    vqvae.main(training_flags.build_parser().parse_args(["--output-folder", "tiny", "--resume", "--threads", "2"]))
    note = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert note == ["note: --threads 2 differs from the stopped run's (--threads 1): the weights will not be those "
                    "the unbroken run would have ended with"]


def test_a_prior_only_run_reads_the_digits_where_its_autoencoder_found_them(tmp_path, monkeypatch, capsys):
    own = tmp_path / "own"
    write_tiny_mnist(own)
    monkeypatch.chdir(tmp_path)
    train_tiny(own, "--dataset", "own", "--prior-epochs", "0")
    vqvae.main(training_flags.build_parser().parse_args(["--output-folder", "tiny", "--prior-only", *TINY_PRIOR]))
    assert "prior" in torch.load(tmp_path / "models" / "tiny" / "best.pt", weights_only=True)


@pytest.mark.parametrize("flags, refused", [
    (["--prior-only", "--k", "32"], "--k does not apply with --prior-only"),
    (["--prior-only", "--decoder-output", "logistic", "--lr", "0.01"],
     "--decoder-output and --lr do not apply with --prior-only"),
    (["--bottleneck", "gaussian", "--prior-distorted", "0.5"],
     "--prior-distorted does not apply to --bottleneck gaussian, which has no codes for a prior"),
    (["--prior-epochs", "0", "--prior-width", "32"], "--prior-width does not apply with --prior-epochs 0"),
])
def test_a_flag_that_cannot_apply_to_the_run_is_refused_before_anything_is_made(flags, refused, tmp_path,
                                                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=refused) as error:
        vqvae.main(training_flags.build_parser().parse_args(flags))
    assert "\n" not in str(error.value)
    assert not (tmp_path / "models").exists() and not (tmp_path / "logs").exists()
