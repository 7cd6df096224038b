"""A --resume trusts nothing it reads: the run folder is held before any checkpoint is read, every stored field of
last.pt and prior_last.pt passes the checks of the flag or config it came from before anything is built, a stored
prior is held against its autoencoder on every load, a run stopped between the autoencoder and its prior ends as the
unbroken one does, a step too costly is refused before it starts, and files lost mid-run are said so."""
import fcntl
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

import evaluate
import export_model
import generate
from helpers import assert_same_weights, fail_on_call, signal_on_call, tiny_run_in, train_tiny
from options import StepCost
import vector_quantizer
from vqmnist.checkpoints import format as checkpoints
from vqmnist.checkpoints.checks import DAMAGED
from vqmnist.checkpoints.format import save_checkpoint
from vqmnist.checkpoints.loading import load_model
from vqmnist.configuration import training_flags
from vqmnist.configuration.errors import RunStopped, UserError
from vqmnist.running import autoencoder_task, prior_task
from vqmnist.running.run_folder import hold_run_folder
from vqmnist.running.stopping import StepInterrupted, StopOnSignal
import vqvae

ROOT = Path(__file__).resolve().parent.parent
TWO_EPOCHS = ("--num-epochs", "2")  # 4 steps per epoch on the tiny data


def stopped_run_in(folder: Path, owner, name: str, call: int, *flags, bottleneck: str = "vq") -> Path:
    """models/tiny of the tiny run with flags, stopped by SIGTERM at the call-th call of owner.name."""
    with pytest.MonkeyPatch.context() as patch:
        signal_on_call(patch, owner, name, call, signal.SIGTERM)
        with pytest.raises(RunStopped):
            tiny_run_in(folder, *flags, bottleneck=bottleneck)
    return folder / "models" / "tiny"


@pytest.fixture(scope="module")
def stopped_autoencoder(tmp_path_factory) -> Path:
    """The two-epoch run stopped at step 6 (epoch 2, batch 2): last.pt there, best.pt of epoch 1."""
    return stopped_run_in(tmp_path_factory.mktemp("stopped"), torch.optim.Adam, "step", 6, *TWO_EPOCHS)


@pytest.fixture(scope="module")
def stopped_prior(tmp_path_factory) -> Path:
    """The one-epoch run whose prior of two epochs stopped at its step 6 (epoch 2, batch 2): last.pt finished,
    prior_last.pt, and best.pt with the prior of epoch 1."""
    return stopped_run_in(tmp_path_factory.mktemp("stopped_prior"), torch.optim.AdamW, "step", 6,
                          "--prior-epochs", "2")


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """models/tiny/best.pt, with its prior, of the finished one-epoch run."""
    return tiny_run_in(tmp_path_factory.mktemp("finished")) / "models" / "tiny" / "best.pt"


def copied(run: Path, tmp_path: Path, monkeypatch) -> Path:
    """A copy of the run folder as tmp_path/models/tiny, with tmp_path the working folder."""
    shutil.copytree(run, tmp_path / "models" / "tiny")
    monkeypatch.chdir(tmp_path)
    return Path("models/tiny")


def edit(path: Path, change) -> None:
    checkpoint = torch.load(path, weights_only=True)
    change(checkpoint)
    save_checkpoint(path, checkpoint)


