"""What K, D, the bottleneck and the quantizer do: train the runs of a named study, score each with evaluate.py, and
write a Markdown table and a distortion-rate plot (for the likelihood study, bits per dimension against the rate).

Usage (from the repository root):
    python -m benchmarks.study --study k             # K in 16, 64, 256, 512, 1024 (VQ, all else default)
    python -m benchmarks.study --study d             # D in 2, 4, 8, 16, 32, 64
    python -m benchmarks.study --study bottleneck    # reference VQ, default VQ, FSQ, Gaussian VAE at 3 KL weights
    python -m benchmarks.study --study quantizers    # VQs, rotation trick, SimVQ, LFQ, residual VQ, FSQ: 512 codes
    python -m benchmarks.study --study all --epochs 3 --prior-epochs 2 --out-dir docs/images
    python -m benchmarks.study --study bottleneck --bottlenecks vq,fsq,mine   # any registered ones, at defaults
    python -m benchmarks.study --study likelihood    # bits/dim: Gaussian VAE and VQ over capacity, the quantizers

Each row is `python vqvae.py` in a subprocess, as a user runs it, with --num-epochs --epochs, --prior-epochs and
--seed, kept in models/study/NAME; then `python evaluate.py --json` on its best.pt, whose scores are kept in
models/study/NAME/scores.json. A study stopped part-way (Ctrl-C) resumes: a row with scores is read back, a run
that stopped goes on with --resume. Rows with the same flags are one run, shared by the studies.

Every row has the test MSE, PSNR and SSIM, PSNR and SSIM as published MNIST tables compute them (per 8-bit image,
then averaged), the codes used and their perplexity, the rate in bits per image (the
prior's NLL of the test codes without the class, or the Gaussian VAE's KL), the unconditional samples'
recognisable fraction and Frechet distance (the prior's class drawn by itself, or the Gaussian's N(0, I)), and the
seconds of training (autoencoder and prior, from its run.json). --bottlenecks makes the bottleneck study's rows
from the command line: one a registered bottleneck, at its defaults (vq: the default row), so that a new one is a
row without an edit here. --data-folder and --dataset go to every run and score; --train-flags adds vqvae.py flags
to every run (and its folder's name then ends in a digest of them), but none the study sets itself (the folder,
--num-epochs, --prior-epochs, --seed, --device, the data, --resume or --overwrite, --time-limit, --prior-only, and any
flag a row of the study sets, as its label says): such a flag, or one with which vqvae.py would refuse a row, is
refused in one line before anything trains, as a bad flag, a --device cuda without CUDA and an --out-dir that cannot
take the tables are. The table goes to OUT_DIR/study_NAME.md and stdout, the plot of test MSE against the rate to
OUT_DIR/study_NAME.png. Each scored run also goes to TensorBoard's hparams dashboard, its flags beside its scores, in
its own logs/study/NAME folder: `tensorboard --logdir logs/study` sets the rows side by side.

The likelihood study's rows all have a likelihood decoder (--decoder-output logistic, and one categorical), and its
own table: each row's bounds in bits per dimension from evaluate.py (the learned prior's without and with the class
and the uniform prior's for codes, the importance-weighted bound and the negative ELBO for the Gaussian VAE), where
the bits go (pixels given the latents, the latents), the test MSE, the PSNR per 8-bit image and the samples'
scores; its plot is the bits/dim bound against the rate.

A kept scores.json the table cannot read is scored again. One study runs at a time: it holds models/study (its
.lock) while it runs, and a second one stops at once.
"""
import argparse
import hashlib
import itertools
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from torch.utils.tensorboard import SummaryWriter

from benchmarks.flags import check_out_dir
from benchmarks.scripts import run_script
from modules import BOTTLENECKS
from vqmnist.configuration import training_flags
from vqmnist.configuration.cli import ArgumentParser, integer, resolve_device, run_cli
from vqmnist.configuration.errors import UserError
from vqmnist.configuration.limits import MAX_EPOCHS, MAX_SAMPLES, MAX_SEED
from vqmnist.io.data import DATASETS
from vqmnist.io.files import atomic_path, write_failure, write_json
from vqmnist.running.run_folder import hold_folder
from vqmnist.scores.samples import FRECHET_MIN_SAMPLES


