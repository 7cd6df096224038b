"""Runs survive interruption: resume gives the weights of an uninterrupted run, signals save and stop cleanly, a
kill -9 during a save leaves the previous checkpoint loadable, a NaN loss stops training; and unusable output
places are one-line errors."""
import errno
import json
import math
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

import evaluate
import generate
from helpers import assert_same_weights, fail_on_call, format_1, format_2, signal_on_call, tiny_run_in, train_tiny
from modules import BOTTLENECKS, VQVAE
from vqmnist.checkpoints.format import FORMAT, load_checkpoint, save_checkpoint
from vqmnist.configuration import training_flags
from vqmnist.configuration.cli import run_cli
from vqmnist.configuration.errors import RunStopped, UserError
from vqmnist.running import autoencoder_task, stopping
import vqvae

TWO_EPOCHS = ("--num-epochs", "2")  # 4 steps per epoch on the tiny data


def weights(path):
    return torch.load(path, weights_only=True)["model"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The final weights of the tiny two-epoch run, trained once without a stop on the same tiny data."""
    folder = tiny_run_in(tmp_path_factory.mktemp("uninterrupted"), *TWO_EPOCHS)
    return weights(folder / "models" / "tiny" / "last.pt")


@pytest.mark.parametrize("signum, stop_at_call", [(signal.SIGTERM, 2), (signal.SIGTERM, 6), (signal.SIGINT, 3)])
def test_signal_mid_epoch_saves_and_resume_matches_uninterrupted(signum, stop_at_call, uninterrupted, tiny_mnist,
                                                                 tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with monkeypatch.context() as patch:
        signal_on_call(patch, torch.optim.Adam, "step", stop_at_call, signum)  # called once per training step
        with pytest.raises(RunStopped) as stopped:
            train_tiny(tiny_mnist, *TWO_EPOCHS)
    assert stopped.value.exit_code == 128 + signum
    assert "--resume" in str(stopped.value) and f"step {stop_at_call}" in str(stopped.value)
    saved = torch.load("models/tiny/last.pt", weights_only=True)
    assert saved["step"] == stop_at_call  # the step that was running when the signal came was finished
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "the signal handler outlived the run"
    figures = json.loads(Path("models/tiny/run.json").read_text())
    epoch, batch = divmod(stop_at_call - 1, 4)  # 4 steps per epoch
    where = f"at step {stop_at_call} (epoch {epoch + 1}, batch {batch + 1} of 4)"
    assert figures["stopped"] == {"cause": signal.Signals(signum).name, "where": where, "step": stop_at_call}

    train_tiny(tiny_mnist, *TWO_EPOCHS, "--resume")
    assert_same_weights(uninterrupted, weights("models/tiny/last.pt"))
    figures = json.loads(Path("models/tiny/run.json").read_text())
    assert [row["epoch"] for row in figures["autoencoder"]["epochs"]] == [1, 2] and "stopped" not in figures
    assert "resuming" in capsys.readouterr().out

    events = EventAccumulator("logs/tiny")
    events.Reload()
    steps = [event.step for event in events.Scalars("train/loss")]
    assert steps == list(range(1, 9)), "the training curve jumps or repeats across the resume"


def clock_jumps_on_call(monkeypatch, owner, name, call_number, seconds):
    """vqvae.py's monotonic clock stands still, and jumps by `seconds` at the call_number-th call of owner.name."""
    clock = {"now": 0.0, "calls": 0}
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        clock["calls"] += 1
        if clock["calls"] == call_number:
            clock["now"] += seconds
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    clock_module = SimpleNamespace(monotonic=lambda: clock["now"], perf_counter=time.perf_counter)
    for module in (vqvae, stopping):
        monkeypatch.setattr(module, "time", clock_module)


@pytest.mark.parametrize("stop_at_call", [1, 6])
def test_time_limit_stops_like_a_signal_and_resume_matches_uninterrupted(stop_at_call, uninterrupted, tiny_mnist,
                                                                         tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with monkeypatch.context() as patch:
        clock_jumps_on_call(patch, torch.optim.Adam, "step", stop_at_call, seconds=61)
        with pytest.raises(RunStopped) as stopped:
            train_tiny(tiny_mnist, *TWO_EPOCHS, "--time-limit", "60")
    assert stopped.value.exit_code == 0, "reaching the time limit is an expected end"
    assert f"stopped at the --time-limit at step {stop_at_call}" in str(stopped.value)
    assert torch.load("models/tiny/last.pt", weights_only=True)["step"] == stop_at_call
    train_tiny(tiny_mnist, *TWO_EPOCHS, "--resume")  # a new process: its own clock, without a limit
    assert_same_weights(uninterrupted, weights("models/tiny/last.pt"))


def test_time_limit_during_the_prior_keeps_the_autoencoder(tiny_mnist, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with monkeypatch.context() as patch:
        clock_jumps_on_call(patch, torch.optim.AdamW, "step", 1, seconds=61)  # the prior's first step
        with pytest.raises(RunStopped, match=r"--time-limit at step 1 \(prior epoch 1, batch 1 of") as stopped:
            train_tiny(tiny_mnist, "--time-limit", "60")
    assert stopped.value.exit_code == 0
    assert "prior" not in load_checkpoint("models/tiny/best.pt", "cpu")


def test_signal_during_validation_stops_after_the_epoch(uninterrupted, tiny_mnist, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with monkeypatch.context() as patch:
        signal_on_call(patch, autoencoder_task, "score_reconstructions", 1, signal.SIGTERM)
        with pytest.raises(RunStopped, match="after epoch 1"):
            train_tiny(tiny_mnist, *TWO_EPOCHS)
    assert torch.load("models/tiny/last.pt", weights_only=True)["epoch"] == 1
    train_tiny(tiny_mnist, *TWO_EPOCHS, "--resume")
    assert_same_weights(uninterrupted, weights("models/tiny/last.pt"))


def test_resume_of_a_finished_run_does_nothing(tiny_mnist, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    train_tiny(tiny_mnist)
    before = (tmp_path / "models" / "tiny" / "last.pt").read_bytes()
    train_tiny(tiny_mnist, "--resume")
    assert "already finished" in capsys.readouterr().out
    assert (tmp_path / "models" / "tiny" / "last.pt").read_bytes() == before


@pytest.mark.parametrize("extra, message", [
    (["--lr", "0.5"], "drop --lr"),
    (["--overwrite"], "only one"),
])
def test_resume_refuses_contradicting_flags(extra, message, tiny_mnist, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train_tiny(tiny_mnist)
    with pytest.raises(UserError, match=message):
        train_tiny(tiny_mnist, "--resume", *extra)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A folder holding the tiny one-epoch run (models/tiny/last.pt), without a prior."""
    return tiny_run_in(tmp_path_factory.mktemp("finished"), "--prior-epochs", "0", "--seed", "5")


RESULT_FLAGS = sorted(set(vars(training_flags.build_parser().parse_args([]))) - training_flags.RUN_FLAGS)


@pytest.mark.parametrize("name", RESULT_FLAGS)
def test_resume_refuses_a_change_to_every_flag_that_shapes_the_result(name, finished_run, monkeypatch):
    """Every flag outside RUN_FLAGS is checked, with no list of them kept by hand: a flag added later is too."""
    monkeypatch.chdir(finished_run)
    parser = training_flags.build_parser()
    args = parser.parse_args(["--output-folder", "tiny", "--resume"])
    resumed, _ = training_flags.resume_args(args, parser)
    saved = torch.load("models/tiny/last.pt", weights_only=True)["args"]
    assert getattr(resumed, name) == saved[name]
    setattr(args, name, "a value the run was not trained with")
    args.typed.add(name)  # as if typed on the command line
    flag = parser.flag_names()[name]
    others = ({field for other in BOTTLENECKS for field in training_flags.bottleneck_flags(other)}
              - training_flags.bottleneck_flags(saved["bottleneck"]))
    # Another bottleneck's flag is refused as not the run's own bottleneck's, naming it.
    expected = (f"{flag} does not apply to the bottleneck {saved['bottleneck']} of models/tiny/last.pt" if name in others
                else f"its own {flag} .*: drop {flag} a value the run was not trained with")
    with pytest.raises(UserError, match=expected):
        training_flags.resume_args(args, parser)


def test_resume_takes_the_seed_from_the_checkpoint(finished_run, monkeypatch):
    monkeypatch.chdir(finished_run)
    parser = training_flags.build_parser()
    resumed, checkpoint = training_flags.resume_args(parser.parse_args(["--output-folder", "tiny", "--resume"]), parser)
    assert resumed.seed == 5 and checkpoint["epoch"] == 1


@pytest.mark.parametrize("older", [format_1, format_2])
def test_an_older_format_last_pt_resumes_like_an_uninterrupted_run(older, uninterrupted, tiny_mnist, tmp_path,
                                                                   monkeypatch):
    monkeypatch.chdir(tmp_path)
    with monkeypatch.context() as patch:
        signal_on_call(patch, torch.optim.Adam, "step", 3, signal.SIGTERM)
        with pytest.raises(RunStopped):
            train_tiny(tiny_mnist, *TWO_EPOCHS)
    path = tmp_path / "models" / "tiny" / "last.pt"
    save_checkpoint(path, older(torch.load(path, weights_only=True)))
    assert torch.load(path, weights_only=True).get("format", 1) < FORMAT
    train_tiny(tiny_mnist, *TWO_EPOCHS, "--resume")
    assert_same_weights(uninterrupted, weights(path))


def test_resume_without_a_run_is_an_error(tiny_mnist, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="no models/tiny/last.pt to continue"):
        train_tiny(tiny_mnist, "--resume")


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tiny_mnist, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    original = VQVAE.reconstruction_loss
    calls = {"count": 0}

    def nan_at_step_six(self, x_recon, x):
        if self.training:  # validation calls it too, in eval mode
            calls["count"] += 1
        loss = original(self, x_recon, x)
        return loss * float("nan") if calls["count"] == 6 and self.training else loss

    monkeypatch.setattr(VQVAE, "reconstruction_loss", nan_at_step_six)
    with pytest.raises(UserError, match="NaN or infinite at step 6"):
        train_tiny(tiny_mnist, *TWO_EPOCHS)
    checkpoint = load_checkpoint(tmp_path / "models" / "tiny" / "last.pt", "cpu")
    assert checkpoint["epoch"] == 1 and checkpoint["step"] == 4
    assert all(torch.isfinite(tensor).all() for tensor in checkpoint["model"].values() if tensor.is_floating_point())


SLOW_SAVE = textwrap.dedent("""
    import sys, time, torch
    from vqmnist.checkpoints import format as checkpoints
    real_save = torch.save
    def slow_save(obj, file):
        real_save(obj, file)
        file.flush()
        file.truncate(file.tell() // 2)  # half a file on disk, as a kill in the middle of writing leaves it
        print("writing", flush=True)
        time.sleep(60)
    torch.save = slow_save
    checkpoints.save_checkpoint(sys.argv[1], {"config": {}, "model": {"w": torch.ones(1000)}, "epoch": 2,
                                              "step": 8, "val": None, "args": {}})
""")


def test_kill_during_a_save_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"config": {}, "model": {"w": torch.zeros(1000)}, "epoch": 1, "step": 4, "val": None,
                           "args": {}})
    before = path.read_bytes()
    process = subprocess.Popen([sys.executable, "-c", SLOW_SAVE, str(path)], stdout=subprocess.PIPE, text=True,
                               cwd=Path(vqvae.__file__).parent)
    assert process.stdout.readline().strip() == "writing"
    process.kill()  # SIGKILL: no handler, no clean-up
    process.wait()
    assert path.read_bytes() == before
    checkpoint = load_checkpoint(path, "cpu")
    assert checkpoint["epoch"] == 1 and torch.equal(checkpoint["model"]["w"], torch.zeros(1000))


@pytest.mark.parametrize("blocked", ["models", "logs"])
def test_unwritable_output_place_is_one_line(blocked, tiny_mnist, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / blocked).write_text("a file where the run folder should go")
    with pytest.raises(UserError, match="cannot write"):
        train_tiny(tiny_mnist)


def test_unwritable_grid_place_is_one_line(tiny_mnist, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train_tiny(tiny_mnist)
    (tmp_path / "generatedImages").write_text("a file where the grid folder should go")
    with pytest.raises(UserError, match="cannot create"):
        generate.main(generate.build_parser().parse_args(["--model", "models/tiny/best.pt", "--input", "random"]))


def test_overwrite_starts_fresh_curves_and_clears_half_written_files(tiny_mnist, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train_tiny(tiny_mnist)
    stale = tmp_path / "models" / "tiny" / ".last.pt.tmp-12345"
    stale.write_bytes(b"half a checkpoint")
    train_tiny(tiny_mnist, "--overwrite")
    assert not stale.exists()
    assert len(list((tmp_path / "logs" / "tiny").glob("events.out.tfevents.*"))) == 1


CPU_OUT_OF_MEMORY = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                     "tried to allocate 19600000000 bytes. Error code 12 (Cannot allocate memory)")


def test_out_of_memory_in_a_step_is_one_line_naming_the_flag_and_keeps_last_pt(tiny_mnist, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fail_on_call(monkeypatch, autoencoder_task, "training_step", 6, RuntimeError(CPU_OUT_OF_MEMORY))
    with pytest.raises(UserError, match="out of memory while training .*lower --batch-size \\(now 64\\)") as error:
        train_tiny(tiny_mnist, *TWO_EPOCHS)
    assert "\n" not in str(error.value) and "models/tiny/last.pt keeps what was last saved" in str(error.value)
    assert load_checkpoint("models/tiny/last.pt")["epoch"] == 1


def test_a_run_that_fails_in_validation_keeps_the_epochs_training(tiny_mnist, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fail_on_call(monkeypatch, autoencoder_task, "score_reconstructions", 1,
                 torch.OutOfMemoryError("CUDA out of memory."))
    with pytest.raises(UserError, match="out of memory"):
        train_tiny(tiny_mnist, *TWO_EPOCHS)
    checkpoint = load_checkpoint("models/tiny/last.pt")
    assert (checkpoint["epoch"], checkpoint["step"], checkpoint["val"]) == (1, 4, None)


def test_the_k_of_a_large_codebook_validates_and_evaluates(tiny_mnist, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    train_tiny(tiny_mnist, "--k", "100000", "--init", "random", "--code-dim", "4", "--prior-epochs", "0")
    assert load_checkpoint("models/tiny/last.pt")["val"]["codebook_usage"] > 0
    capsys.readouterr()
    evaluate.main(evaluate.build_parser().parse_args(["--model", "models/tiny/best.pt", "--json", "--samples", "0",
                                                      "--data-folder", str(tiny_mnist)]))
    assert json.loads(capsys.readouterr().out)["num_embeddings"] == 100000


TORCH_SAVE_ON_A_FULL_DISK = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 2368 vs 2256")


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_previous_checkpoint(tiny_mnist, tmp_path, monkeypatch,
                                                                               capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["vqvae.py"])
    fail_on_call(monkeypatch, torch, "save", 3, TORCH_SAVE_ON_A_FULL_DISK)  # epoch 2's last.pt
    args = training_flags.build_parser().parse_args(["--data-folder", str(tiny_mnist), "--num-epochs", "2",
                                                     "--val-size", "64", "--hidden-size", "8", "--k", "16",
                                                     "--output-folder", "tiny", "--prior-epochs", "0"])
    with pytest.raises(SystemExit) as exit_info:
        run_cli(vqvae.main, args)
    assert exit_info.value.code == 2
    last_line = capsys.readouterr().err.splitlines()[-1]  # after the progress bars
    assert last_line == ("vqvae.py: error: no space left on the device holding models/tiny: free space, then "
                         "python vqvae.py --output-folder tiny --resume; models/tiny/last.pt keeps what was last saved")
    assert load_checkpoint("models/tiny/last.pt")["epoch"] == 1
    assert not list(Path("models/tiny").glob(".*.tmp-*")), "the temporary file was left behind"


def test_a_full_disk_under_tensorboard_is_one_line(tiny_mnist, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    full = OSError(errno.ENOSPC, "No space left on device", "logs/tiny/events.out.tfevents.1")
    fail_on_call(monkeypatch, SummaryWriter, "add_scalar", 10, full)
    with pytest.raises(UserError, match="^no space left on the device holding logs/tiny: free space, then python "
                                        "vqvae.py --output-folder tiny --resume"):
        train_tiny(tiny_mnist, *TWO_EPOCHS)


def test_a_batch_larger_than_the_training_split_is_refused_before_anything_is_made(tiny_mnist, tmp_path,
                                                                                   monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="--batch-size 257 is more than the 256 training images"):
        train_tiny(tiny_mnist, "--batch-size", "257")
    assert not Path("models").exists()
    train_tiny(tiny_mnist, "--batch-size", "256", "--prior-epochs", "0")


def test_resume_refuses_a_flag_typed_at_its_default_value(tiny_mnist, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RunStopped):
        train_tiny(tiny_mnist, "--batch-size", "32", *TWO_EPOCHS, "--time-limit", "1e-9")
    with pytest.raises(UserError, match="its own --batch-size 32: drop --batch-size 64"):
        train_tiny(tiny_mnist, *TWO_EPOCHS, "--resume")  # train_tiny types --batch-size 64, the default


@pytest.mark.parametrize("flags, kept", [
    ([], "no checkpoint of this run was saved before it"),
    (["--lr-schedule", "constant"], "no checkpoint of this run was saved before it"),
])
def test_a_nan_at_the_first_step_says_that_nothing_was_kept_and_names_the_flags(flags, kept, tiny_mnist, tmp_path,
                                                                                 monkeypatch):
    """--beta 1e300 once made the first loss infinite; it is a flag error now (tests/test_hostile.py), so the
    first step's loss is made infinite here."""
    monkeypatch.chdir(tmp_path)
    original = VQVAE.reconstruction_loss
    monkeypatch.setattr(VQVAE, "reconstruction_loss", lambda self, x_recon, x: original(self, x_recon, x) * math.inf)
    with pytest.raises(UserError, match="NaN or infinite at step 1") as error:
        train_tiny(tiny_mnist, *flags)
    assert kept in str(error.value) and "--lr or --beta" in str(error.value)
    assert not Path("models/tiny/last.pt").exists()


def test_the_continue_command_is_shell_quoted(tiny_mnist, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RunStopped) as stopped:
        train_tiny(tiny_mnist, "--output-folder", "my run", "--time-limit", "1e-9")
    command = str(stopped.value).split("continue with: ", 1)[1]
    assert shlex.split(command) == ["python", "vqvae.py", "--output-folder", "my run", "--resume"]
