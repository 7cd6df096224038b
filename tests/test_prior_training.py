"""The prior in the pipeline: vqvae.py trains it after the autoencoder and stores it in best.pt, --prior-only
(re)trains it for an existing run, a stop during it is resumable, generate.py samples from it; and a small
prior learns class-conditional code patterns."""
import math
import signal

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import generate
from helpers import TINY_PRIOR, signal_on_call, tiny_run_in, train_tiny
from prior import CodePrior, PriorConfig
from vqmnist.configuration import training_flags
from vqmnist.configuration.errors import RunStopped, UserError
import vqvae


def generate_grid(model, *flags):
    generate.main(generate.build_parser().parse_args(["--model", str(model), *flags]))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The folder of the default tiny run (the autoencoder, then its prior), trained once for the tests that only
    read it."""
    return tiny_run_in(tmp_path_factory.mktemp("tiny_run"))


def test_prior_is_trained_after_the_autoencoder_logged_and_stored_in_best(tiny_run, monkeypatch):
    monkeypatch.chdir(tiny_run)
    best = torch.load("models/tiny/best.pt", weights_only=True)
    prior = best["prior"]
    assert prior["config"]["num_embeddings"] == 16 and prior["config"]["width"] == 16
    assert prior["epoch"] == 1 and 0 < prior["val_nll_bits"] < 2 * math.log2(16)
    # p(class): the tiny training set's 256 labels are 0..9 repeated, so 26 of each of 0..5 and 25 of 6..9.
    expected = torch.tensor([26.0] * 6 + [25.0] * 4) / 256
    torch.testing.assert_close(prior["model"]["class_frequencies"], expected)
    rebuilt = CodePrior(PriorConfig(**prior["config"]))
    rebuilt.load_state_dict(prior["model"])

    events = EventAccumulator("logs/tiny", size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()
    for tag in ("prior/train_nll_bits", "prior/val_nll_bits", "prior/val_nll_bits_no_class_token"):
        assert tag in tags["scalars"], tag
    assert "prior/samples" in tags["images"]
    # 256 training grids in batches of 64, a point per step (--log-interval 1).
    assert [event.step for event in events.Scalars("prior/train_nll_bits")] == [1, 2, 3, 4]

    # last.pt holds the autoencoder's training state, not the prior: the message says where to get one.
    assert "prior" not in torch.load("models/tiny/last.pt", weights_only=True)
    with pytest.raises(UserError, match="no prior .*--prior-only"):
        generate_grid("models/tiny/last.pt", "--input", "random")


def test_prior_only_trains_a_prior_for_an_existing_autoencoder(tiny_mnist, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train_tiny(tiny_mnist, "--prior-epochs", "0")
    before = torch.load("models/tiny/best.pt", weights_only=True)
    assert "prior" not in before
    with pytest.raises(UserError, match="holds no prior"):
        generate_grid("models/tiny/best.pt", "--input", "random")

    vqvae.main(training_flags.build_parser().parse_args(
        ["--data-folder", str(tiny_mnist), "--output-folder", "tiny", "--prior-only", *TINY_PRIOR[2:],
         "--prior-epochs", "2"]))
    after = torch.load("models/tiny/best.pt", weights_only=True)
    assert after["prior"]["epoch"] in (1, 2)
    for name, tensor in before["model"].items():
        assert torch.equal(tensor, after["model"][name]), f"--prior-only changed the autoencoder's {name}"
    generate_grid("models/tiny/best.pt", "--input", "random")
    assert (tmp_path / "generatedImages" / "random.png").is_file()


def test_a_bad_prior_shape_is_refused_before_the_autoencoder_trains(tiny_mnist, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="must divide"):
        train_tiny(tiny_mnist, "--prior-width", "10", "--prior-heads", "4")
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize("flags, message", [
    (["--prior-only", "--resume"], "drop --resume"),
    (["--prior-only", "--prior-epochs", "0"], "nothing to do"),
    (["--prior-only", "--output-folder", "never-trained"], "train the autoencoder first"),
])
def test_prior_flag_errors(flags, message, tiny_mnist, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=message):
        train_tiny(tiny_mnist, *flags)


def test_stop_during_the_prior_keeps_the_autoencoder_and_resume_trains_the_prior(tiny_mnist, tmp_path,
                                                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)
    with monkeypatch.context() as patch:
        signal_on_call(patch, torch.optim.AdamW, "step", 2, signal.SIGTERM)  # the prior's second step
        with pytest.raises(RunStopped, match=r"at step 2 \(prior epoch 1, batch 2 of 4\); saved "
                                             r"models/tiny/prior_last.pt; continue with: .* --resume") as stopped:
            train_tiny(tiny_mnist)
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    assert "prior" not in torch.load("models/tiny/best.pt", weights_only=True)
    assert torch.load("models/tiny/prior_last.pt", weights_only=True)["step"] == 2
    train_tiny(tiny_mnist, "--resume")
    assert torch.load("models/tiny/best.pt", weights_only=True)["prior"]["epoch"] == 1


PRIOR_TWO_EPOCHS = ("--prior-epochs", "2", "--prior-dropout", "0.1", "--prior-distorted", "0.5")


@pytest.fixture(scope="module")
def uninterrupted_prior(tmp_path_factory):
    """best.pt's prior and prior_last.pt of the tiny run with two prior epochs, trained without a stop."""
    folder = tiny_run_in(tmp_path_factory.mktemp("uninterrupted_prior"), *PRIOR_TWO_EPOCHS) / "models" / "tiny"
    return (torch.load(folder / "best.pt", weights_only=True)["prior"],
            torch.load(folder / "prior_last.pt", weights_only=True))


