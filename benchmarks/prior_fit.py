"""How well a checkpoint's prior fits its grids: its NLL of training grids beside validation and test grids, to tell
a prior that underfits (the two close) from one that overfits (training far below).

Usage (from the repository root; `python -m benchmarks.prior_fit` is the same):
    python benchmarks/prior_fit.py --model pretrained/vqvae_mnist.pt
    python benchmarks/prior_fit.py --model models/vqvae/best.pt --train-grids 55000

Prints, in bits per image (the NLL per code times the 49 L codes of an image), for the first --train-grids grids of
the run's training split, its validation split and the test set: the NLL given the class, with the class summed out
(the rate evaluate.py reports) and under the class-free half (the "no class" token).
"""
import argparse

import torch

from prior import encode_images, marginal_nll_bits, prior_nll_bits
from vqmnist.checkpoints.format import trained_dataset, trained_val_size
from vqmnist.checkpoints.loading import load_model
from vqmnist.io.data import load_mnist, load_splits
from vqmnist.running.autoencoder_task import TrainingSettings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="A prior's NLL of its training, validation and test grids.")
    parser.add_argument("--model", default="pretrained/vqvae_mnist.pt", help="checkpoint with a prior "
                        "(default: pretrained/vqvae_mnist.pt)")
    parser.add_argument("--train-grids", type=int, default=10_000,
                        help="training grids scored, the first of the split (default: 10000)")
    parser.add_argument("--data-folder", default="data", help="MNIST folder (default: data)")
    return parser


def main(args) -> None:
    device = torch.device("cpu")
    loaded = load_model(args.model, device)
    model, prior = loaded.model, loaded.require_prior()
    dataset = trained_dataset(loaded.checkpoint, args.model)
    splits = load_splits(args.data_folder, trained_val_size(loaded.checkpoint, args.model, TrainingSettings.val_size),
                         dataset)
    test_images, test_labels = load_mnist(args.data_folder, train=False, dataset=dataset)
    codes_per_image = prior.sequence_length
    print(f"{args.model}: the prior's NLL in bits per image ({codes_per_image} codes)")
    print("| grids | count | given the class | class summed out | class-free half |")
    print("| --- | --- | --- | --- | --- |")
    for name, images, labels in (("training", splits.train_images[:args.train_grids],
                                  splits.train_labels[:args.train_grids]),
                                 ("validation", splits.val_images, splits.val_labels),
                                 ("test", test_images, test_labels)):
        codes = encode_images(model, images, device)
        given = prior_nll_bits(prior, codes, labels)
        class_free = prior_nll_bits(prior, codes, torch.full_like(labels, prior.no_class))
        marginal = marginal_nll_bits(prior, codes)
        print(f"| {name} | {len(codes):,} | {given * codes_per_image:.1f} | {marginal * codes_per_image:.1f} | "
              f"{class_free * codes_per_image:.1f} |", flush=True)


if __name__ == "__main__":
    main(build_parser().parse_args())
