"""Time against quality: train three presets of the default command, score each with evaluate.py at five sample
seeds, and write one Markdown table.

Usage (from the repository root; `python -m benchmarks.frontier` is the same):
    python benchmarks/frontier.py                       # fast, default and quality, each trained once
    python benchmarks/frontier.py --presets default     # one of them
    python benchmarks/frontier.py --out-dir docs        # the table to docs/frontier.md

Each preset is `python vqvae.py FLAGS` in a subprocess, as a user runs it, kept in models/frontier/NAME, its wall
time taken from the outside and its autoencoder's and prior's seconds from its run.json; then `python evaluate.py
--json --seed S` on its best.pt for each --seeds S, kept in models/frontier/NAME/scores-S.json. A preset with
scores is read back, so a stopped run of this script goes on where it was (a stopped training starts again).
The table gives the test MSE, codes used and the rate (the prior's NLL of the test grids, the same at every seed),
for the samples with the digit asked for the recognisable fraction, the fraction read as asked and the Frechet
distance against its floor (as many real test digits), and for the unconditional samples the recognisable fraction
and the Frechet distance against the floor, each at every seed with the worst of them first.
"""
import argparse
import json
import sys
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent

from benchmarks.scripts import run_script
from vqmnist.io.files import atomic_path, write_json


class Preset(NamedTuple):
    name: str
    flags: tuple[str, ...]  # vqvae.py flags beside the defaults


PRESETS = {
    "fast": Preset("fast", ("--num-epochs", "2", "--prior-epochs", "2")),  # aims at under 3 minutes
    "default": Preset("default", ()),  # under 8 minutes, with the pretrained model's scores
    "quality": Preset("quality", ("--num-epochs", "24", "--prior-epochs", "10")),  # under 20 minutes
}


def train(preset: Preset, model_dir: Path, args) -> dict:
    """Train the preset unless an earlier call kept its times.json; its seconds: wall, autoencoder, prior."""
    times_path = model_dir / "times.json"
    if times_path.is_file():
        return json.loads(times_path.read_text())
    print(f"frontier: training {preset.name}: python vqvae.py {' '.join(preset.flags)}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    run_script(["vqvae.py", "--output-folder", f"frontier/{preset.name}", "--overwrite", "--device", args.device,
         *preset.flags])
    figures = json.loads((model_dir / "run.json").read_text())
    times = {"wall": time.perf_counter() - started, "autoencoder": figures["autoencoder"]["seconds"],
             "prior": figures["prior"]["seconds"]}
    write_json(times_path, times)
    return times


def scores_at(model_dir: Path, seed: int, args) -> dict:
    path = model_dir / f"scores-{seed}.json"
    if not path.is_file():
        write_json(path, json.loads(run_script(["evaluate.py", "--model", str(model_dir / "best.pt"), "--device",
                                         args.device, "--seed", str(seed), "--json"])))
    return json.loads(path.read_text())


def worst_then_each(values: list[float], text, worst=min) -> str:
    """'worst: a / b / c', each value written by text()."""
    return f"{text(worst(values))}: " + " / ".join(text(value) for value in values)


def row(preset: Preset, times: dict, by_seed: list[dict], floors: list[float]) -> str:
    first = by_seed[0]
    command = "python vqvae.py" + "".join(f" {flag}" for flag in preset.flags)
    columns = []
    for kind in ("prior_conditional", "prior_unconditional"):
        samples = [scores["samples"][kind] for scores in by_seed]
        columns.append(worst_then_each([sample["recognisable"] for sample in samples], lambda value: f"{value:.1%}"))
        if kind == "prior_conditional":
            columns.append(worst_then_each([sample["matches_class"] for sample in samples],
                                           lambda value: f"{value:.1%}"))
        columns.append(worst_then_each([sample["frechet_distance"] / floor for sample, floor in zip(samples, floors)],
                                       lambda value: f"{value:.2f}x", worst=max))
    return (f"| {preset.name} | `{command}` | {times['wall']:.0f} ({times['autoencoder']:.0f} + "
            f"{times['prior']:.0f}) | {first['test_mse']:.5f} | {first['psnr']:.2f} | {first['codes_used']}/"
            f"{first['num_embeddings']} | {first['rate_bits']:.1f} | {' | '.join(columns)} |")


def main(args) -> None:
    seeds = ", ".join(map(str, args.seeds))
    lines = ["| preset | command | wall s (autoencoder + prior) | test MSE | PSNR (dB) | codes used | rate (bits) | "
             f"digit asked: recognisable, worst: seeds {seeds} | as asked | Frechet distance / floor | "
             "unconditional: recognisable | Frechet distance / floor |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    floors = []
    for name in args.presets:
        preset, model_dir = PRESETS[name], ROOT / "models" / "frontier" / name
        times = train(preset, model_dir, args)
        by_seed = [scores_at(model_dir, seed, args) for seed in args.seeds]
        floors = [scores["samples"]["real"]["frechet_distance"] for scores in by_seed]
        lines.append(row(preset, times, by_seed, floors))
    lines.append(f"\nSamples: 1,000 of each kind per seed (100 of each digit where it is asked for); the floor, the "
                 f"Frechet distance of 1,000 real test digits, is {' / '.join(f'{floor:.2f}' for floor in floors)} "
                 "at the seeds.")
    print("\n".join(lines), flush=True)
    if args.out_dir is not None:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(args.out_dir / "frontier.md") as temporary:
            temporary.write_text("\n".join(lines) + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train and score the fast, default and quality presets.")
    parser.add_argument("--presets", nargs="+", choices=list(PRESETS), default=list(PRESETS),
                        help="which presets, in order (default: fast default quality)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4],
                        help="evaluate.py --seed of each scoring (default: 0 1 2 3 4)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="device to train on (default: cpu)")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="also write the table to OUT_DIR/frontier.md (default: print it only)")
    return parser


if __name__ == "__main__":
    main(build_parser().parse_args())
