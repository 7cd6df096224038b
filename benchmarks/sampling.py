"""Prior sampling of a checkpoint: how long 100 code grids take, and sample scores over temperatures, guidance
weights and truncations (top-k, nucleus) against the validation split (for choosing the sampling defaults without
looking at the test set).

Usage (from the repository root; `python -m benchmarks.sampling` is the same):
    python benchmarks/sampling.py --model pretrained/vqvae_mnist.pt
    python benchmarks/sampling.py --model models/vqvae/best.pt --temperatures 0.9,1.0 --guidance 0.5,0.75,1.0
    python benchmarks/sampling.py --temperatures 1.0 --guidance 0.75 --top-p 0.9,0.95,1.0 --top-k 0,64
    python benchmarks/sampling.py --temperatures 1.0 --guidance 0.75 --exact-mix

Timing: generate.py's batch (100 grids, classes 0-9 ten times, default temperature and guidance), sampled
--repeats times after one warm-up; prints the median. Scores: for each setting, 1,000 samples with the digit
asked for (100 of each) and 1,000 unconditional ones, per seed, judged by the committed classifier against the
features of the validation split (the last 5,000 training images); the table gives the mean over the seeds,
and the floor is 1,000 random validation digits' distance to the whole split, averaged the same way. With
--exact-mix, a third kind: unconditional samples whose classes are p(class) x 1,000 rounded, in a random order, not
drawn one by one, so that what the luck of the drawn mix adds to the Frechet distance shows.
"""
import argparse
import statistics
import time


import torch

from prior import GUIDANCE, SAMPLING_TEMPERATURE, Truncation
from vqmnist.checkpoints.format import trained_dataset, trained_val_size
from vqmnist.checkpoints.loading import load_model
from vqmnist.io.data import load_mnist, split_train_validation
from vqmnist.running.autoencoder_task import TrainingSettings
from vqmnist.scores.samples import DEFAULT_CLASSIFIER, classify, load_classifier, score_samples

SAMPLES = 1000


def numbers(text: str) -> list[float]:
    return [float(value) for value in text.split(",")]


def integers(text: str) -> list[int]:
    return [int(value) for value in text.split(",")]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Time prior sampling and score samples on the validation split.")
    parser.add_argument("--model", default="pretrained/vqvae_mnist.pt", help="checkpoint with a prior")
    parser.add_argument("--temperatures", type=numbers, default=[0.9, 1.0], help="comma-separated (default: 0.9,1.0)")
    parser.add_argument("--guidance", type=numbers, default=[0.5, 0.75, 1.0],
                        help="comma-separated guidance weights (default: 0.5,0.75,1.0)")
    parser.add_argument("--top-k", type=integers, default=[0],
                        help="comma-separated top-k truncations, 0 for none (default: 0)")
    parser.add_argument("--top-p", type=numbers, default=[1.0],
                        help="comma-separated nucleus truncations, 1 for none (default: 1.0)")
    parser.add_argument("--seeds", type=integers, default=[0, 1, 2],
                        help="comma-separated (default: 0,1,2)")
    parser.add_argument("--exact-mix", action="store_true",
                        help="also score unconditional samples whose classes come in p(class)'s exact proportions")
    parser.add_argument("--repeats", type=int, default=5, help="timed batches of 100 (default: 5)")
    parser.add_argument("--data-folder", default="data", help="MNIST folder (default: data)")
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
                seeds, with_exact_mix: bool) -> str:
    """The table row of one temperature, guidance weight and truncation: mean and worst scores over the seeds."""
    asked = torch.arange(SAMPLES) % 10
    rows = {"asked": [], "unconditional": [], "exact mix": []}
    for seed in seeds:
        generator = torch.Generator().manual_seed(seed)
        kinds = [("asked", asked), ("unconditional", prior.draw_classes(SAMPLES, generator))]
        if with_exact_mix:
            kinds.append(("exact mix", exact_mix(prior.class_frequencies, SAMPLES, generator)))
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
    loaded = load_model(args.model, "cpu")
    model, prior = loaded.model, loaded.require_prior()
    print(f"{args.model}: 100 code grids (temperature {SAMPLING_TEMPERATURE}, guidance {GUIDANCE}) in "
          f"{sampling_seconds(prior, args.repeats):.2f} s (median of {args.repeats}), {torch.get_num_threads()} CPU "
          "threads")

    images, _ = load_mnist(args.data_folder, train=True, dataset=trained_dataset(loaded.checkpoint, args.model))
    _, validation = split_train_validation(images, trained_val_size(loaded.checkpoint, args.model,
                                                                         TrainingSettings.val_size))
    classifier = load_classifier(DEFAULT_CLASSIFIER, "cpu")
    validation_pixels = validation.unsqueeze(1).float() / 255
    _, reference = classify(classifier, validation_pixels)
    floors = [score_samples(classifier, validation_pixels[torch.randperm(
        len(validation), generator=torch.Generator().manual_seed(seed))[:SAMPLES]], reference)["frechet_distance"]
        for seed in args.seeds]
    print(f"floor: 1,000 random validation digits, Frechet distance {statistics.mean(floors):.3f} (mean of seeds "
          f"{args.seeds})")
    exact = " unconditional, classes in exact proportions: FD (worst) |" if args.exact_mix else ""
    print("| temperature | guidance | top-k | top-p | digit asked: recognisable / as asked / FD (worst) | "
          f"unconditional: recognisable / FD (worst) |{exact}")
    print("| --- | --- | --- | --- | --- | --- |" + (" --- |" if args.exact_mix else ""))
    for temperature in args.temperatures:
        for guidance in args.guidance:
            for top_k in args.top_k:
                for top_p in args.top_p:
                    print(setting_row(model, prior, classifier, reference, temperature, guidance,
                                      Truncation(top_k, top_p), args.seeds, args.exact_mix), flush=True)


if __name__ == "__main__":
    main(build_parser().parse_args())