class Row(NamedTuple):
    label: str
    name: str  # the run's folder under models/study/, before the epochs and seed
    flags: tuple[str, ...]  # vqvae.py flags beside the defaults
    bottleneck: str  # the plot's marker set


DEFAULT = Row("default VQ (EMA, k-means++, restarts)", "default", (), "VQ")
REFERENCE_FLAGS = ("--codebook", "loss", "--init", "uniform", "--restart-threshold", "0", "--code-dim", "0", "--beta",
                   "1.0")
KL_WEIGHTS = (1.0, 0.1, 0.01)
REFERENCE = Row("reference VQ (codebook loss, beta 1)", "reference", REFERENCE_FLAGS, "reference VQ")
FSQ = Row("FSQ, levels 8,8,8 (512 codes)", "fsq888", ("--bottleneck", "fsq", "--fsq-levels", "8,8,8"), "FSQ")
STUDIES = {
    "k": [DEFAULT._replace(label="K = 512 (default)") if k == 512 else Row(f"K = {k}", f"k{k}", ("--k", str(k)), "VQ")
          for k in (16, 64, 256, 512, 1024)],
    "d": [DEFAULT._replace(label="D = 16 (default)") if d == 16
          else Row(f"D = {d}", f"d{d}", ("--code-dim", str(d)), "VQ") for d in (2, 4, 8, 16, 32, 64)],
    "bottleneck": [
        REFERENCE,
        DEFAULT,
        FSQ,
        *[Row(f"Gaussian VAE, KL weight {weight:g}", f"gaussian{weight:g}",
              ("--bottleneck", "gaussian", "--kl-weight", str(weight)), "Gaussian") for weight in KL_WEIGHTS],
    ],
    # 512 codes a level, the same encoder and decoder; each new quantizer with its paper's (or its reference code's)
    # settings, and the rotation trick beside the row it changes only the gradient of.
    "quantizers": [
        REFERENCE,
        Row("rotation trick, codebook loss (reference VQ + --gradient rotation)", "reference-rotation",
            (*REFERENCE_FLAGS, "--gradient", "rotation"), "rotation trick, codebook loss"),
        DEFAULT,
        Row("rotation trick, EMA (default VQ + --gradient rotation)", "rotation", ("--gradient", "rotation"),
            "rotation trick, EMA"),
        Row("SimVQ (codebook = learned linear map of a frozen basis)", "simvq", ("--bottleneck", "simvq"), "SimVQ"),
        Row("LFQ, 9 sign bits (512 codes)", "lfq9", ("--bottleneck", "lfq", "--lfq-bits", "9"), "LFQ"),
        Row("residual VQ, 2 levels of 512", "rvq2", ("--bottleneck", "rvq", "--depth", "2"), "residual VQ"),
        FSQ,
    ],
}
# The paper's comparison (its section 4.1) on MNIST: the Gaussian VAE and the VQ-VAE with the same encoder and the
# same likelihood decoder over latent capacity, beside the other quantizers at their defaults.
LIKELIHOOD_DECODER = ("--decoder-output", "logistic")
STUDIES["likelihood"] = [
    *[Row(f"Gaussian VAE, D = {d}", f"likelihood-gaussian-d{d}",
          (*LIKELIHOOD_DECODER, "--bottleneck", "gaussian", "--code-dim", str(d)), "Gaussian") for d in (2, 16)],
    *[Row(f"VQ, K = {k}", f"likelihood-vq-k{k}", (*LIKELIHOOD_DECODER, "--k", str(k)), "VQ") for k in (32, 512)],
    Row("VQ, K = 512, 256-way categorical decoder", "likelihood-vq-k512-categorical",
        ("--decoder-output", "categorical"), "VQ, categorical decoder"),
    *[Row(f"{name} at its defaults", f"likelihood-{name}", (*LIKELIHOOD_DECODER, "--bottleneck", name), marker)
      for name, marker in (("fsq", "FSQ"), ("lfq", "LFQ"), ("simvq", "SimVQ"), ("rvq", "residual VQ"))],
]
# Each bottleneck's marker, and where its points' names go (offset in points, alignment), apart from the others'.
# A line joins the points of one marker set, so each set is one sweep of a setting (KL weights) or one point.
MARKERS = {"VQ": ("o", (5, 5), "left"), "reference VQ": ("D", (5, 5), "left"), "FSQ": ("s", (-6, -12), "right"),
           "Gaussian": ("^", (5, -12), "left"), "rotation trick, codebook loss": ("<", (5, -12), "left"),
           "rotation trick, EMA": (">", (5, -12), "left"),
           "SimVQ": ("P", (-6, 5), "right"), "LFQ": ("X", (-6, -12), "right"), "residual VQ": ("*", (5, 5), "left")}
