"""Checkpoints: exact round trip, atomic writes, the format number and the keys of each kind of file, files of
format 1 read in the current format, and loud refusal of files that are not checkpoints."""
import os
import pickle
from pathlib import Path

import pytest
import torch

from helpers import format_1, model_config
from modules import VQVAE
from pixel_distributions import images_to_inputs
from vqmnist.checkpoints.format import (FORMAT, MODEL_KEYS, PRIOR_KEYS, PRIOR_TRAINING_KEYS, TRAINING_KEYS, RunState,
                                        exported, load_checkpoint, load_prior_training, save_checkpoint,
                                        training_checkpoint)
from vqmnist.checkpoints.loading import load_model
from vqmnist.configuration.errors import UserError


def trained_model_and_optimizer():
    torch.manual_seed(0)
    model = VQVAE(model_config(hidden_size=8, num_embeddings=16))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = images_to_inputs(torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8))
    for _ in range(2):
        x_recon, quantized = model(x)
        loss = (x_recon - x).pow(2).mean() + model.bottleneck_loss(quantized)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model, optimizer, x


def make_checkpoint(model, optimizer, epoch: int, step: int) -> dict:
    """A training checkpoint of the model and optimizer, `epoch` epochs and `step` steps into a run."""
    schedule = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0)
    return training_checkpoint(model, optimizer, schedule, RunState(epoch=epoch, step=step), args={}, val=None,
                               device=torch.device("cpu"))


def test_checkpoint_round_trips_exactly(tmp_path):
    model, optimizer, x = trained_model_and_optimizer()
    path = tmp_path / "best.pt"
    save_checkpoint(path, make_checkpoint(model, optimizer, epoch=3, step=42))

    loaded, _, checkpoint, _ = load_model(path, torch.device("cpu"))
    assert loaded.config == model.config
    assert (checkpoint["epoch"], checkpoint["step"]) == (3, 42)
    original_state, loaded_state = model.state_dict(), loaded.state_dict()
    assert original_state.keys() == loaded_state.keys()
    for name in original_state:
        assert torch.equal(original_state[name], loaded_state[name]), name
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x).x_recon, loaded(x).x_recon)

    restored = torch.optim.Adam(loaded.parameters(), lr=1e-3)
    restored.load_state_dict(checkpoint["optimizer"])
    for state, original in zip(restored.state_dict()["state"].values(), optimizer.state_dict()["state"].values()):
        assert torch.equal(state["exp_avg"], original["exp_avg"])
        assert torch.equal(state["exp_avg_sq"], original["exp_avg_sq"])


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    model, optimizer, _ = trained_model_and_optimizer()
    path = tmp_path / "last.pt"
    save_checkpoint(path, make_checkpoint(model, optimizer, epoch=1, step=10))
    before = path.read_bytes()

    def crash_midway(obj, file):
        file.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(OSError):
        save_checkpoint(path, make_checkpoint(model, optimizer, epoch=2, step=20))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.pt"], "the temporary file was left behind"


class RunsCodeWhenUnpickled:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def write_bad_file(kind, path, tmp_path):
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "png":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    elif kind == "truncated":
        model, optimizer, _ = trained_model_and_optimizer()
        save_checkpoint(path, make_checkpoint(model, optimizer, epoch=1, step=1))
        path.write_bytes(path.read_bytes()[:2000])
    elif kind == "pickle that runs code":
        with open(path, "wb") as file:
            pickle.dump({"config": RunsCodeWhenUnpickled(tmp_path / "pwned")}, file, protocol=2)
    elif kind == "a plain tensor":
        torch.save(torch.zeros(3), path)


@pytest.mark.parametrize("kind", ["empty", "png", "truncated", "pickle that runs code", "a plain tensor"])
def test_bad_checkpoint_is_refused_with_a_clear_error(kind, tmp_path):
    path = tmp_path / "model.pt"
    write_bad_file(kind, path, tmp_path)
    with pytest.raises(UserError) as error:
        load_checkpoint(path, torch.device("cpu"))
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "pwned").exists(), "unpickling ran code"


def test_missing_checkpoint_says_how_to_make_one(tmp_path):
    with pytest.raises(UserError, match="python vqvae.py"):
        load_checkpoint(tmp_path / "nothing.pt", torch.device("cpu"))


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path):
    model, optimizer, _ = trained_model_and_optimizer()
    checkpoint = make_checkpoint(model, optimizer, epoch=1, step=1)
    checkpoint["config"]["hidden_size"] = 16
    save_checkpoint(tmp_path / "mismatch.pt", checkpoint)
    with pytest.raises(UserError, match="do not fit"):
        load_model(tmp_path / "mismatch.pt", torch.device("cpu"))


def test_a_checkpoint_records_its_format():
    model, optimizer, _ = trained_model_and_optimizer()
    checkpoint = make_checkpoint(model, optimizer, epoch=1, step=1)
    assert checkpoint["format"] == FORMAT
    assert set(checkpoint) == set(TRAINING_KEYS)
    assert set(exported(checkpoint)) == set(MODEL_KEYS)


