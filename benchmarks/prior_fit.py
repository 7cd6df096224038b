"""How well a checkpoint's prior fits its grids: its NLL of training grids beside validation and test grids, to tell
a prior that underfits (the two close) from one that overfits (training far below).

Usage (from the repository root):
    python -m benchmarks.prior_fit --model pretrained/vqvae_mnist.pt
    python -m benchmarks.prior_fit --model models/vqvae/best.pt --train-grids 55000

Prints, in bits per image (the NLL per code times the 49 L codes of an image), for the first --train-grids grids of
the run's training split (10,000, or the whole split where it holds fewer; more than it holds is refused), its
validation split and the test set, each with the count scored: the NLL given the class, with the class summed out
(the rate evaluate.py reports) and under the class-free half (the "no class" token). The checkpoint, its prior and
the data are read and checked before any grid is encoded: a bad one is one line, exit status 2.
"""
import torch

from pixel_distributions import IMAGE_PIXELS
from prior import encode_images, marginal_nll_bits, prior_nll_bits
from vqmnist.checkpoints.format import trained_dataset, trained_val_size
from vqmnist.checkpoints.loading import load_model
from vqmnist.configuration.cli import ArgumentParser, integer, run_cli
from vqmnist.configuration.errors import UserError
from vqmnist.io.data import MAX_IDX_BYTES, load_mnist, load_splits
from vqmnist.running.autoencoder_task import TrainingSettings

TRAIN_GRIDS = 10_000
MAX_TRAIN_GRIDS = MAX_IDX_BYTES // IMAGE_PIXELS  # the most images an image file the data loader reads can hold


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description="A prior's NLL of its training, validation and test grids.")
    parser.add_argument("--model", default="pretrained/vqvae_mnist.pt", help="checkpoint with a prior "
                        "(default: pretrained/vqvae_mnist.pt)")
    parser.add_argument("--train-grids", type=integer(1, MAX_TRAIN_GRIDS), default=None,
                        help=f"training grids scored, the first of the split, at most the split's (default: "
                             f"{TRAIN_GRIDS:,}, or the whole split where it holds fewer)")
    parser.add_argument("--data-folder", default="data", help="MNIST folder (default: data)")
    return parser


def main(args) -> None:
    device = torch.device("cpu")
    # Every file, and the count of training grids, checked before any grid is encoded.
    loaded = load_model(args.model, device)
    model = loaded.model
    if not model.discrete:
        raise UserError(f"{args.model} has a continuous bottleneck ({model.config.bottleneck}): it has no code grids "
                        "for a prior to score; give a checkpoint of a discrete one")
    prior = loaded.require_prior()
    dataset = trained_dataset(loaded.checkpoint, args.model)
    splits = load_splits(args.data_folder, trained_val_size(loaded.checkpoint, args.model, TrainingSettings.val_size),
                         dataset)
    test_images, test_labels = load_mnist(args.data_folder, train=False, dataset=dataset)
    available = len(splits.train_images)
    if args.train_grids is not None and args.train_grids > available:
        raise UserError(f"--train-grids {args.train_grids:,} is more than the {available:,} grids of the training "
                        f"split of {args.model}: pass {available:,} or fewer")
    train_grids = min(TRAIN_GRIDS, available) if args.train_grids is None else args.train_grids
    codes_per_image = prior.sequence_length
    print(f"{args.model}: the prior's NLL in bits per image ({codes_per_image} codes)")
    print("| grids | count | given the class | class summed out | class-free half |")
    print("| --- | --- | --- | --- | --- |")
    for name, images, labels in (("training", splits.train_images[:train_grids], splits.train_labels[:train_grids]),
                                 ("validation", splits.val_images, splits.val_labels),
                                 ("test", test_images, test_labels)):
        codes = encode_images(model, images, device)
        given = prior_nll_bits(prior, codes, labels)
        class_free = prior_nll_bits(prior, codes, torch.full_like(labels, prior.no_class))
        marginal = marginal_nll_bits(prior, codes)
        print(f"| {name} | {len(codes):,} | {given * codes_per_image:.1f} | {marginal * codes_per_image:.1f} | "
              f"{class_free * codes_per_image:.1f} |", flush=True)


if __name__ == "__main__":
    run_cli(main, build_parser().parse_args())
