"""Reconstruction quality of vqvae.py on the MNIST test set: the default run over several seeds, and an ablation.

Usage (from the repository root):
    python -m benchmarks.quality                      # default flags, seeds 0 1 2: 10 epochs, then 1 epoch
    python -m benchmarks.quality --seeds 0 --epochs 10
    python -m benchmarks.quality --ablation           # each quantizer option changed alone, 3 epochs, seed 0

Each run is `python vqvae.py --prior-epochs 0` in a subprocess, as a user runs it but without the prior, which does
not change the autoencoder (checkpoints in models/quality/...),
then `python evaluate.py --json --samples 0` on its best.pt. Prints one Markdown table, ready for README.md. Every
flag and the device are checked before anything trains.
"""
import json
import statistics
import sys
import time

from benchmarks.flags import check_once
from benchmarks.scripts import run_script
from vqmnist.configuration.cli import (ArgumentParser, add_device_flag, integer, refuse_inapplicable, resolve_device,
                                       run_cli)
from vqmnist.configuration.errors import UserError
from vqmnist.configuration.limits import MAX_EPOCHS, MAX_SEED

# (name, flags added to the defaults): each row changes one thing from the default configuration.
ABLATION = [
    ("default", []),
    ("codebook loss instead of EMA", ["--codebook", "loss"]),
    ("uniform init instead of k-means++", ["--init", "uniform"]),
    ("no dead-code restart", ["--restart-threshold", "0"]),
    ("codes in the 64-d hidden space, no projection", ["--code-dim", "0"]),
    ("cosine (L2-normalised) codes", ["--cosine"]),
    ("logits output with BCE instead of tanh with MSE", ["--decoder-output", "logits"]),
    ("reference quantizer: all of the above off, beta 1",
     ["--codebook", "loss", "--init", "uniform", "--restart-threshold", "0", "--code-dim", "0", "--beta", "1.0"]),
]


def train_and_evaluate(name: str, flags: list[str], device: str) -> dict:
    started = time.perf_counter()
    run_script(["vqvae.py", "--output-folder", f"quality/{name}", "--overwrite", "--device", device, "--prior-epochs",
                "0", *flags], show_progress=False)
    seconds = time.perf_counter() - started
    command = ["evaluate.py", "--model", f"models/quality/{name}/best.pt", "--device", device, "--samples", "0",
               "--json"]
    try:
        scores = json.loads(run_script(command, show_progress=False))
    except ValueError:
        scores = None
    if not isinstance(scores, dict):
        raise UserError(f"`python {' '.join(command)}` printed no scores: run it yourself to see what it prints")
    scores["seconds"] = seconds
    print(f"  {name}: test MSE {scores['test_mse']:.5f}, usage {scores['codebook_usage']:.1%}, "
          f"perplexity {scores['perplexity']:.0f}, {seconds:.0f} s", file=sys.stderr, flush=True)
    return scores


def row(label: str, scores: dict) -> str:
    return (f"| {label} | {scores['test_mse']:.5f} | {scores['psnr']:.2f} | {scores['codebook_usage']:.1%} | "
            f"{scores['perplexity']:.0f} | {scores['seconds'] / 60:.1f} |")


HEADER = ["| run | test MSE | PSNR (dB) | codebook usage | perplexity | train time (min) |",
          "|---|---|---|---|---|---|"]


def seeds_table(seeds: list[int], epochs: list[int], device: str) -> list[str]:
    lines = list(HEADER)
    for num_epochs in epochs:
        results = [train_and_evaluate(f"seed{seed}-epochs{num_epochs}",
                                      ["--seed", str(seed), "--num-epochs", str(num_epochs)], device)
                   for seed in seeds]
        lines += [row(f"seed {seed}, {num_epochs} epoch{'s' * (num_epochs > 1)}", scores)
                  for seed, scores in zip(seeds, results)]
        if len(results) > 1:
            mean = {key: statistics.fmean(scores[key] for scores in results)
                    for key in ("test_mse", "psnr", "codebook_usage", "perplexity", "seconds")}
            lines.append(row(f"**mean, {num_epochs} epoch{'s' * (num_epochs > 1)}**", mean))
    return lines


def ablation_table(num_epochs: int, seed: int, device: str) -> list[str]:
    lines = list(HEADER)
    for index, (label, flags) in enumerate(ABLATION):
        scores = train_and_evaluate(f"ablation{index}", ["--seed", str(seed), "--num-epochs", str(num_epochs),
                                                         *flags], device)
        lines.append(row(label, scores))
    return lines


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description="Test-set quality of vqvae.py's default run over seeds, or an ablation of its "
                                        "quantizer options.")
    parser.add_argument("--seeds", type=integer(0, MAX_SEED), nargs="+", default=[0, 1, 2],
                        help=f"seeds to run, each 0 to {MAX_SEED:,} and once; --ablation takes one (default: 0 1 2, "
                             "and 0 with --ablation)")
    parser.add_argument("--epochs", type=integer(1, MAX_EPOCHS), nargs="+", default=[10, 1],
                        help=f"--num-epochs of the seed runs, one table block each, 1 to {MAX_EPOCHS:,} (default: "
                             "10 1)")
    parser.add_argument("--ablation", action="store_true",
                        help="instead: change each quantizer option alone, on one seed")
    parser.add_argument("--ablation-epochs", type=integer(1, MAX_EPOCHS), default=3,
                        help=f"epochs of each ablation run, 1 to {MAX_EPOCHS:,} (default: 3)")
    add_device_flag(parser, "train on")
    return parser


def main(args) -> None:
    # Every flag and the device checked before anything trains.
    resolve_device(args.device)
    check_once(args.seeds, " ".join(map(str, args.seeds)), "--seeds")
    check_once(args.epochs, " ".join(map(str, args.epochs)), "--epochs")
    if args.ablation:
        refuse_inapplicable(args, ["epochs"], "with --ablation, whose runs train --ablation-epochs")
        if "seeds" in getattr(args, "typed", set()) and len(args.seeds) > 1:
            raise UserError(f"--ablation trains each option on one seed, not the {len(args.seeds)} of --seeds "
                            f"{' '.join(map(str, args.seeds))}: give one")
        lines = ablation_table(args.ablation_epochs, args.seeds[0], args.device)
    else:
        refuse_inapplicable(args, ["ablation_epochs"], "without --ablation, which alone trains them")
        lines = seeds_table(args.seeds, args.epochs, args.device)
    print("\n".join(lines))


if __name__ == "__main__":
    run_cli(main, build_parser().parse_args())