@pytest.mark.parametrize("version", [FORMAT + 1, 0, "2"])
def test_an_unknown_format_is_refused_in_one_line(version, tmp_path):
    model, optimizer, _ = trained_model_and_optimizer()
    checkpoint = make_checkpoint(model, optimizer, epoch=1, step=1)
    checkpoint["format"] = version
    save_checkpoint(tmp_path / "future.pt", checkpoint)
    with pytest.raises(UserError, match=f"format {version!r}") as error:
        load_model(tmp_path / "future.pt")
    assert "\n" not in str(error.value) and "update the code" in str(error.value)


@pytest.mark.parametrize("key", ["epoch", "step", "val", "args"])
def test_a_missing_key_is_refused_in_one_line(key, tmp_path):
    model, optimizer, _ = trained_model_and_optimizer()
    checkpoint = make_checkpoint(model, optimizer, epoch=1, step=1)
    del checkpoint[key]
    save_checkpoint(tmp_path / "incomplete.pt", checkpoint)
    with pytest.raises(UserError, match=f"incomplete checkpoint \\(it lacks {key}\\)") as error:
        load_model(tmp_path / "incomplete.pt")
    assert "\n" not in str(error.value)


def test_a_format_1_checkpoint_loads_with_the_current_names(tmp_path):
    model, optimizer, x = trained_model_and_optimizer()
    checkpoint = make_checkpoint(model, optimizer, epoch=2, step=8)
    checkpoint["args"] = {"num_embeddings": 16, "ema_decay": 0.95, "prior_num_heads": 4, "seed": 3}
    save_checkpoint(tmp_path / "old.pt", format_1(checkpoint))
    assert "k" in torch.load(tmp_path / "old.pt", weights_only=True)["args"]
    loaded, _, upgraded, _ = load_model(tmp_path / "old.pt")
    assert upgraded["format"] == FORMAT and upgraded["args"] == checkpoint["args"]
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x).x_recon, loaded(x).x_recon)


def test_a_format_3_prior_names_its_no_class_token_nll_as_format_4_does(tmp_path):
    model, optimizer, _ = trained_model_and_optimizer()
    old = {**make_checkpoint(model, optimizer, epoch=2, step=8), "format": 3,
           "prior": {"val_nll_bits": 5.5, "val_nll_bits_unconditional": 5.9}}
    save_checkpoint(tmp_path / "old.pt", old)
    upgraded = load_checkpoint(tmp_path / "old.pt")
    assert upgraded["format"] == FORMAT == 4
    assert upgraded["prior"] == {"val_nll_bits": 5.5, "val_nll_bits_no_class_token": 5.9}


@pytest.mark.parametrize("version, readable", [(3, True), (FORMAT, True), (2, False), (FORMAT + 1, False)])
def test_a_prior_training_checkpoint_of_format_3_or_4_is_read_and_of_others_refused(version, readable, tmp_path):
    stored = {key: 0 for key in PRIOR_TRAINING_KEYS} | {"format": version, "settings": {"epochs": 1}}
    save_checkpoint(tmp_path / "prior_last.pt", stored)
    if readable:
        assert load_prior_training(tmp_path / "prior_last.pt")["format"] == version
    else:
        with pytest.raises(UserError, match="not a prior training checkpoint of this version"):
            load_prior_training(tmp_path / "prior_last.pt")


def test_the_pretrained_models_prior_holds_the_current_keys():
    checkpoint = load_checkpoint(Path(__file__).resolve().parent.parent / "pretrained" / "vqvae_mnist.pt")
    assert set(checkpoint["prior"]) == set(PRIOR_KEYS)


def test_non_finite_weights_are_refused_naming_the_file(tmp_path):
    model, optimizer, _ = trained_model_and_optimizer()
    checkpoint = make_checkpoint(model, optimizer, epoch=1, step=1)
    checkpoint["model"]["encoder.layers.0.weight"][0, 0, 0, 0] = float("nan")
    save_checkpoint(tmp_path / "diverged.pt", checkpoint)
    with pytest.raises(UserError, match="diverged.pt: its weights hold a NaN or an infinity in encoder.layers.0.weight") as error:
        load_model(tmp_path / "diverged.pt")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("field, value, message", [
    ("num_embeddings", -5, "num_embeddings must be an integer from 1 to 131,072, not -5"),
    ("hidden_size", 8.5, "hidden_size must be an integer from 1 to 65,536, not 8.5"),
    ("ema_decay", 1.5, "ema_decay must be a number in \\[0, 1\\), not 1.5"),
    ("decoder_output", "sigmoid", "decoder_output must be one of"),
    ("codebook_init", "zeros", "codebook_init must be one of"),
])
def test_a_hand_edited_config_that_cannot_be_built_is_one_line(field, value, message, tmp_path):
    model, optimizer, _ = trained_model_and_optimizer()
    checkpoint = make_checkpoint(model, optimizer, epoch=1, step=1)
    config = checkpoint["config"]
    (config if field in config else config["bottleneck_config"])[field] = value
    save_checkpoint(tmp_path / "edited.pt", checkpoint)
    with pytest.raises(UserError, match=f"edited.pt has a model config this version cannot build: {message}") as error:
        load_model(tmp_path / "edited.pt")
    assert "\n" not in str(error.value)