def held(folder: Path) -> bool:
    """Whether some open file holds folder's lock (flock locks conflict between open files, even in one process)."""
    with open(folder / ".lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(lock, fcntl.LOCK_UN)
        return False


def one_line_refusal(run, match: str) -> str:
    with pytest.raises(UserError) as error:
        run()
    message = str(error.value)
    assert "\n" not in message and re.search(match, message), message
    return message


@pytest.mark.parametrize("fixture, flags", [("stopped_autoencoder", TWO_EPOCHS),
                                            ("stopped_prior", ("--prior-epochs", "2"))])
def test_a_resume_reads_its_checkpoints_only_while_it_holds_the_run_folder(fixture, flags, request, tiny_mnist,
                                                                           tmp_path, monkeypatch):
    folder = copied(request.getfixturevalue(fixture), tmp_path, monkeypatch)
    reads = []
    original = torch.load

    def load(path, *args, **kwargs):
        if Path(path).parent.resolve() == folder.resolve():
            reads.append((Path(path).name, held(folder)))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(checkpoints.torch, "load", load)
    train_tiny(tiny_mnist, *flags, "--resume")
    assert reads and all(was_held for _, was_held in reads), reads


@pytest.mark.parametrize("fixture, flags", [("stopped_autoencoder", TWO_EPOCHS),
                                            ("stopped_prior", ("--prior-epochs", "2"))])
def test_a_resume_overlapping_a_running_one_is_refused_before_it_reads_anything(fixture, flags, request, tiny_mnist,
                                                                                tmp_path, monkeypatch):
    folder = copied(request.getfixturevalue(fixture), tmp_path, monkeypatch)
    before = {path.name: path.read_bytes() for path in folder.glob("*.pt")}
    reads = []
    original = torch.load
    monkeypatch.setattr(checkpoints.torch, "load", lambda *args, **kwargs: reads.append(args) or original(*args,
                                                                                                        **kwargs))
    with hold_run_folder(folder):  # the first run, still training
        one_line_refusal(lambda: train_tiny(tiny_mnist, *flags, "--resume"), "is in use by another run")
    assert not reads, "the second run read a checkpoint the first may still replace"
    assert {path.name: path.read_bytes() for path in folder.glob("*.pt")} == before


def sgd_state(checkpoint: dict) -> dict:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=0.1, momentum=0.9).state_dict()


def set_nan(tensor: torch.Tensor) -> None:
    tensor.view(-1)[0] = float("nan")


LAST_PT_EDITS = {
    "an unknown bottleneck": (lambda c: c["args"].update(bottleneck="mine"), "--bottleneck 'mine', which must be"),
    "K of 10^9": (lambda c: c["args"].update(num_embeddings=10 ** 9), "--k 1000000000, which is refused"),
    "K as a string": (lambda c: c["args"].update(num_embeddings="16"), "--k '16', which is of type str where the flag gives int"),
    "K as a bool": (lambda c: c["args"].update(num_embeddings=True), "--k True, which is a bool"),
    "a seed past 64 bits": (lambda c: c["args"].update(seed=2 ** 70), "--seed 1180591620717411303424, which is "
                                                                      "refused"),
    "the flags as a list": (lambda c: c.update(args=list(c["args"].items())), "its stored flags are a list"),
    "a NaN learning rate": (lambda c: c["args"].update(lr=float("nan")), "--lr nan, which is refused"),
    "flags for another model than its config": (lambda c: c["args"].update(beta=0.5),
                                                "model config and its stored flags disagree on bottleneck_config"),
    "a hidden size of 2048 in both": (lambda c: (c["args"].update(hidden_size=2048),
                                                 c["config"].update(hidden_size=2048)),
                                      "its stored flags are refused (the autoencoder would hold"),
    "an epoch as a string": (lambda c: c.update(epoch="1"), "its epoch is '1', not an integer"),
    "a negative epoch": (lambda c: c.update(epoch=-1), "its epoch is -1, not an integer from 0"),
    "an epoch past its epochs": (lambda c: c.update(epoch=7), "its epoch is 7, not an integer from 0 to 2"),
    "another optimizer's state": (lambda c: c.update(optimizer=sgd_state(c)), "is not that of this run's Adam",
                                  "built"),
    "a NaN in the optimizer's state": (lambda c: set_nan(c["optimizer"]["state"][0]["exp_avg"]),
                                       "optimizer state holds a NaN, an infinity or a tensor training never writes", "built"),
    "a missing shuffle generator": (lambda c: c["training"].pop("shuffle_rng"), "training state lacks shuffle_rng"),
    "a shuffle generator of floats": (lambda c: c["training"].update(shuffle_rng=torch.zeros(5056)),
                                      "shuffle generator is not a random-number generator's state"),
    "NaN weights": (lambda c: set_nan(c["model"]["encoder.layers.0.weight"]),
                    "NaN or an infinity in encoder.layers.0.weight"),
    "integer weights": (lambda c: c["model"].update({"encoder.layers.0.weight": c["model"][
        "encoder.layers.0.weight"].long()}), "as torch.int64 where the model holds torch.float32"),
    "a batch past the epoch's end": (lambda c: c["training"].update(batches_done=9), "batches done is 9"),
}


