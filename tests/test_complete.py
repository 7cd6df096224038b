"""generate.py --input complete: the prior completes test digits from the top rows of their code grids; the kept rows
are the digit's own codes, the rest are the prior's own sampling from that prefix."""
import numpy as np
import pytest
import torch

import generate
from helpers import tiny_run_in
from pixel_distributions import images_to_inputs
from vqmnist.checkpoints.loading import load_model
from vqmnist.configuration.errors import UserError
from vqmnist.io.data import load_mnist


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny run's best.pt, with its prior."""
    return tiny_run_in(tmp_path_factory.mktemp("complete")) / "models" / "tiny" / "best.pt"


def complete(data_folder, model, *flags) -> np.ndarray:
    generate.main(generate.build_parser().parse_args(["--model", str(model), "--input", "complete", "--data-folder",
                                                      str(data_folder), "--save-codes", "codes.npy", *flags]))
    return np.load("codes.npy").reshape(10, 10, 7, 7)  # row i: digit i's own grid, then its nine completions


@pytest.mark.parametrize("keep_rows", [1, 3, 6])
def test_the_kept_rows_are_the_digits_own_codes(keep_rows, tiny_run, tiny_mnist, tmp_path, monkeypatch):
    best = tiny_run
    monkeypatch.chdir(tmp_path)
    grids = complete(tiny_mnist, best, "--keep-rows", str(keep_rows))
    model = load_model(best).model
    images, labels = load_mnist(tiny_mnist, train=False)
    test_codes = model.encode(images_to_inputs(images)).numpy()  # every test digit's grid, encoded here
    for digit in range(10):
        own = grids[digit, 0]
        assert any((own == test_codes[i]).all() for i in np.flatnonzero(labels.numpy() == digit)), \
            f"row {digit} does not start with the grid of a test digit {digit}"
        assert (grids[digit, 1:, :keep_rows] == own[:keep_rows]).all()
    assert (tmp_path / "generatedImages" / "complete.png").is_file()


@pytest.mark.parametrize("flags", [[], ["--unconditional"]])
def test_the_completed_rows_are_the_priors_own_sampling_from_the_prefix(flags, tiny_run, tiny_mnist, tmp_path,
                                                                         monkeypatch):
    best = tiny_run
    monkeypatch.chdir(tmp_path)
    grids = complete(tiny_mnist, best, "--seed", "5", *flags)
    model, prior, _, _ = load_model(best)
    _, labels = load_mnist(tiny_mnist, train=False)
    generator = torch.Generator().manual_seed(5)
    torch.randperm(len(labels), generator=generator)  # the draw that picks the digits comes first
    prefix = torch.from_numpy(grids[:, 0, :3]).flatten(1).repeat_interleave(9, 0)
    classes = (torch.full((90,), prior.no_class) if flags else
               torch.arange(10).repeat_interleave(9))
    expected = prior.sample(classes, 1.0, 0.75, generator, prefix)
    assert np.array_equal(grids[:, 1:].reshape(90, 7, 7), expected.numpy())


@pytest.mark.parametrize("flags, message", [
    (["--input", "random", "--keep-rows", "2"], "use it with --input complete"),
    (["--input", "MNIST", "--unconditional"], "use them with --input random"),
])
def test_complete_flag_errors(flags, message, tiny_run, tiny_mnist, tmp_path, monkeypatch):
    best = tiny_run
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=message):
        generate.main(generate.build_parser().parse_args(["--model", str(best), *flags]))


@pytest.mark.parametrize("rows", ["0", "7"])
def test_kept_rows_outside_one_to_six_are_a_flag_error(rows, capsys):
    with pytest.raises(SystemExit) as exit_:
        generate.build_parser().parse_args(["--input", "complete", "--keep-rows", rows])
    assert exit_.value.code == 2 and "must be an integer from 1 to 6" in capsys.readouterr().err


def test_a_checkpoint_without_a_prior_cannot_complete(tiny_run, tiny_mnist, tmp_path, monkeypatch):
    best = tiny_run
    monkeypatch.chdir(tmp_path)
    checkpoint = torch.load(best, weights_only=True)
    del checkpoint["prior"]
    torch.save(checkpoint, tmp_path / "no_prior.pt")
    with pytest.raises(UserError, match="holds no prior"):
        complete(tiny_mnist, tmp_path / "no_prior.pt")
