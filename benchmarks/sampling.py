"""Prior sampling of a checkpoint: how long 100 code grids take, and sample scores over temperatures and guidance
weights against the validation split (for choosing the sampling defaults without looking at the test set).

Usage (from the repository root; `python -m benchmarks.sampling` is the same):
    python benchmarks/sampling.py --model pretrained/vqvae_mnist.pt
    python benchmarks/sampling.py --model models/vqvae/best.pt --temperatures 0.9,1.0 --guidance 0.5,0.75,1.0

Timing: generate.py's batch (100 grids, classes 0-9 ten times, default temperature and guidance), sampled
--repeats times after one warm-up; prints the median. Scores: for each setting, 1,000 samples with the digit
asked for (100 of each) and 1,000 unconditional ones, per seed, judged by the committed classifier against the
features of the validation split (the last 5,000 training images); the table gives the mean over the seeds,
and the floor is 1,000 random validation digits' distance to the whole split, averaged the same way.
"""
import argparse
import statistics
import time


import torch

from modules import load_model
from vqmnist.checkpoints import trained_dataset
from vqmnist.data import load_mnist, split_train_validation
from vqmnist.prior import GUIDANCE, SAMPLING_TEMPERATURE
from vqmnist.scores import DEFAULT_CLASSIFIER, classify, load_classifier, score_samples

SAMPLES = 1000


def numbers(text: str) -> list[float]:
    return [float(value) for value in text.split(",")]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Time prior sampling and score samples on the validation split.")
    parser.add_argument("--model", default="pretrained/vqvae_mnist.pt", help="checkpoint with a prior")
    parser.add_argument("--temperatures", type=numbers, default=[0.9, 1.0], help="comma-separated (default: 0.9,1.0)")
    parser.add_argument("--guidance", type=numbers, default=[0.5, 0.75, 1.0],
                        help="comma-separated guidance weights (default: 0.5,0.75,1.0)")
    parser.add_argument("--seeds", type=lambda text: [int(v) for v in text.split(",")], default=[0, 1, 2],
                        help="comma-separated (default: 0,1,2)")
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


def setting_row(model, prior, classifier, reference, temperature: float, guidance: float, seeds) -> str:
    """The table row of one temperature and guidance weight: mean scores over the seeds."""
    asked = torch.arange(SAMPLES) % 10
    rows = {"asked": [], "unconditional": []}
    for seed in seeds:
        generator = torch.Generator().manual_seed(seed)
        for kind, kind_classes in (("asked", asked), ("unconditional", prior.draw_classes(SAMPLES, generator))):
            codes = prior.sample(kind_classes, temperature, guidance, generator)
            rows[kind].append(score_samples(classifier, model.to_pixels(model.decode(codes)), reference,
                                            asked if kind == "asked" else None))

    def mean(kind, key):
        return statistics.mean(row[key] for row in rows[kind])

    return (f"| {temperature} | {guidance} | {mean('asked', 'recognisable'):.1%} / "
            f"{mean('asked', 'matches_class'):.1%} / {mean('asked', 'frechet_distance'):.3f} | "
            f"{mean('unconditional', 'recognisable'):.1%} / {mean('unconditional', 'frechet_distance'):.3f} |")


def main(args) -> None:
    loaded = load_model(args.model, "cpu")
    model, prior = loaded.model, loaded.require_prior()
    print(f"{args.model}: 100 code grids (temperature {SAMPLING_TEMPERATURE}, guidance {GUIDANCE}) in "
          f"{sampling_seconds(prior, args.repeats):.2f} s (median of {args.repeats}), {torch.get_num_threads()} CPU "
          "threads")

    images, _ = load_mnist(args.data_folder, train=True, dataset=trained_dataset(loaded.checkpoint, args.model))
    _, validation = split_train_validation(images, loaded.checkpoint["args"].get("val_size", 5000))
    classifier = load_classifier(DEFAULT_CLASSIFIER, "cpu")
    validation_pixels = validation.unsqueeze(1).float() / 255
    _, reference = classify(classifier, validation_pixels)
    floors = [score_samples(classifier, validation_pixels[torch.randperm(
        len(validation), generator=torch.Generator().manual_seed(seed))[:SAMPLES]], reference)["frechet_distance"]
        for seed in args.seeds]
    print(f"floor: 1,000 random validation digits, Frechet distance {statistics.mean(floors):.3f} (mean of seeds "
          f"{args.seeds})")
    print("| temperature | guidance | digit asked: recognisable / as asked / FD | unconditional: recognisable / FD |")
    print("| --- | --- | --- | --- |")
    for temperature in args.temperatures:
        for guidance in args.guidance:
            print(setting_row(model, prior, classifier, reference, temperature, guidance, args.seeds), flush=True)


if __name__ == "__main__":
    main(build_parser().parse_args())