def resume_as_typed(data_folder: Path) -> None:
    """`python vqvae.py --output-folder tiny --resume`, the run's own flags taken from its last.pt."""
    vqvae.main(training_flags.build_parser().parse_args(["--data-folder", str(data_folder), "--output-folder", "tiny",
                                                         "--resume"]))


@pytest.mark.parametrize("change, match, when", [(*edit, "before")[:3] for edit in LAST_PT_EDITS.values()],
                         ids=LAST_PT_EDITS)
def test_a_last_pt_edited_anywhere_is_refused_in_one_line(change, match, when, stopped_autoencoder, tiny_mnist,
                                                          tmp_path, monkeypatch):
    folder = copied(stopped_autoencoder, tmp_path, monkeypatch)
    edit(folder / "last.pt", change)
    built = []
    # Sizes are counted on the meta device; a convolution made anywhere else was built.
    monkeypatch.setattr(torch.nn.Conv2d, "reset_parameters",
                        lambda self: built.append(self) if self.weight.device.type != "meta" else None)
    message = one_line_refusal(lambda: resume_as_typed(tiny_mnist), re.escape(match))
    assert message.startswith("models/tiny/last.pt: ")
    assert bool(built) == (when == "built"), "refused only once the model was built" if built else "not built"


def another_prior_optimizer(checkpoint: dict) -> None:
    checkpoint["optimizer"]["param_groups"][0]["params"] = checkpoint["optimizer"]["param_groups"][0]["params"][:-1]


PRIOR_LAST_EDITS = {
    "an unknown settings key": (lambda c: c["settings"].update(warmup=5), "its prior settings are not epochs"),
    "epochs as a string": (lambda c: c["settings"].update(epochs="2"), "--prior-epochs '2', which is of type str"),
    "a batch size of 0": (lambda c: c["settings"].update(batch_size=0), "--prior-batch-size 0, which is refused"),
    "a NaN learning rate": (lambda c: c["settings"].update(lr=float("nan")), "--prior-lr nan, which is refused"),
    "amp as a string": (lambda c: c["settings"].update(amp="no"), "--amp 'no', which must be true or false"),
    "a distorted fraction above 1": (lambda c: c["settings"].update(distorted=1.5),
                                     "--prior-distorted 1.5, which is refused"),
    "a prior for another K": (lambda c: c["prior"]["config"].update(num_embeddings=32),
                              "its prior models 32 codes but the autoencoder's have 16"),
    "a prior for another grid": (lambda c: c["prior"]["config"].update(grid_size=5),
                                 "models 5 positions a side of the code grid"),
    "an unknown config field": (lambda c: c["prior"]["config"].update(heads=3), "prior's config cannot be built"),
    "missing weights": (lambda c: c["prior"]["model"].pop("head.weight"), "prior's weights do not fit its config: "
                                                                          "they lack head.weight"),
    "an epoch past its epochs": (lambda c: c.update(epoch=5), "its epoch is 5, not an integer from 0 to 2"),
    "the autoencoder step as a string": (lambda c: c.update(autoencoder_step="4"), "autoencoder step is '4'"),
    "an optimizer over other parameters": (another_prior_optimizer, "is not that of this run's AdamW"),
}


@pytest.mark.parametrize("change, match", PRIOR_LAST_EDITS.values(), ids=PRIOR_LAST_EDITS)
def test_a_prior_last_pt_edited_anywhere_is_refused_in_one_line(change, match, stopped_prior, tiny_mnist, tmp_path,
                                                                monkeypatch):
    folder = copied(stopped_prior, tmp_path, monkeypatch)
    edit(folder / "prior_last.pt", change)
    message = one_line_refusal(lambda: train_tiny(tiny_mnist, "--prior-epochs", "2", "--resume"), re.escape(match))
    assert message.startswith("models/tiny/prior_last.pt: ")


