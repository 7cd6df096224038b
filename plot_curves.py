"""Plot the training curves of a run, read from its TensorBoard event files, to one PNG.

Usage:
    python plot_curves.py                                    # logs/vqvae -> generatedImages/curves.png
    python plot_curves.py --run logs/wide --output generatedImages/wide_curves.png

Panels: the autoencoder's reconstruction loss (training, and validation after each epoch), its validation MSE in
[0, 1] pixels, its validation codebook perplexity (or a Gaussian VAE's KL), and the prior's negative
log-likelihood in bits per code (training, and validation with and without the class). Panels whose curves the run
did not log are left out.
"""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cli import ArgumentParser, UserError, run_cli
from files import atomic_path

PANELS = [
    ("autoencoder: reconstruction loss (MSE in [-1, 1])", "step", True,
     [("train/loss_reconstruction", "train"), ("val/loss_reconstruction", "validation")]),
    ("autoencoder: validation MSE in [0, 1] pixels", "step", True, [("val/mse_pixels", "validation")]),
    ("autoencoder: validation codebook perplexity", "step", False, [("val/perplexity", "validation")]),
    ("autoencoder: KL(q(z|x) || N(0, I)), bits per image", "step", False,
     [("train/kl_bits", "train"), ("val/kl_bits", "validation")]),
    ("prior: negative log-likelihood (bits per code)", "prior step", False,
     [("prior/train_nll_bits", "train"), ("prior/val_nll_bits", "validation, with the class"),
      ("prior/val_nll_bits_unconditional", "validation, without")]),
]


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
    panels = [panel for panel in PANELS if any(tag in logged for tag, _ in panel[3])]
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
