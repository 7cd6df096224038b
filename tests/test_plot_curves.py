"""plot_curves.py draws a run's TensorBoard curves to a PNG, one panel per group of curves the run logged."""
import pytest
from PIL import Image

from helpers import train_tiny
import plot_curves
from vqmnist.configuration.errors import UserError


def plot(*flags):
    plot_curves.main(plot_curves.build_parser().parse_args(list(flags)))


@pytest.mark.parametrize("prior_epochs, panels", [("1", 4), ("0", 3)])
def test_curves_of_a_run_become_one_png(prior_epochs, panels, tiny_mnist, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    train_tiny(tiny_mnist, "--prior-epochs", prior_epochs)
    plot("--run", "logs/tiny", "--output", "out/curves.png")
    assert f"{panels} panels" in capsys.readouterr().out
    image = Image.open(tmp_path / "out" / "curves.png")
    assert image.format == "PNG" and image.size == (int(4.2 * 100 * panels), 340)


def test_a_folder_without_events_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="no TensorBoard event files"):
        plot("--run", str(tmp_path), "--output", str(tmp_path / "curves.png"))
    assert not (tmp_path / "curves.png").exists()
