"""Time against quality: train three presets of the default command, score each with evaluate.py at five sample
seeds, and write one Markdown table.

Usage (from the repository root):
    python -m benchmarks.frontier                       # fast, default and quality, each trained once
    python -m benchmarks.frontier --presets default     # one of them
    python -m benchmarks.frontier --out-dir docs        # the table to docs/frontier.md

Each preset is `python vqvae.py FLAGS` in a subprocess, as a user runs it, kept in models/frontier/NAME, its wall
time taken from the outside and its autoencoder's and prior's seconds from its run.json; then `python evaluate.py
--json --seed S --samples 1000` on its best.pt for each --seeds S, kept in models/frontier/NAME/scores-S.json. A
preset with scores is read back, so a stopped run of this script goes on where it was (a stopped training starts
again; a kept file that cannot be read is made again). Every flag, the device and --out-dir are checked before
anything trains.
The table gives the test MSE, codes used and the rate (the prior's NLL of the test grids, the same at every seed),
for the samples with the digit asked for the recognisable fraction, the fraction read as asked and the Frechet
distance against its floor (as many real test digits), and for the unconditional samples the recognisable fraction
and the Frechet distance against the floor, each at every seed with the worst of them first.
"""
import json
import sys
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent

from benchmarks.flags import check_once, check_out_dir
from benchmarks.scripts import run_script
from vqmnist.configuration.cli import ArgumentParser, add_device_flag, integer, resolve_device, run_cli
from vqmnist.configuration.errors import UserError
from vqmnist.configuration.limits import MAX_SEED
from vqmnist.io.files import atomic_path, write_failure, write_json

SAMPLES = 1000  # evaluate.py --samples of each scoring: 100 of each digit where it is asked for


class Preset(NamedTuple):
    name: str
    flags: tuple[str, ...]  # vqvae.py flags beside the defaults


PRESETS = {
    "fast": Preset("fast", ("--num-epochs", "2", "--prior-epochs", "2")),  # aims at under 3 minutes
    "default": Preset("default", ()),  # under 8 minutes, with the pretrained model's scores
    "quality": Preset("quality", ("--num-epochs", "24", "--prior-epochs", "10")),  # under 20 minutes
}


def read_kept(path: Path, what: str) -> dict | None:
    """The JSON object kept at path, or None where there is none; one that cannot be read is said on stderr and made
    again."""
    if not path.is_file():
        return None
    try:
        kept = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        kept = None
    if isinstance(kept, dict):
        return kept
    print(f"frontier: {path} is unreadable; {what} again", file=sys.stderr, flush=True)
    return None


def train(preset: Preset, model_dir: Path, args) -> dict:
    """Train the preset unless an earlier call kept its times.json; its seconds: wall, autoencoder, prior."""
    times_path = model_dir / "times.json"
    kept = read_kept(times_path, "training the preset")
    if kept is not None:
        return kept
    print(f"frontier: training {preset.name}: python vqvae.py {' '.join(preset.flags)}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    run_script(["vqvae.py", "--output-folder", f"frontier/{preset.name}", "--overwrite", "--device", args.device,
                *preset.flags])
    try:
        figures = json.loads((model_dir / "run.json").read_text())
        times = {"wall": time.perf_counter() - started, "autoencoder": figures["autoencoder"]["seconds"],
                 "prior": figures["prior"]["seconds"]}
    except (OSError, ValueError, RecursionError, KeyError, TypeError):
        raise UserError(f"{model_dir / 'run.json'} is missing or unreadable after vqvae.py trained the preset: run "
                        "the frontier again to train it anew") from None
    write_json(times_path, times)
    return times


def scores_at(model_dir: Path, seed: int, args) -> dict:
    path = model_dir / f"scores-{seed}.json"
    kept = read_kept(path, "scoring it")
    if kept is not None:
        return kept
    command = ["evaluate.py", "--model", str(model_dir / "best.pt"), "--device", args.device, "--seed", str(seed),
               "--samples", str(SAMPLES), "--json"]
    try:
        scores = json.loads(run_script(command))
    except ValueError:
        scores = None
    if not isinstance(scores, dict):
        raise UserError(f"`python {' '.join(command)}` printed no scores: run it yourself to see what it prints")
    write_json(path, scores)
    return scores


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
    # Every flag and the place of the table checked before anything trains.
    resolve_device(args.device)
    check_once(args.presets, " ".join(args.presets), "--presets")
    check_once(args.seeds, " ".join(map(str, args.seeds)), "--seeds")
    if args.out_dir is not None:
        check_out_dir(args.out_dir, what="frontier.md")
    seeds = ", ".join(map(str, args.seeds))
    lines = ["| preset | command | wall s (autoencoder + prior) | test MSE | PSNR (dB) | codes used | rate (bits) | "
             f"digit asked: recognisable, worst: seeds {seeds} | as asked | Frechet distance / floor | "
             "unconditional: recognisable | Frechet distance / floor |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    floors = {}
    for name in args.presets:
        preset, model_dir = PRESETS[name], ROOT / "models" / "frontier" / name
        times = train(preset, model_dir, args)
        by_seed = [scores_at(model_dir, seed, args) for seed in args.seeds]
        floors[name] = [scores["samples"]["real"]["frechet_distance"] for scores in by_seed]
        lines.append(row(preset, times, by_seed, floors[name]))
    each = "; ".join(f"{' / '.join(f'{floor:.2f}' for floor in values)} for {name}" for name, values in floors.items())
    lines.append(f"\nSamples: {SAMPLES:,} of each kind per seed ({SAMPLES // 10:,} of each digit where it is asked "
                 f"for); the floor, the Frechet distance of {SAMPLES:,} real test digits, is {each}, at the seeds.")
    print("\n".join(lines), flush=True)
    if args.out_dir is not None:
        path = args.out_dir / "frontier.md"
        try:
            with atomic_path(path) as temporary:
                temporary.write_text("\n".join(lines) + "\n")
        except OSError as error:
            raise write_failure(path, error, "run the frontier again; its scores are kept") from None


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description="Train and score the fast, default and quality presets.")
    parser.add_argument("--presets", nargs="+", choices=list(PRESETS), default=list(PRESETS),
                        help="which presets, in order, each once (default: fast default quality)")
    parser.add_argument("--seeds", nargs="+", type=integer(0, MAX_SEED), default=[0, 1, 2, 3, 4],
                        help=f"evaluate.py --seed of each scoring, each 0 to {MAX_SEED:,} and once (default: 0 1 2 3 "
                             "4)")
    add_device_flag(parser, "train and score on")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="also write the table to OUT_DIR/frontier.md (default: print it only)")
    return parser


if __name__ == "__main__":
    run_cli(main, build_parser().parse_args())