# A marker set of none of the above (a bottleneck row from --bottlenecks) takes the next of these.
SPARE_MARKERS = ("v", "p", "h", "d", "8", "H", "1", "2", "3", "4")
# The marker set of each registered bottleneck's row at its defaults, where it has one above.
BOTTLENECK_MARKERS = {"vq": "VQ", "fsq": "FSQ", "lfq": "LFQ", "simvq": "SimVQ", "gaussian": "Gaussian",
                      "rvq": "residual VQ"}


def bottleneck_rows(names: list[str]) -> list[Row]:
    """A row of each registered bottleneck named, at its defaults; vq's is the default row."""
    return [DEFAULT if name == "vq" else
            Row(f"{name} at its defaults", name, ("--bottleneck", name), BOTTLENECK_MARKERS.get(name, name))
            for name in names]


def bottleneck_names(text: str) -> list[str]:
    """An argparse type: comma-separated names of registered bottlenecks, each once."""
    names = text.split(",")
    unknown = [name for name in names if name not in BOTTLENECKS]
    if unknown:
        raise argparse.ArgumentTypeError(f"{', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not "
                                         f"registered in modules.BOTTLENECKS: choose from {', '.join(BOTTLENECKS)}")
    if len(set(names)) < len(names):
        raise argparse.ArgumentTypeError(f"name each bottleneck once, got {text}")
    return names


def marker_styles(rows: list[Row]) -> dict[str, tuple]:
    """The plot's marker, and where its points' names go, of each marker set the rows use: MARKERS' own, or the
    next spare one, so that every row is drawn."""
    spare = itertools.cycle(SPARE_MARKERS)
    styles = {}
    for row in rows:
        if row.bottleneck not in styles:
            styles[row.bottleneck] = MARKERS.get(row.bottleneck) or (next(spare), (5, 5), "left")
    return styles


def study_rows(name: str, args) -> list[Row]:
    return bottleneck_rows(args.bottlenecks) if name == "bottleneck" and args.bottlenecks else STUDIES[name]


DEFAULT_EXTRA = ["--data-folder", "data", "--dataset", "mnist"]  # what a row is given when nothing else is


def run_folder(row: Row, args) -> str:
    """The row's folder under models/: its name, epochs and seed, and a digest of what else every row was given."""
    extra = [*args.train_flags, "--data-folder", args.data_folder, "--dataset", args.dataset]
    digest = "" if extra == DEFAULT_EXTRA else "-x" + hashlib.sha256(" ".join(extra).encode()).hexdigest()[:8]
    return f"study/{row.name}-e{args.epochs}-p{args.prior_epochs}-s{args.seed}{digest}"


# evaluate.py's scores and vqvae.py's run.json are a few kilobytes; a kept file far larger is not one of theirs,
# and is not read whole into memory.
MAX_KEPT_BYTES = 1 << 20


def read_kept_json(path: Path):
    """The JSON value in path; OSError, ValueError (not UTF-8 or not JSON, or too large) or RecursionError (nested
    too deep) if it has none."""
    with open(path, "rb") as file:
        content = file.read(MAX_KEPT_BYTES + 1)
    if len(content) > MAX_KEPT_BYTES:
        raise ValueError(f"over {MAX_KEPT_BYTES} bytes")
    return json.loads(content)


def table_of(row: Row):
    """The table that shows the row: the likelihood study's for its rows, else the common one."""
    return likelihood_table if row in STUDIES["likelihood"] else table


def tabulable(row: Row, scores) -> bool:
    """Whether the row's table (and so the plot, which reads the same figures) can show scores as row's."""
    # Rendering the row is the check that cannot drift from what the table reads.
    try:
        table_of(row)([row], [scores])
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        return False
    return True