def test_a_prior_last_pt_from_before_distorted_digits_resumes_as_it_trained(stopped_prior, tiny_mnist, tmp_path,
                                                                             monkeypatch):
    folder = copied(stopped_prior, tmp_path, monkeypatch)
    edit(folder / "prior_last.pt", lambda checkpoint: checkpoint["settings"].pop("distorted"))
    train_tiny(tiny_mnist, "--prior-epochs", "2", "--resume")
    assert torch.load(folder / "prior_last.pt", weights_only=True)["settings"]["distorted"] == 0.0
    assert torch.load(folder / "best.pt", weights_only=True)["prior"]["epoch"] in (1, 2)


def set_frequencies(checkpoint: dict, values) -> None:
    checkpoint["prior"]["model"]["class_frequencies"] = torch.tensor(values, dtype=torch.float32)


STORED_PRIOR_EDITS = {
    "5 classes": (lambda c: c["prior"]["config"].update(num_classes=5), "models 5 classes but the autoencoder's have "
                                                                        "10"),
    "a grid of 5": (lambda c: c["prior"]["config"].update(grid_size=5), "5 positions a side"),
    "a grid of 1": (lambda c: c["prior"]["config"].update(grid_size=1), "1 positions a side"),
    "2 levels": (lambda c: c["prior"]["config"].update(levels=2), "2 codes a position"),
    "another K": (lambda c: c["prior"]["config"].update(num_embeddings=8), "8 codes but the autoencoder's have 16"),
    "a negative class frequency": (lambda c: set_frequencies(c, [-0.1, 0.2] + [0.1] * 8),
                                   "negative blocks.0|negative class_frequencies"),
    "zero class frequencies": (lambda c: set_frequencies(c, [0.0] * 10), "class frequencies do not sum to 1"),
    "float16 prior weights": (lambda c: c["prior"]["model"].update(
        {"head.weight": c["prior"]["model"]["head.weight"].half()}), "torch.float16 where the model holds"),
}


def run_script(script: str, model: Path, data: Path) -> None:
    commands = {
        "generate random": (generate, ["--input", "random"]),
        "generate random unconditional": (generate, ["--input", "random", "--unconditional"]),
        "generate complete": (generate, ["--input", "complete"]),
        "evaluate": (evaluate, ["--samples", "10"]),
        "export": (export_model, ["--output", "exported.pt"]),
    }
    module, flags = commands[script]
    data_flags = [] if module is export_model else ["--data-folder", str(data)]
    module.main(module.build_parser().parse_args(["--model", str(model), *data_flags, *flags]))


@pytest.mark.parametrize("script", ["generate random", "generate random unconditional", "generate complete",
                                    "evaluate", "export"])
