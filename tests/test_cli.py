"""The command line's one-line errors: a bad flag, device, file or name gives one line on stderr and exit status 2,
never a traceback; a stop gives its one line and its exit status."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import evaluate
import generate
from vqmnist.configuration import training_flags
from vqmnist.configuration.cli import ArgumentParser, refuse_inapplicable, run_cli
from vqmnist.configuration.errors import RunStopped, UserError
import vqvae


def test_digit_out_of_range_is_a_flag_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        generate.build_parser().parse_args(["--input", "random", "--digit", "10"])
    assert exit_info.value.code == 2 and capsys.readouterr().err.count("\n") == 1


def test_run_cli_turns_a_stop_into_its_exit_status(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["vqvae.py"])

    def stopped(args):
        raise RunStopped("stopped by SIGTERM at step 3; continue with: python vqvae.py --resume", 143)

    with pytest.raises(SystemExit) as exit_info:
        run_cli(stopped, None)
    assert exit_info.value.code == 143
    assert capsys.readouterr().err == "vqvae.py: stopped by SIGTERM at step 3; continue with: python vqvae.py --resume\n"


@pytest.mark.parametrize("command, mentions", [
    (["vqvae.py", "--k", "0"], "--k"),
    (["vqvae.py", "--device", "tpu"], "--device"),
    (["generate.py", "--model", "no/such/file.pt"], "no/such/file.pt"),
    (["evaluate.py", "--model", "README.md"], "README.md"),
])
def test_bad_input_from_the_command_line_is_one_line_and_status_2(command, mentions):
    result = subprocess.run([sys.executable, *command], cwd=Path(vqvae.__file__).parent, capture_output=True,
                            text=True)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and mentions in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("script", [vqvae, generate, evaluate])
def test_unknown_device_is_one_line(script, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script.build_parser().parse_args(["--device", "tpu"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--device" in error and "tpu" in error


@pytest.mark.parametrize("flag, value", [("--k", "0"), ("--hidden-size", "-1"), ("--batch-size", "0"),
                                         ("--lr", "0"), ("--beta", "-1"), ("--num-epochs", "0"),
                                         ("--num-workers", "-2"), ("--lr", "nan"), ("--k", "many")])
def test_bad_training_flag_is_one_line(flag, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        training_flags.build_parser().parse_args([flag, value])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and flag in error


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_a_gpu_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="--device cpu"):
        vqvae.main(training_flags.build_parser().parse_args(["--device", "cuda"]))


@pytest.mark.parametrize("script, flag", [(vqvae, "--output-folder"), (generate, "--filename")])
@pytest.mark.parametrize("name", ["/tmp/elsewhere", "../outside", ""])
def test_output_names_stay_inside_the_output_folders(script, flag, name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script.build_parser().parse_args([flag, name])
    assert exit_info.value.code == 2 and capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize("typed, message", [
    ([], None),
    (["--top-k", "3"], "--top-k does not apply with --input MNIST, which draws no samples: drop it"),
    (["--top-k", "3", "--guidance", "0"], "--guidance and --top-k do not apply with --input MNIST, which draws no "
                                          "samples: drop them"),
])
def test_a_typed_flag_that_cannot_apply_is_refused_naming_it_and_an_untyped_one_passes(typed, message):
    parser = ArgumentParser()
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--guidance", type=float, default=0.75)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args([*typed, "--seed", "3"])
    if message is None:
        refuse_inapplicable(args, ["top_k", "guidance"], "with --input MNIST, which draws no samples",
                            parser.flag_names())
        return
    with pytest.raises(UserError) as refused:
        refuse_inapplicable(args, ["top_k", "guidance"], "with --input MNIST, which draws no samples",
                            parser.flag_names())
    assert str(refused.value) == message
