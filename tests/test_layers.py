"""The two layers: the core (the model files at the top level) imports nothing of the package; the training step is
reached from vqvae.main through at most two project functions; each setting has one default, its option's."""
import json
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch

from helpers import train_tiny
from modules import VQVAEConfig
from options import flag_dest, option_fields
from prior import PriorConfig
from vqmnist.checkpoints.format import trained_val_size
from vqmnist.configuration import training_flags
from vqmnist.configuration.errors import UserError
from vqmnist.running.autoencoder_task import TrainingSettings
from vqmnist.running.prior_task import PriorSettings

ROOT = Path(__file__).resolve().parent.parent
# The top-level files that are not scripts (nor testers.py, the quantizer checks pytest runs): the core.
CORE = sorted(path.stem for path in ROOT.glob("*.py")
              if '__name__ == "__main__"' not in path.read_text() and path.stem != "testers")


def test_the_core_holds_every_top_level_file_that_defines_a_torch_module():
    defines_a_module = {path.stem for path in ROOT.glob("*.py") if "(nn.Module" in path.read_text()
                        or "(Bottleneck)" in path.read_text()}
    assert {"modules", "bottleneck", "vector_quantizer", "prior"} <= defines_a_module <= set(CORE)
    assert not {"vqvae", "generate", "evaluate"} & set(CORE)


# Each core file imported alone, in a process of its own: forked from one that has imported torch (and nothing of the
# project), so the dozen imports pay for starting Python and torch once. Prints {name: the vqmnist modules loaded, or
# the import's error}.
IMPORT_EACH_ALONE = """
import json, os, sys, traceback
import torch
loaded = {}
for name in sys.argv[1:]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            __import__(name)
            found = sorted(module for module in sys.modules if module.split('.')[0] == 'vqmnist')
        except BaseException:
            found = traceback.format_exc()
        with os.fdopen(write, 'w') as pipe:
            json.dump(found, pipe)
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        loaded[name] = json.loads(pipe.read() or '"no answer from its process"')
    os.waitpid(pid, 0)
print(json.dumps(loaded))
"""


@pytest.fixture(scope="module")
def imported_alone() -> dict:
    """{core file: the vqmnist modules that importing it alone loaded, or the import's error}."""
    result = subprocess.run([sys.executable, "-c", IMPORT_EACH_ALONE, *CORE], cwd=ROOT, capture_output=True,
                            text=True, check=True)
    return json.loads(result.stdout)


@pytest.mark.parametrize("name", CORE)
def test_a_core_file_imported_alone_loads_no_module_of_the_package(name, imported_alone):
    assert imported_alone[name] == []


def test_the_first_optimizer_step_is_two_project_functions_below_main(tiny_mnist, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stacks = []
    original = torch.optim.Adam.step

    def step(self, *args, **kwargs):
        if not stacks:
            stacks.append([(Path(frame.filename).resolve(), frame.name) for frame in traceback.extract_stack()])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    train_tiny(tiny_mnist, "--prior-epochs", "0")
    project = [(path, name) for path, name in stacks[0] if path.is_relative_to(ROOT) and "tests" not in path.parts]
    names = [f"{path.relative_to(ROOT)}:{name}" for path, name in project]
    assert names[0] == "vqvae.py:main", names
    assert len(names) - 1 <= 2, names


@pytest.mark.parametrize("config_type, prefix", [(TrainingSettings, ""), (PriorSettings, ""), (VQVAEConfig, ""),
                                                 (PriorConfig, "prior_")])
def test_each_flag_defaults_to_its_options_default_and_reads_back_as_it(config_type, prefix):
    parser = training_flags.build_parser()
    flagged = [item for item in option_fields(config_type) if item.metadata["flag"] is not None]
    assert flagged
    for item in flagged:
        assert parser.get_default(flag_dest(item, prefix)) == item.default, item.name
    args = parser.parse_args([])
    args.amp = False
    assert training_flags.from_flags(config_type, args, prefix) == config_type()


def test_the_prior_settings_are_read_from_their_own_flags():
    args = training_flags.build_parser().parse_args(
        ["--prior-epochs", "3", "--prior-batch-size", "32", "--prior-lr", "0.01", "--class-dropout", "0.2",
         "--prior-distorted", "0.5", "--seed", "7", "--log-interval", "9", "--batch-size", "16"])
    args.amp = True
    assert training_flags.from_flags(PriorSettings, args) == PriorSettings(
        epochs=3, batch_size=32, lr=0.01, class_dropout=0.2, distorted=0.5, seed=7, amp=True, log_interval=9)
    assert training_flags.PRIOR_SETTING_FLAGS == {
        "epochs": "prior_epochs", "batch_size": "prior_batch_size", "lr": "prior_lr", "class_dropout": "class_dropout",
        "distorted": "prior_distorted", "seed": "seed", "amp": "amp", "log_interval": "log_interval"}


@pytest.mark.parametrize("stored, default, expected", [({"val_size": 64}, 5000, 64), ({}, 123, 123)])
def test_a_checkpoints_validation_split_is_its_own_or_the_default_given(stored, default, expected):
    assert trained_val_size({"args": stored}, "x.pt", default) == expected


def test_a_stored_validation_split_that_is_not_a_count_is_refused():
    with pytest.raises(UserError, match="stores a --val-size of 1.5"):
        trained_val_size({"args": {"val_size": 1.5}}, "x.pt", TrainingSettings.val_size)