def kept_scores(row: Row, path: Path, shown: str) -> dict | None:
    """The scores kept at path, or None where there are none the table can use (said on stderr if a file is
    there), so that the row is scored again."""
    if not os.path.lexists(path):
        return None
    try:
        scores = read_kept_json(path)
    except (OSError, ValueError, RecursionError):
        scores = None
    if tabulable(row, scores):
        return scores
    print(f"study: {shown} is unreadable; scoring the row again", file=sys.stderr, flush=True)
    return None


def part_seconds(model_dir: Path, shown: str) -> dict:
    """{"autoencoder": s, "prior": s} (the parts trained) from the run.json vqvae.py has just written."""
    try:
        figures = read_kept_json(model_dir / "run.json")
        if not isinstance(figures, dict):
            raise TypeError
        seconds = {part: figures[part]["seconds"] for part in ("autoencoder", "prior") if part in figures}
        if not all(isinstance(value, (int, float)) for value in seconds.values()):
            raise TypeError
    except (OSError, ValueError, RecursionError, KeyError, TypeError):
        raise UserError(f"{shown}/run.json is missing or unreadable after vqvae.py trained it: delete {shown} and "
                        "run the study again to train the row anew") from None
    return seconds


def train_and_score(row: Row, args) -> dict:
    """The row's scores: read back from its scores.json, or trained (or resumed) and evaluated now."""
    folder = run_folder(row, args)
    data = ["--data-folder", args.data_folder, "--dataset", args.dataset]
    model_dir = ROOT / "models" / folder
    scores_path = model_dir / "scores.json"
    kept = kept_scores(row, scores_path, f"models/{folder}/scores.json")
    if kept is not None:
        return kept
    print(f"study: {row.label}: training models/{folder}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    # A finished run's --resume has nothing to train, so a row kept without its scores is only evaluated again.
    if (model_dir / "last.pt").is_file():
        run_script(["vqvae.py", "--output-folder", folder, "--device", args.device, "--data-folder",
                    args.data_folder, "--resume"])
    else:
        run_script(["vqvae.py", *row_command(row, args, folder)])
    seconds = part_seconds(model_dir, f"models/{folder}")
    command = ["evaluate.py", "--model", str(model_dir / "best.pt"), "--device", args.device, "--samples",
               str(args.samples), *data, "--json"]
    try:
        scores = json.loads(run_script(command))
    except ValueError:
        scores = None
    if isinstance(scores, dict):
        scores["seconds"] = seconds
        scores["wall_seconds"] = time.perf_counter() - started
    # Kept, scores the table cannot read would be scored again on every run of the study.
    if not tabulable(row, scores):
        raise UserError(f"`python {' '.join(command)}` printed no scores the study's table can read: run it "
                        "yourself to see what it prints")
    try:
        write_json(scores_path, scores)
    except OSError as error:
        raise write_failure(scores_path, error, "run the study again") from None
    log_hparams(row, args, scores, ROOT / "logs" / folder)
    return scores


def log_hparams(row: Row, args, scores: dict, log_dir: Path) -> None:
    """The run's flags and scores on TensorBoard's hparams dashboard, in the run's own log folder."""
    hparams = {"row": row.label, "flags": " ".join(row.flags) or "(defaults)", "bottleneck": scores["bottleneck"],
               "epochs": args.epochs, "prior_epochs": args.prior_epochs, "seed": args.seed}
    samples = scores.get("samples", {}).get("prior_unconditional") or {}
    metrics = {"test_mse": scores["test_mse"], "psnr": scores["psnr"], "ssim": scores["ssim"],
               "psnr_8bit": scores["published_protocol"]["psnr"], "ssim_8bit": scores["published_protocol"]["ssim"],
               "codebook_usage": scores.get("codebook_usage"), "rate_bits": scores["rate_bits"],
               "recognisable": samples.get("recognisable"), "frechet_distance": samples.get("frechet_distance")}
    with SummaryWriter(log_dir) as writer:
        writer.add_hparams(hparams, {f"hparam/{name}": value for name, value in metrics.items() if value is not None},
                           run_name=".")


def table(rows: list[Row], results: list[dict]) -> list[str]:
    lines = ["| run | test MSE | PSNR (dB) | SSIM | PSNR / SSIM per 8-bit image | codes used | perplexity | "
             "rate (bits/image) | recognisable | Frechet distance | train s (autoencoder + prior) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row, scores in zip(rows, results):
        discrete = "codes_used" in scores  # a bottleneck with codes reports their statistics
        codes = f"{scores['codes_used']}/{scores['num_embeddings'] * (scores.get('code_levels') or 1)}" if discrete \
            else "-"
        perplexity = f"{scores['perplexity']:.0f}" if discrete else "-"
        rate = "-" if scores["rate_bits"] is None else f"{scores['rate_bits']:.1f}"
        samples = scores.get("samples", {}).get("prior_unconditional")
        recognisable, distance = ("-", "-") if samples is None else (
            f"{samples['recognisable']:.1%}", f"{samples['frechet_distance']:.2f}")
        seconds = " + ".join(f"{value:.0f}" for value in scores["seconds"].values())
        published = scores["published_protocol"]
        lines.append(f"| {row.label} | {scores['test_mse']:.5f} | {scores['psnr']:.2f} | {scores['ssim']:.4f} | "
                     f"{published['psnr']:.2f} / {published['ssim']:.4f} | {codes} | {perplexity} | {rate} | "
                     f"{recognisable} | {distance} | {seconds} |")
    real = results[0]["samples"]["real"]
    lines.append(f"\nSamples: {results[0]['samples']['count']} unconditional ones per row; the Frechet distance of "
                 f"as many real test digits, the floor, is {real['frechet_distance']:.2f}, and "
                 f"{real['recognisable']:.1%} of them are recognisable.")
    unrated = [row.label for row, scores in zip(rows, results) if scores["rate_bits"] is None]
    if unrated:
        lines.append(f"Not in the plot, having no rate (no prior was trained for their codes): {'; '.join(unrated)}.")
    return lines


def likelihood_table(rows: list[Row], results: list[dict]) -> list[str]:
    """The likelihood study's table: each row's bounds in bits per dimension and where the bits go."""
    lines = ["| run | bits/dim: learned prior (given the class), or IWAE | uniform prior, or negative ELBO | "
             "pixels given the latents | latents: prior NLL, or KL | test MSE | PSNR per 8-bit image | "
             "recognisable | Frechet distance | train s (autoencoder + prior) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row, scores in zip(rows, results):
        bits = scores["bits_per_dim"]
        if "pixels_given_codes" in bits:
            bound = f"{bits['learned_prior']:.3f} ({bits['learned_prior_given_class']:.3f})"
            second, pixels, latents = (f"{bits['uniform_prior']:.3f}", f"{bits['pixels_given_codes']:.3f}",
                                       f"{bits['codes_learned_prior']:.3f}")
        else:
            bound = f"{bits['importance_weighted']:.3f} (k = {bits['iw_samples']})"
            second, pixels, latents = (f"{bits['negative_elbo']:.3f}", f"{bits['reconstruction']:.3f}",
                                       f"{bits['kl']:.3f}")
        samples = scores["samples"]["prior_unconditional"]
        seconds = " + ".join(f"{value:.0f}" for value in scores["seconds"].values())
        lines.append(f"| {row.label} | {bound} | {second} | {pixels} | {latents} | {scores['test_mse']:.5f} | "
                     f"{scores['published_protocol']['psnr']:.2f} | {samples['recognisable']:.1%} | "
                     f"{samples['frechet_distance']:.2f} | {seconds} |")
    real = results[0]["samples"]["real"]
    lines.append(f"\nbits/dim: upper bounds on -log2 p(x) / 784 of the 10,000 8-bit test digits (evaluate.py). "
                 f"Samples: {results[0]['samples']['count']} unconditional ones per row; the Frechet distance of as "
                 f"many real test digits, the floor, is {real['frechet_distance']:.2f}.")
    return lines


def likelihood_bound(scores: dict) -> float:
    """A row's tightest bound in bits/dim: the learned prior's (class not given), or the importance-weighted one."""
    bits = scores["bits_per_dim"]
    return bits["learned_prior"] if "learned_prior" in bits else bits["importance_weighted"]


def plot(rows: list[Row], results: list[dict], title: str, path: Path, likelihood: bool = False) -> None:
    """Test MSE (or, for the likelihood study, the bits/dim bound) against the rate, one marker set per bottleneck
    (a line through a sweep of it), each point named."""
    figure, axes = plt.subplots(figsize=(9, 4.5))
    for bottleneck, (marker, offset, alignment) in marker_styles(rows).items():
        points = [(scores["rate_bits"], likelihood_bound(scores) if likelihood else scores["test_mse"], row.label)
                  for row, scores in zip(rows, results)
                  if row.bottleneck == bottleneck and scores["rate_bits"] is not None]
        if not points:
            continue
        points.sort()
        axes.plot([x for x, _, _ in points], [y for _, y, _ in points], marker=marker, label=bottleneck)
        for x, y, label in points:
            axes.annotate(label.split(" (")[0], (x, y), textcoords="offset points", xytext=offset, ha=alignment,
                          fontsize=7)
    axes.set(xlabel="rate (bits per image): the prior's NLL of the codes, or the KL",
             ylabel="bits/dim (learned prior, or IWAE)" if likelihood else "test MSE ([0, 1] pixels)",
             yscale="linear" if likelihood else "log", title=title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the axes, clear of the names
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=120)
    plt.close(figure)


def hold_study_folder(folder: Path):
    """Hold folder (models/study) for the block: two studies at once would train the same runs (the studies share
    them) and write the same scores.json."""
    return hold_folder(folder, lambda holder: f"{folder} is in use by another study (process {holder}): wait until "
                                              "it ends, then run this one")


# What the study gives every row's vqvae.py itself, by dest, and why --train-flags may not: each run's folder name,
# table and plot say these values, so a --train-flags that changed one would train a run they misname.
STUDY_SETS = {
    "output_folder": "the study names each row's folder itself, models/study/NAME",
    "overwrite": "the study starts each row anew, or resumes it, itself",
    "resume": "the study starts each row anew, or resumes it, itself",
    "prior_only": "the study trains each row's autoencoder, then its prior",
    "time_limit": "the study trains each row for its --epochs and --prior-epochs in full, as its folder's name says",
    "num_epochs": "the study sets it from its own --epochs, which each row's folder names",
    "prior_epochs": "the study sets it from its own --prior-epochs, which each row's folder names",
    "seed": "the study sets it from its own --seed, which each row's folder names",
    "device": "the study sets it from its own --device",
    "data_folder": "the study sets it from its own --data-folder",
    "dataset": "the study sets it from its own --dataset",
}


def vqvae_arguments(words: list[str]):
    """vqvae.py's flags `words` read by its own parser (abbreviations and --flag=value as vqvae.py reads them), as
    Arguments that know the flags typed; a flag vqvae.py would refuse, or --help, is a UserError naming
    --train-flags."""
    parser = training_flags.build_parser()

    def refuse(message: str):
        raise UserError(f"--train-flags: vqvae.py would refuse them: {message}")

    def help_asked(*args, **kwargs):
        raise UserError("--train-flags: --help is not a flag to train with: run `python vqvae.py --help` to see "
                        "vqvae.py's flags")

    parser.error, parser.print_help, parser.exit = refuse, help_asked, help_asked
    return parser.parse_args(words)


def row_command(row: Row, args, folder: str | None = None) -> list[str]:
    """vqvae.py's flags for a row trained from its start: the study's own, then --train-flags, then the row's."""
    return ["--output-folder", folder or run_folder(row, args), "--overwrite", "--device", args.device,
            "--num-epochs", str(args.epochs), "--prior-epochs", str(args.prior_epochs), "--seed", str(args.seed),
            "--data-folder", args.data_folder, "--dataset", args.dataset, *args.train_flags, *row.flags]


def check_train_flags(args) -> None:
    """Refuse, before any row trains, --train-flags that name a flag the study sets itself (STUDY_SETS, and the
    flags of the rows of the studies run, which each row's label names), or with which vqvae.py would refuse a row's
    command: one line naming the flag, or the row."""
    if not args.train_flags:  # the rows' own flags alone: vqvae.py takes each
        return
    names = [args.study] if args.study != "all" else list(STUDIES)
    rows = list(dict.fromkeys(row for name in names for row in study_rows(name, args)))  # a shared row once
    typed = vqvae_arguments(args.train_flags).typed
    setting = {}  # dest: the first row that sets it
    for row in rows:
        for dest in vqvae_arguments(list(row.flags)).typed:
            setting.setdefault(dest, row)
    flag_names = training_flags.build_parser().flag_names()
    for dest in sorted(typed):
        why = STUDY_SETS.get(dest)
        if why is None and dest in setting:
            why = f"the rows of --study {args.study} set it themselves, as their labels say ({setting[dest].label})"
        if why is not None:
            raise UserError(f"--train-flags {flag_names[dest]}: {why}: drop it")
    for row in rows:
        try:
            training_flags.check_request(vqvae_arguments(row_command(row, args)))
        except UserError as error:
            raise UserError(f"--train-flags: vqvae.py would refuse the row {row.label!r} with them: {error}") from None


def main(args) -> None:
    resolve_device(args.device)  # here, not after vqvae.py has failed on it in a subprocess
    if args.bottlenecks and args.study not in ("bottleneck", "all"):
        raise UserError(f"--bottlenecks makes the rows of --study bottleneck, not of --study {args.study}: drop it, "
                        "or give --study bottleneck")
    check_train_flags(args)
    check_out_dir(args.out_dir)
    started = time.perf_counter()
    with hold_study_folder(ROOT / "models" / "study"):
        for name in STUDIES if args.study == "all" else [args.study]:
            rows = study_rows(name, args)
            results = [train_and_score(row, args) for row in rows]
            lines = (likelihood_table if name == "likelihood" else table)(rows, results)
            path = args.out_dir / f"study_{name}.md"
            try:
                with atomic_path(path) as temporary:
                    temporary.write_text("\n".join(lines) + "\n")
                path = args.out_dir / f"study_{name}.png"
                plot(rows, results, f"study {name}: {args.epochs} epochs, prior {args.prior_epochs}, seed {args.seed}",
                     path, likelihood=name == "likelihood")
            except OSError as error:
                raise write_failure(path, error, "run the study again; its scores are kept") from None
            print(f"## study {name}\n\n" + "\n".join(lines) + "\n", flush=True)
    print(f"study.py: done in {time.perf_counter() - started:.0f} s; tables and plots in {args.out_dir}",
          file=sys.stderr)


def sample_count(text: str) -> int:
    """An argparse type: a number of samples the Frechet distance and evaluate.py can take."""
    try:
        return integer(FRECHET_MIN_SAMPLES, MAX_SAMPLES)(text)
    except argparse.ArgumentTypeError as error:
        raise argparse.ArgumentTypeError(f"{error}: the Frechet distance needs at least {FRECHET_MIN_SAMPLES}, and "
                                         f"the test set has {MAX_SAMPLES:,} digits to compare them with") from None


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description="Train and score the runs of a study of K, D, the bottleneck or the quantizer.")
    parser.add_argument("--study", choices=[*STUDIES, "all"], required=True, help="which study to run (required)")
    parser.add_argument("--epochs", type=integer(1, MAX_EPOCHS), default=3,
                        help="autoencoder epochs of each run (default: 3)")
    parser.add_argument("--prior-epochs", type=integer(0, MAX_EPOCHS), default=2,
                        help="prior epochs of each discrete run; 0: no prior, so no rate or samples (default: 2)")
    parser.add_argument("--seed", type=integer(0, MAX_SEED), default=0, help="seed of every run (default: 0)")
    parser.add_argument("--samples", type=sample_count, default=1000,
                        help=f"samples scored per run, {FRECHET_MIN_SAMPLES} to {MAX_SAMPLES:,} (default: 1000)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="device to train on (default: cpu)")
    parser.add_argument("--bottlenecks", type=bottleneck_names, default=None, metavar="NAMES",
                        help="comma-separated registered bottlenecks, such as vq,fsq,mine: the rows of --study "
                             "bottleneck, each at its defaults (default: the study's own rows)")
    parser.add_argument("--data-folder", default="data", help="vqvae.py's --data-folder for every row (default: data)")
    parser.add_argument("--dataset", choices=DATASETS, default="mnist",
                        help="vqvae.py's --dataset for every row (default: mnist)")
    parser.add_argument("--train-flags", type=shlex.split, default=[], metavar="FLAGS",
                        help="more vqvae.py flags for every row, quoted as one argument, such as \"--batch-size "
                             "128\"; a row's own flags come after them (default: none)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "models" / "study",
                        help="where the tables and plots go (default: models/study)")
    return parser


if __name__ == "__main__":
    run_cli(main, build_parser().parse_args())
