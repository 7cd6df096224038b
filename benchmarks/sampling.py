"""Prior sampling of a checkpoint: how long 100 code grids take, and sample scores over temperatures, guidance
weights and truncations (top-k, nucleus) against the validation split (for choosing the sampling defaults without
looking at the test set).

Usage (from the repository root):
    python -m benchmarks.sampling --model pretrained/vqvae_mnist.pt
    python -m benchmarks.sampling --model models/vqvae/best.pt --temperatures 0.9,1.0 --guidance 0.5,0.75,1.0
    python -m benchmarks.sampling --temperatures 1.0 --guidance 0.75 --top-p 0.9,0.95,1.0 --top-k 0,64
    python -m benchmarks.sampling --temperatures 1.0 --guidance 0.75 --exact-mix

Timing: generate.py's batch (100 grids, classes 0-9 ten times, default temperature and guidance), sampled
--repeats times after one warm-up; prints the median. Scores: for each setting, --samples samples (1,000 by default)
with the digit asked for (an equal share of each, 100 of 1,000) and as many unconditional ones, per seed, judged by
the committed classifier against the features of the run's whole validation split (the last --val-size training
images, 5,000 by default); the table gives the mean over the seeds, and the floor is as many random validation
digits' distance to the whole split, averaged the same way. A split of fewer digits than --samples is refused, so
the floor always compares as many real digits as samples (at the split's size, the floor is the whole split's
distance to itself, 0). With --exact-mix, a third kind: unconditional samples whose classes are p(class) x --samples
rounded, in a random order, not drawn one by one, so that what the luck of the drawn mix adds to the Frechet
distance shows.

Every flag is held to its range (a temperature, guidance weight or truncation as generate.py's, each value once),
and the checkpoint, its prior, the classifier and the data are read and checked before anything is timed or
sampled: a bad one is one line, exit status 2.
"""
import statistics
import time

import torch

from benchmarks.flags import listed
from options import MAX_CODES
from prior import GUIDANCE, SAMPLING_TEMPERATURE, Truncation
from vqmnist.checkpoints.format import trained_dataset, trained_val_size
from vqmnist.checkpoints.loading import load_model
from vqmnist.configuration.cli import ArgumentParser, integer, number, run_cli
from vqmnist.configuration.errors import UserError
from vqmnist.configuration.limits import MAX_GUIDANCE, MAX_SAMPLES, MAX_SEED, MAX_TEMPERATURE, MIN_TEMPERATURE
from vqmnist.io.data import load_mnist, split_train_validation
from vqmnist.running.autoencoder_task import TrainingSettings
from vqmnist.scores.samples import (DEFAULT_CLASSIFIER, FRECHET_MIN_SAMPLES, classify, load_classifier,
                                    score_samples)

SAMPLES = 1000
MAX_REPEATS = 1000  # timings of 100 grids: a thousand give a steady median


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description="Time prior sampling and score samples on the validation split.")
    parser.add_argument("--model", default="pretrained/vqvae_mnist.pt",
                        help="checkpoint with a prior (default: pretrained/vqvae_mnist.pt)")
    parser.add_argument("--temperatures", type=listed(number(MIN_TEMPERATURE, MAX_TEMPERATURE)), default=[0.9, 1.0],
                        help=f"comma-separated, each {MIN_TEMPERATURE:g} to {MAX_TEMPERATURE:g} (default: 0.9,1.0)")
    parser.add_argument("--guidance", type=listed(number(0, MAX_GUIDANCE)), default=[0.5, 0.75, 1.0],
                        help=f"comma-separated guidance weights, each 0 to {MAX_GUIDANCE:g} (default: 0.5,0.75,1.0)")
    parser.add_argument("--top-k", type=listed(integer(0, MAX_CODES)), default=[0],
                        help=f"comma-separated top-k truncations, each 0 (none) to {MAX_CODES:,} (default: 0)")
    parser.add_argument("--top-p", type=listed(number(0, 1, above_low=True)), default=[1.0],
                        help="comma-separated nucleus truncations, each above 0 and at most 1 (none) (default: 1.0)")
    parser.add_argument("--seeds", type=listed(integer(0, MAX_SEED)), default=[0, 1, 2],
                        help=f"comma-separated, each 0 to {MAX_SEED:,} (default: 0,1,2)")
    parser.add_argument("--samples", type=integer(FRECHET_MIN_SAMPLES, MAX_SAMPLES), default=SAMPLES,
                        help=f"samples of each kind per setting and seed, and real validation digits of the floor, "
                             f"{FRECHET_MIN_SAMPLES} (the fewest a Frechet distance is computed from) to "
                             f"{MAX_SAMPLES:,}, at most the validation split's digits (default: {SAMPLES})")
    parser.add_argument("--exact-mix", action="store_true",
                        help="also score unconditional samples whose classes come in p(class)'s exact proportions")
    parser.add_argument("--repeats", type=integer(1, MAX_REPEATS), default=5,
                        help=f"timed batches of 100, 1 to {MAX_REPEATS:,} (default: 5)")
    parser.add_argument("--data-folder", default="data", help="MNIST folder (default: data)")
    parser.add_argument("--classifier", default=str(DEFAULT_CLASSIFIER),
                        help="classifier written by train_classifier.py (default: pretrained/mnist_classifier.pt)")
    return parser