@pytest.mark.parametrize("change, match", STORED_PRIOR_EDITS.values(), ids=STORED_PRIOR_EDITS)
def test_a_stored_prior_that_does_not_fit_its_autoencoder_is_refused_by_every_script(change, match, script, finished,
                                                                                     tiny_mnist, tmp_path,
                                                                                     monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "crafted.pt"
    shutil.copy(finished, path)
    edit(path, change)
    one_line_refusal(lambda: run_script(script, path, tiny_mnist), match)
    assert not Path("exported.pt").exists() and not list(Path(".").glob("generatedImages/*.png"))


WEIGHT_EDITS = {
    "int": (lambda w: w.update({"encoder.layers.0.weight": w["encoder.layers.0.weight"].int()}), "torch.int32"),
    "bool": (lambda w: w.update({"encoder.layers.0.weight": w["encoder.layers.0.weight"] > 0}), "torch.bool"),
    "complex": (lambda w: w.update({"encoder.layers.0.weight": w["encoder.layers.0.weight"].to(torch.complex64)}),
                "torch.complex64"),
    "float16": (lambda w: w.update({"encoder.layers.0.weight": w["encoder.layers.0.weight"].half()}),
                "torch.float16"),
    "a negative BatchNorm variance": (lambda w: w["encoder.layers.1.running_var"].sub_(10),
                                      "negative encoder.layers.1.running_var"),
    "a negative code count": (lambda w: w["bottleneck.cluster_size"].sub_(1e6), "negative bottleneck.cluster_size"),
    "a weight too many": (lambda w: w.update(extra=torch.zeros(1)), "hold unknown extra"),
    "sparse": (lambda w: w.update({"encoder.layers.0.weight": w["encoder.layers.0.weight"].to_sparse()}),
               "encoder.layers.0.weight as a sparse, nested or empty"),
    "meta": (lambda w: w.update({"encoder.layers.0.weight": torch.empty_like(w["encoder.layers.0.weight"],
                                                                              device="meta")}),
             "encoder.layers.0.weight as a sparse, nested or empty"),
}


@pytest.mark.parametrize("change, match", WEIGHT_EDITS.values(), ids=WEIGHT_EDITS)
def test_weights_of_another_type_or_impossible_buffers_are_refused_on_every_load(change, match, finished,
                                                                                  tiny_mnist, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "crafted.pt"
    shutil.copy(finished, path)
    edit(path, lambda checkpoint: change(checkpoint["model"]))
    assert "encoder.layers.1.running_var" in torch.load(finished, weights_only=True)["model"]
    one_line_refusal(lambda: load_model(path), match)
    one_line_refusal(lambda: run_script("generate random", path, tiny_mnist), match)
    assert not list(Path(".").glob("generatedImages/*.png")), "a picture was written from impossible weights"


def prior_weights(best: Path) -> dict:
    return torch.load(best, weights_only=True)["prior"]["model"]


@pytest.mark.parametrize("bottleneck", ["vq", "rvq", "lfq"])
def test_a_run_that_dies_between_its_autoencoder_and_its_prior_resumes_to_the_unbroken_prior(bottleneck, tiny_mnist,
                                                                                          tmp_path, monkeypatch):
    unbroken = prior_weights(tiny_run_in(tmp_path / "unbroken", bottleneck=bottleneck) / "models/tiny/best.pt")
    (tmp_path / "broken").mkdir()
    monkeypatch.chdir(tmp_path / "broken")
    with monkeypatch.context() as patch:  # the process dies while it encodes the codes, before prior_last.pt
        fail_on_call(patch, prior_task, "encode_images", 1, RuntimeError("the machine went down"))
        with pytest.raises(RuntimeError, match="went down"):
            train_tiny(tiny_mnist, bottleneck=bottleneck)
    assert not Path("models/tiny/prior_last.pt").exists()
    assert "prior" not in torch.load("models/tiny/best.pt", weights_only=True)
    train_tiny(tiny_mnist, "--resume", bottleneck=bottleneck)
    assert_same_weights(unbroken, prior_weights(Path("models/tiny/best.pt")))


def test_a_prior_whose_prior_last_pt_was_deleted_trains_again_to_the_unbroken_prior(stopped_prior, tiny_mnist,
                                                                                    tmp_path, monkeypatch, capsys):
    unbroken = prior_weights(tiny_run_in(tmp_path / "unbroken", "--prior-epochs", "2") / "models/tiny/best.pt")
    (tmp_path / "broken").mkdir()
    folder = copied(stopped_prior, tmp_path / "broken", monkeypatch)
    (folder / "prior_last.pt").unlink()
    capsys.readouterr()
    train_tiny(tiny_mnist, "--prior-epochs", "2", "--resume")
    assert "prior_last.pt, which says where its prior stood, is missing: training its prior from its start" in \
        capsys.readouterr().out
    assert_same_weights(unbroken, prior_weights(folder / "best.pt"))


def test_a_resume_whose_best_pt_was_deleted_says_so_and_keeps_the_best_of_the_epochs_left(stopped_autoencoder,
                                                                                         tiny_mnist, tmp_path,
                                                                                         monkeypatch, capsys):
    folder = copied(stopped_autoencoder, tmp_path, monkeypatch)
    (folder / "best.pt").unlink()
    train_tiny(tiny_mnist, *TWO_EPOCHS, "--resume")
    out = capsys.readouterr().out
    assert "best.pt is missing, and with it epoch 1's autoencoder" in out
    assert torch.load(folder / "best.pt", weights_only=True)["epoch"] == 2 and "best: models/tiny/best.pt" in out


def test_a_finished_run_whose_best_pt_is_gone_says_what_to_do_without_flags_it_lacks(stopped_prior, tiny_mnist,
                                                                                  tmp_path, monkeypatch):
    folder = copied(stopped_prior, tmp_path, monkeypatch)
    (folder / "best.pt").unlink()
    message = one_line_refusal(lambda: train_tiny(tiny_mnist, "--prior-epochs", "2", "--resume"),
                               "models/tiny/best.pt is missing, so the prior has no autoencoder to model")
    assert "--model" not in message


def test_a_run_whose_best_pt_is_deleted_while_it_trains_says_so_at_its_end(tiny_mnist, tmp_path, monkeypatch,
                                                                         capsys):
    monkeypatch.chdir(tmp_path)
    original, calls = autoencoder_task.AutoencoderTask.validate, []

    def validate(self, step):  # epoch 2 does no better than epoch 1, and best.pt goes while it trains
        calls.append(step)
        validation = original(self, step)
        if len(calls) == 2:
            Path("models/tiny/best.pt").unlink()
            return validation._replace(score=math.inf)
        return validation

    monkeypatch.setattr(autoencoder_task.AutoencoderTask, "validate", validate)
    one_line_refusal(lambda: train_tiny(tiny_mnist, *TWO_EPOCHS),
                     "models/tiny/best.pt is missing, so the prior has no autoencoder to model: copy models/tiny/last.pt")
    assert "models/tiny/best.pt was deleted during the run, and no later epoch did better: models/tiny/last.pt " \
           "holds the last epoch's autoencoder" in capsys.readouterr().out


@pytest.mark.parametrize("flags, match, not_named", [
    (("--code-dim", "32768"), "multiply-adds in the bottleneck, more than", None),
    (("--k", "131072", "--code-dim", "64", "--batch-size", "256"), "multiply-adds", None),
    (("--bottleneck", "lfq", "--lfq-bits", "17"), "a tensor of 411,041,792 values", "--k"),
    (("--bottleneck", "rvq", "--k", "65536", "--code-dim", "64"), "multiply-adds", None),
])
def test_a_step_too_costly_is_refused_before_anything_is_made(flags, match, not_named, tiny_mnist, tmp_path,
                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)
    message = one_line_refusal(lambda: train_tiny(tiny_mnist, *flags, bottleneck=None), match)
    assert not Path("models").exists() and (not_named is None or not_named + "," not in message)


@pytest.mark.parametrize("bottleneck, config, positions, expected", [
    # The search's distance chunk (positions, K), and twice its K D multiply-adds with k-means++'s passes.
    ("vq", {"num_embeddings": 512, "code_dim": 16}, 3136, StepCost(3136 * 512, 2 * 3136 * 512 * 16)),
    ("vq", {"num_embeddings": 512, "code_dim": 16, "codebook_init": "random"}, 3136, StepCost(3136 * 512,
                                                                                                3136 * 512 * 16)),
    # Rows larger than the distance chunk: the (positions, D) rows themselves.
    ("vq", {"num_embeddings": 4, "code_dim": 4096}, 3136, StepCost(3136 * 4096, 2 * 3136 * 4 * 4096)),
    ("lfq", {"lfq_bits": 9}, 3136, StepCost(3136 * 512, 3136 * 512 * 9)),
    ("rvq", {"num_embeddings": 512, "code_dim": 16, "depth": 3}, 100, StepCost(100 * 512, 3 * 2 * 100 * 512 * 16)),
])
def test_the_step_cost_is_the_hand_counted_one(bottleneck, config, positions, expected):
    from modules import BOTTLENECKS

    kind = BOTTLENECKS[bottleneck]
    with torch.device("meta"):
        module = kind.from_config(kind.Config(**config), 8)
    assert module.step_cost(positions) == expected


def test_a_signal_abandons_a_step_only_where_the_loop_allows_it():
    with StopOnSignal() as stop:
        with stop.abandonable(False):
            os.kill(os.getpid(), signal.SIGTERM)
        assert stop.received == signal.SIGTERM  # noted, the block ran to its end
    with StopOnSignal() as stop:
        with pytest.raises(StepInterrupted), stop.abandonable(True):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # not reached: the handler raises at the next bytecode
        assert not stop.abandoning
        with pytest.raises(StepInterrupted), stop.abandonable(True):  # a signal noted before the block
            pass


def test_a_stop_during_the_codebooks_seeding_abandons_the_first_step_and_says_nothing_was_saved(tiny_mnist, tmp_path,
                                                                                               monkeypatch):
    monkeypatch.chdir(tmp_path)
    signal_on_call(monkeypatch, vector_quantizer, "kmeans_plus_plus", 1, signal.SIGTERM)
    with pytest.raises(RunStopped) as stopped:
        train_tiny(tiny_mnist, "--k", "256", bottleneck=None)
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    assert "within step 1, which was abandoned; nothing was saved yet" in str(stopped.value)
    assert not Path("models/tiny/last.pt").exists()


def test_running_out_of_memory_before_anything_was_saved_says_so(tiny_mnist, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fail_on_call(monkeypatch, autoencoder_task, "training_step", 1, torch.OutOfMemoryError("CUDA out of memory."))
    message = one_line_refusal(lambda: train_tiny(tiny_mnist), "out of memory")
    assert "nothing was saved yet (models/tiny/last.pt was not written)" in message
    assert "keeps what was last saved" not in message


@pytest.fixture(scope="module")
def finished_rvq(tmp_path_factory) -> Path:
    return tiny_run_in(tmp_path_factory.mktemp("rvq"), "--prior-epochs", "0", bottleneck="rvq") / "models" / "tiny"


@pytest.mark.parametrize("fixture, flags, match", [
    ("finished_rvq", ("--depth", "3"), "continues models/tiny/last.pt with its own --depth 2: drop --depth 3"),
    ("stopped_autoencoder", ("--depth", "3"), "--depth does not apply to the bottleneck vq of models/tiny/last.pt"),
    ("stopped_autoencoder", ("--fsq-levels", "4,4"), "--fsq-levels does not apply to the bottleneck vq of"),
])
def test_a_resume_checks_a_bottlenecks_flags_against_the_runs_own_bottleneck(fixture, flags, match, request,
                                                                            tiny_mnist, tmp_path, monkeypatch):
    copied(request.getfixturevalue(fixture), tmp_path, monkeypatch)
    extra = TWO_EPOCHS if fixture == "stopped_autoencoder" else ("--prior-epochs", "0")
    one_line_refusal(lambda: train_tiny(tiny_mnist, *extra, *flags, "--resume", bottleneck=None), re.escape(match))


@pytest.mark.parametrize("flags, match", [
    (("--bottleneck", "rvq", "--cosine"), "--bottleneck rvq: "),
    (("--bottleneck", "rvq", "--depth", "8", "--k", "131072"), "--bottleneck rvq: "),
])
def test_a_bottleneck_config_that_cannot_be_built_names_the_bottleneck_not_the_sizes(flags, match, tiny_mnist,
                                                                                     tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    message = one_line_refusal(lambda: train_tiny(tiny_mnist, *flags, bottleneck=None), re.escape(match))
    assert "--hidden-size" not in message


@pytest.mark.parametrize("change", [
    lambda c: c["config"].update(bottleneck=["vq"]),
    lambda c: c["config"].update(hidden_size=10 ** 5000),
    lambda c: c["config"]["bottleneck_config"].update(num_embeddings=[16]),
    lambda c: c["config"].update({3: 4}),
], ids=["a list for a name", "an integer too long to print", "a list for a count", "a field that is no name"])
def test_a_hand_edited_config_is_refused_without_raw_python(change, finished, tmp_path):
    path = tmp_path / "crafted.pt"
    shutil.copy(finished, path)
    edit(path, change)
    message = one_line_refusal(lambda: load_model(path), "crafted.pt")
    assert not re.search("unhashable|Exceeds the limit|Traceback", message)


def test_a_nested_tensor_among_the_weights_is_one_line_on_stderr_and_no_torch_warning(finished, tmp_path):
    path = tmp_path / "crafted.pt"
    shutil.copy(finished, path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the test's own making of a nested tensor
        edit(path, lambda c: c["model"].update({"bottleneck.cluster_size": torch.nested.nested_tensor(
            [c["model"]["bottleneck.cluster_size"]])}))
    result = subprocess.run([sys.executable, "export_model.py", "--model", str(path), "--output",
                             str(tmp_path / "out.pt")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and not (tmp_path / "out.pt").exists()
    assert result.stderr.splitlines() == [f"export_model.py: error: {path}: its weights give bottleneck.cluster_size "
                                          "as a sparse, nested or empty (meta) tensor, which training never writes: "
                                          f"{DAMAGED}"]