@pytest.mark.parametrize("stop_at_step", [3, 4, 6])  # mid-epoch, an epoch's last step, mid second epoch
def test_a_stop_in_the_prior_resumes_to_the_bit_of_the_unbroken_run(stop_at_step, uninterrupted_prior, tiny_mnist,
                                                                    tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with monkeypatch.context() as patch:
        signal_on_call(patch, torch.optim.AdamW, "step", stop_at_step, signal.SIGTERM)
        with pytest.raises(RunStopped, match=f"at step {stop_at_step} "):
            train_tiny(tiny_mnist, *PRIOR_TWO_EPOCHS)
    train_tiny(tiny_mnist, *PRIOR_TWO_EPOCHS, "--resume")
    best_prior, last = uninterrupted_prior
    resumed_best = torch.load("models/tiny/best.pt", weights_only=True)["prior"]
    resumed_last = torch.load("models/tiny/prior_last.pt", weights_only=True)
    assert resumed_best["epoch"] == best_prior["epoch"] and resumed_best["val_nll_bits"] == best_prior["val_nll_bits"]
    for name, tensor in last["prior"]["model"].items():
        assert torch.equal(tensor, resumed_last["prior"]["model"][name]), name
    for name, tensor in best_prior["model"].items():
        assert torch.equal(tensor, resumed_best["model"][name]), name


def test_a_resume_after_the_prior_finished_has_nothing_to_do(tiny_mnist, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    train_tiny(tiny_mnist)
    before = torch.load("models/tiny/best.pt", weights_only=True)["prior"]["model"]
    capsys.readouterr()
    train_tiny(tiny_mnist, "--resume")
    assert "nothing to do" in capsys.readouterr().out
    after = torch.load("models/tiny/best.pt", weights_only=True)["prior"]["model"]
    assert all(torch.equal(before[name], after[name]) for name in before)


@pytest.mark.parametrize("flags, message", [
    (["--input", "MNIST", "--digit", "3"], "with --input random"),
    (["--input", "noise", "--unconditional"], "with --input random"),
    (["--input", "random", "--digit", "3", "--unconditional"], "only one"),
])
def test_generate_sample_flag_errors(flags, message, tiny_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=message):
        generate_grid(tiny_run / "models" / "tiny" / "best.pt", *flags)


def test_prior_learns_a_code_pattern_per_class_and_samples_them():
    """Each class c has one fixed grid of codes; class-dropped examples make the unconditional path learn the
    mixture. After training, samples given c are c's grid, and samples without a class are one of the grids."""
    torch.manual_seed(0)
    config = PriorConfig(num_embeddings=8, grid_size=3, num_classes=3, width=32, num_layers=2, num_heads=4,
                         dropout=0.0)
    patterns = torch.randint(8, (3, 3, 3), generator=torch.Generator().manual_seed(0))
    prior = CodePrior(config)
    optimizer = torch.optim.AdamW(prior.parameters(), lr=3e-3)
    for _ in range(400):
        classes = torch.randint(3, (64,))
        codes = patterns[classes]
        classes = torch.where(torch.rand(64) < 0.3, prior.no_class, classes)
        loss = prior.loss(codes, classes)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    prior.eval()
    generator = torch.Generator().manual_seed(0)
    asked = torch.arange(3).repeat(10)
    assert torch.equal(prior.sample(asked, 1.0, generator=generator), patterns[asked])
    # A little below temperature 1, so that the mixture's small leftovers between patterns are not sampled.
    unconditional = prior.sample(torch.full((30,), prior.no_class), 0.7, generator=generator)
    matches = (unconditional[:, None] == patterns[None]).flatten(2).all(-1)  # (30, 3): equal to pattern c?
    assert matches.any(1).all()
    assert matches.sum(0).min() > 0, "some class never comes up without a class token"