def sampling_seconds(prior, repeats: int) -> float:
    """Median seconds of generate.py's batch of 100 grids over `repeats` timings, after one warm-up."""
    classes = torch.arange(10).repeat_interleave(10)
    prior.sample(classes, SAMPLING_TEMPERATURE, GUIDANCE)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        prior.sample(classes, SAMPLING_TEMPERATURE, GUIDANCE)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def exact_mix(frequencies: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """count classes (count,), class c round(frequencies[c] * count) times (the largest remainders rounded up, so
    that they add up to count), in a random order."""
    shares = frequencies.double().cpu() * count
    counts = shares.floor().long()
    counts[(shares - counts).argsort(descending=True)[:count - int(counts.sum())]] += 1
    classes = torch.repeat_interleave(torch.arange(len(frequencies)), counts)
    return classes[torch.randperm(count, generator=generator)]


def setting_row(model, prior, classifier, reference, temperature: float, guidance: float, truncation: Truncation,
                seeds, with_exact_mix: bool, count: int) -> str:
    """The table row of one temperature, guidance weight and truncation: mean and worst scores over the seeds, of
    `count` samples of each kind a seed."""
    asked = torch.arange(count) % 10
    rows = {"asked": [], "unconditional": [], "exact mix": []}
    for seed in seeds:
        generator = torch.Generator().manual_seed(seed)
        kinds = [("asked", asked), ("unconditional", prior.draw_classes(count, generator))]
        if with_exact_mix:
            kinds.append(("exact mix", exact_mix(prior.class_frequencies, count, generator)))
        for kind, kind_classes in kinds:
            codes = prior.sample(kind_classes, temperature, guidance, generator, truncation=truncation)
            rows[kind].append(score_samples(classifier, model.to_pixels(model.decode(codes)), reference,
                                            asked if kind == "asked" else None))

    def mean(kind, key):
        return statistics.mean(row[key] for row in rows[kind])

    def worst_distance(kind):
        return max(row["frechet_distance"] for row in rows[kind])

    exact = (f" {mean('exact mix', 'frechet_distance'):.3f} ({worst_distance('exact mix'):.3f}) |" if with_exact_mix
             else "")
    return (f"| {temperature} | {guidance} | {truncation.top_k} | {truncation.top_p} | "
            f"{mean('asked', 'recognisable'):.1%} / {mean('asked', 'matches_class'):.1%} / "
            f"{mean('asked', 'frechet_distance'):.3f} ({worst_distance('asked'):.3f}) | "
            f"{mean('unconditional', 'recognisable'):.1%} / {mean('unconditional', 'frechet_distance'):.3f} "
            f"({worst_distance('unconditional'):.3f}) |{exact}")


def main(args) -> None:
    # Every file and the validation split are read, and checked, before any timing or sampling.
    loaded = load_model(args.model, "cpu")
    model = loaded.model
    if not model.discrete:
        raise UserError(f"{args.model} has a continuous bottleneck ({model.config.bottleneck}): it has no codes for a "
                        "prior to sample; give a checkpoint of a discrete one")
    prior = loaded.require_prior()
    classifier = load_classifier(args.classifier, "cpu")
    images, _ = load_mnist(args.data_folder, train=True, dataset=trained_dataset(loaded.checkpoint, args.model))
    _, validation = split_train_validation(images, trained_val_size(loaded.checkpoint, args.model,
                                                                    TrainingSettings.val_size))
    if len(validation) < args.samples:
        raise UserError(f"the validation split of {args.model} holds {len(validation):,} digits, fewer than the "
                        f"--samples {args.samples:,} real ones the floor compares with as many samples: pass --samples "
                        f"{len(validation)} or fewer" if len(validation) >= FRECHET_MIN_SAMPLES else
                        f"the validation split of {args.model} holds {len(validation):,} digits, fewer than the "
                        f"{FRECHET_MIN_SAMPLES} a Frechet distance is computed from: score a run with a larger "
                        "--val-size")
    print(f"{args.model}: 100 code grids (temperature {SAMPLING_TEMPERATURE}, guidance {GUIDANCE}) in "
          f"{sampling_seconds(prior, args.repeats):.2f} s (median of {args.repeats}), {torch.get_num_threads()} CPU "
          "threads")
    validation_pixels = validation.unsqueeze(1).float() / 255
    _, reference = classify(classifier, validation_pixels)
    floors = [score_samples(classifier, validation_pixels[torch.randperm(
        len(validation), generator=torch.Generator().manual_seed(seed))[:args.samples]], reference)["frechet_distance"]
        for seed in args.seeds]
    whole = " (the whole split)" if args.samples == len(validation) else ""
    print(f"floor: {args.samples:,} random validation digits of {len(validation):,}{whole}, Frechet distance "
          f"{statistics.mean(floors):.3f} (mean of seeds {args.seeds}); each setting: {args.samples:,} samples of "
          "each kind a seed, against the whole split's features")
    exact = " unconditional, classes in exact proportions: FD (worst) |" if args.exact_mix else ""
    print("| temperature | guidance | top-k | top-p | digit asked: recognisable / as asked / FD (worst) | "
          f"unconditional: recognisable / FD (worst) |{exact}")
    print("| --- | --- | --- | --- | --- | --- |" + (" --- |" if args.exact_mix else ""))
    for temperature in args.temperatures:
        for guidance in args.guidance:
            for top_k in args.top_k:
                for top_p in args.top_p:
                    print(setting_row(model, prior, classifier, reference, temperature, guidance,
                                      Truncation(top_k, top_p), args.seeds, args.exact_mix, args.samples), flush=True)


if __name__ == "__main__":
    run_cli(main, build_parser().parse_args())
