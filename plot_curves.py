"""Plot the training curves of a run, read from its TensorBoard event files, to one PNG.

Usage:
    python plot_curves.py                                    # logs/vqvae -> generatedImages/curves.png
    python plot_curves.py --run logs/wide --output generatedImages/wide_curves.png

Panels: the autoencoder's reconstruction loss (training, and validation after each epoch), its validation MSE in
[0, 1] pixels, one panel for each health figure its bottleneck logged (the codes' perplexity, a Gaussian VAE's KL,
...: training and validation), and the prior's negative log-likelihood in bits per code (training, and validation
with and without the class). Panels whose curves the run did not log are left out.
"""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vqmnist.configuration.cli import ArgumentParser, run_cli
from vqmnist.configuration.errors import UserError
from vqmnist.io.files import atomic_path
from vqmnist.scores.reconstructions import CODE_STATISTICS

AUTOENCODER_PANELS = [
    ("autoencoder: reconstruction loss (MSE in [-1, 1])", "step", True,
     [("train/loss_reconstruction", "train"), ("val/loss_reconstruction", "validation")]),
    ("autoencoder: validation MSE in [0, 1] pixels", "step", True, [("val/mse_pixels", "validation")]),
]
PRIOR_PANEL = ("prior: negative log-likelihood (bits per code)", "prior step", False,
               [("prior/train_nll_bits", "train"), ("prior/val_nll_bits", "validation, with the class"),
                ("prior/val_nll_bits_no_class_token", "validation, with the no-class token"),
                ("prior/val_nll_bits_unconditional", "validation, with the no-class token")])  # its tag before format 4
# Validation curves that are not a bottleneck's health figure, or that its perplexity panel already says.
NOT_HEALTH = {"mse_pixels", "ssim", *CODE_STATISTICS} - {"perplexity"}


def health_panels(logged: set[str]) -> list:
    """A panel for each health figure the bottleneck logged as val/NAME, with its training curve train/NAME."""
    names = sorted(tag.removeprefix("val/") for tag in logged if tag.startswith("val/"))
    return [(f"autoencoder: {name.replace('_', ' ')}", "step", False, [(f"train/{name}", "train"),
                                                                       (f"val/{name}", "validation")])
            for name in names if name not in NOT_HEALTH and not name.startswith("loss_")]


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description="Plot a run's TensorBoard curves to a PNG.")
    parser.add_argument("--run", default="logs/vqvae", help="folder of the run's event files (default: logs/vqvae)")
    parser.add_argument("--output", default="generatedImages/curves.png",
                        help="PNG to write (default: generatedImages/curves.png)")
    return parser


def main(args) -> None:
    run = Path(args.run)
    if not any(run.glob("events.out.tfevents.*")):
        raise UserError(f"no TensorBoard event files in {run}: pass --run logs/NAME of a run of vqvae.py")
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    logged = set(events.Tags()["scalars"])
    candidates = [*AUTOENCODER_PANELS, *health_panels(logged), PRIOR_PANEL]
    panels = [panel for panel in candidates if any(tag in logged for tag, _ in panel[3])]
    if not panels:
        raise UserError(f"{run} holds none of the curves vqvae.py logs")

    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for axis, (title, x_label, log_scale, curves) in zip(axes[0], panels):
        for tag, label in curves:
            if tag in logged:
                points = events.Scalars(tag)
                axis.plot([point.step for point in points], [point.value for point in points], label=label,
                          marker="o" if len(points) < 30 else None, markersize=3)
        axis.set_title(title, fontsize=9)
        axis.set_xlabel(x_label)
        if log_scale:
            axis.set_yscale("log")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()

    output = Path(args.output)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(output) as temporary:
            figure.savefig(temporary, format="png", dpi=100)
    except OSError as error:
        raise UserError(f"cannot write {output}: {error.strerror or error}") from None
    plt.close(figure)
    print(f"wrote {output} ({len(panels)} panels from {run})")


if __name__ == "__main__":
    run_cli(main, build_parser().parse_args())
