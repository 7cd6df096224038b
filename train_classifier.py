"""Train the small MNIST classifier that evaluate.py uses to score generated digits.

Usage:
    python train_classifier.py                       # writes pretrained/mnist_classifier.pt (committed)
    python train_classifier.py --num-epochs 1 --output /tmp/classifier.pt

It trains on all 60,000 MNIST training digits, with small random rotations, shifts and scalings so that it
also reads slightly imperfect digits, and reports its accuracy on the 10,000 test digits, which is stored in
the file beside the weights. The classifier is the project's own judge, not part of the VQ-VAE.

A judge that calls anything a digit is no judge: without help, a CNN gives confident labels to noise. So each
batch also holds random textures (Gaussian noise at a random coarseness, with a random contrast), and the
classifier is trained to give them the uniform distribution over the ten classes (outlier exposure, Hendrycks
et al., 2019), so that it is only confident about digits.
"""
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from pixel_distributions import images_to_inputs
from vqmnist.configuration.cli import ArgumentParser, add_device_flag, integer, number, resolve_device, run_cli
from vqmnist.configuration.limits import MAX_BATCH, MAX_EPOCHS, MAX_LEARNING_RATE, MAX_SEED
from vqmnist.io.data import load_mnist
from vqmnist.io.files import check_writable, save_torch, write_failure
from vqmnist.scores.samples import DigitClassifier, classifier_accuracy

OUTLIERS_PER_DIGIT = 4  # a batch of 128 digits also holds 32 textures
OUTLIER_WEIGHT = 0.5


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description="Train the MNIST classifier that scores generated digits.")
    parser.add_argument("--data-folder", default="data", help="MNIST folder (default: data)")
    parser.add_argument("--output", default="pretrained/mnist_classifier.pt",
                        help="file to write (default: pretrained/mnist_classifier.pt)")
    add_device_flag(parser, "train on")
    parser.add_argument("--num-epochs", type=integer(1, MAX_EPOCHS), default=4, help="epochs to train (default: 4)")
    parser.add_argument("--batch-size", type=integer(1, MAX_BATCH), default=128,
                        help=f"images per batch, at most {MAX_BATCH} (default: 128)")
    parser.add_argument("--lr", type=number(0, MAX_LEARNING_RATE, above_low=True), default=3e-3,
                        help="peak AdamW learning rate of the one-cycle schedule (default: 3e-3)")
    parser.add_argument("--seed", type=integer(0, MAX_SEED), default=0,
                        help="seed of the weights and the batch order (default: 0)")
    return parser


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random rotations (up to 12 degrees), scalings (0.9 to 1.1) and shifts (up to 2 pixels) of a batch."""
    count = len(x)
    uniform = torch.rand(count, 4, generator=generator).mul(2).sub(1).to(x.device)  # each in [-1, 1]
    angle, scale = uniform[:, 0] * math.radians(12), 1 + 0.1 * uniform[:, 1]
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    shift = uniform[:, 2:] * (2 / 14)  # affine_grid measures shifts in half-widths: 14 pixels
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # Padding with -1 (black) rather than zeros (mid grey) keeps the background of shifted digits black.
    return F.grid_sample(x + 1, grid, align_corners=False, padding_mode="zeros") - 1


def textures(count: int, generator: torch.Generator) -> torch.Tensor:
    """count non-digit images (count, 1, 28, 28) in [-1, 1]: Gaussian noise drawn at a random coarseness
    (7x7 to 28x28, upsampled), pushed through tanh with a random contrast, so some are soft and some hard-edged."""
    side = int(torch.randint(7, 29, (), generator=generator))
    noise = torch.randn(count, 1, side, side, generator=generator)
    noise = F.interpolate(noise, size=(28, 28), mode="bilinear", align_corners=False)
    contrast = torch.rand(count, 1, 1, 1, generator=generator) * 4 + 0.5
    offset = torch.rand(count, 1, 1, 1, generator=generator) * 2 - 1.5  # mostly dark, as digits are
    return torch.tanh(noise * contrast + offset)


def main(args) -> None:
    device = resolve_device(args.device)
    output = Path(args.output)
    check_writable(output)  # before training, not after it
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    train_images, train_labels = load_mnist(args.data_folder, train=True)
    test_images, test_labels = load_mnist(args.data_folder, train=False)

    model = DigitClassifier().to(device)
    steps_per_epoch = math.ceil(len(train_images) / args.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr,
                                                   total_steps=args.num_epochs * steps_per_epoch)
    train_images, train_labels = train_images.to(device), train_labels.to(device)
    for epoch in range(1, args.num_epochs + 1):
        model.train()
        order = torch.randperm(len(train_images), generator=generator).to(device)
        progress = tqdm(order.split(args.batch_size), desc=f"epoch {epoch}/{args.num_epochs}", unit="batch")
        for indices in progress:
            x = augment(images_to_inputs(train_images[indices]), generator)
            outliers = textures(len(indices) // OUTLIERS_PER_DIGIT, generator).to(device)
            logits = model(torch.cat([x, outliers]))
            digit_logits, outlier_logits = logits[:len(indices)], logits[len(indices):]
            # Cross-entropy against the uniform distribution: the mean negative log-probability of all ten classes.
            outlier_loss = -torch.log_softmax(outlier_logits, dim=1).mean()
            loss = F.cross_entropy(digit_logits, train_labels[indices]) + OUTLIER_WEIGHT * outlier_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        accuracy = classifier_accuracy(model, test_images, test_labels, device)
        print(f"epoch {epoch}: test accuracy {accuracy:.2%}")

    try:
        save_torch(output, {"model": model.cpu().state_dict(), "test_accuracy": accuracy,
                            "num_epochs": args.num_epochs, "seed": args.seed})
    except (OSError, RuntimeError) as error:  # torch.save's RuntimeError: a write that came up short
        raise write_failure(output, error, "train it again") from None
    print(f"wrote {output} (test accuracy {accuracy:.2%})")


if __name__ == "__main__":
    run_cli(main, build_parser().parse_args())
