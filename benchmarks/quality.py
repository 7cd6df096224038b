"""Reconstruction quality of vqvae.py on the MNIST test set: the default run over several seeds, and an ablation.

Usage (from the repository root; `python -m benchmarks.quality` is the same):
    python benchmarks/quality.py                      # default flags, seeds 0 1 2: 10 epochs, then 1 epoch
    python benchmarks/quality.py --seeds 0 --epochs 10
    python benchmarks/quality.py --ablation           # each quantizer option changed alone, 3 epochs, seed 0

Each run is `python vqvae.py --prior-epochs 0` in a subprocess, as a user runs it but without the prior, which does
not change the autoencoder (checkpoints in models/quality/...),
then `python evaluate.py --json` on its best.pt. Prints one Markdown table, ready for README.md.
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

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


def run(command: list[str]) -> str:
    result = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"quality.py: `{' '.join(command)}` failed:\n{result.stderr[-2000:]}")
    return result.stdout


def train_and_evaluate(name: str, flags: list[str], device: str) -> dict:
    started = time.perf_counter()
    run(["vqvae.py", "--output-folder", f"quality/{name}", "--overwrite", "--device", device, "--prior-epochs", "0",
         *flags])
    seconds = time.perf_counter() - started
    scores = json.loads(run(["evaluate.py", "--model", f"models/quality/{name}/best.pt", "--device", device,
                             "--json"]))
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Test-set quality of vqvae.py's default run over seeds, or an "
                                                 "ablation of its quantizer options.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds to run (default: 0 1 2)")
    parser.add_argument("--epochs", type=int, nargs="+", default=[10, 1],
                        help="--num-epochs of the seed runs, one table block each (default: 10 1)")
    parser.add_argument("--ablation", action="store_true",
                        help="instead: change each quantizer option alone, on the first seed")
    parser.add_argument("--ablation-epochs", type=int, default=3, help="epochs of each ablation run (default: 3)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="device to train on (default: cpu)")
    return parser


def main(args) -> None:
    if args.ablation:
        lines = ablation_table(args.ablation_epochs, args.seeds[0], args.device)
    else:
        lines = seeds_table(args.seeds, args.epochs, args.device)
    print("\n".join(lines))


if __name__ == "__main__":
    main(build_parser().parse_args())
