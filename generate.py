"""Write a 10x10 grid of images made by a trained VQ-VAE to generatedImages/NAME.png.

Usage:
    python generate.py --model models/vqvae/best.pt --input MNIST --filename recon    # + recon_input.png
    python generate.py --model models/vqvae/best.pt --input random --filename samples # row i: ten samples of digit i
    python generate.py --model models/vqvae/best.pt --input random --digit 7 --temperature 0.8 --seed 1
    python generate.py --model models/vqvae/best.pt --input random --unconditional
    python generate.py --model models/vqvae/best.pt --input noise --filename noise

--input MNIST reconstructs 100 test digits picked by --seed and also writes the originals to NAME_input.png.
--input random samples code grids from the prior stored in the checkpoint (trained by vqvae.py after the
autoencoder) and decodes them: row i holds ten samples of digit i, or with --digit D all 100 are Ds, or with
--unconditional the prior draws each sample's class itself (from the training set's class frequencies) and then
its codes. --temperature and --guidance (classifier-free guidance) trade variety for clean, typical digits.
--input noise decodes what the autoencoder makes of standard-normal noise images, as the reference repository's
"random" does; it is kept for comparison.
The architecture comes from the checkpoint; --hidden-size and --k, if given, are only checked against it.
"""
import time
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

from checkpoints import load_model, load_prior
from cli import (ArgumentParser, UserError, add_device_flag, nonnegative_float, plain_name, positive_float,
                 positive_int, resolve_device, run_cli)
from data import load_mnist
from files import atomic_path
from modules import images_to_inputs
from prior import GUIDANCE, SAMPLING_TEMPERATURE

GRID_SIDE = 10
OUTPUT_FOLDER = Path("generatedImages")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description="Write a 10x10 grid of VQ-VAE reconstructions or random images.")
    parser.add_argument("--model", default="models/vqvae/best.pt",
                        help="checkpoint written by vqvae.py (default: models/vqvae/best.pt)")
    parser.add_argument("--input", choices=["MNIST", "random", "noise"], default="MNIST",
                        help="MNIST: reconstruct test digits; random: samples of the learned prior; noise: decode "
                             "noise images as the reference does (default: MNIST)")
    add_device_flag(parser)
    parser.add_argument("--filename", type=plain_name, default=None,
                        help="name of the PNG written to generatedImages/ (default: the --input value)")
    parser.add_argument("--seed", type=int, default=0,
                        help="picks the test digits, the samples or the noise (default: 0)")
    parser.add_argument("--temperature", type=positive_float, default=SAMPLING_TEMPERATURE,
                        help="--input random: divides the prior's logits; lower gives cleaner, less varied digits "
                             f"(default: {SAMPLING_TEMPERATURE})")
    parser.add_argument("--guidance", type=nonnegative_float, default=GUIDANCE,
                        help="--input random: classifier-free guidance weight; higher gives digits more typical of "
                             f"their class, 0 samples the prior as trained (default: {GUIDANCE})")
    parser.add_argument("--digit", type=int, choices=range(10), default=None, metavar="D",
                        help="--input random: all 100 samples are of digit D (default: row i holds digit i)")
    parser.add_argument("--unconditional", action="store_true",
                        help="--input random: no class is asked for: the prior draws each sample's class itself, "
                             "so the grid shows whatever digits it produces")
    parser.add_argument("--data-folder", default="data",
                        help="MNIST folder, for --input MNIST (default: data)")
    parser.add_argument("--hidden-size", type=positive_int, default=None,
                        help="optional: fail unless the checkpoint has this hidden size (default: not checked)")
    parser.add_argument("--k", type=positive_int, default=None,
                        help="optional: fail unless the checkpoint has this many codes (default: not checked)")
    return parser


def check_architecture(config, args) -> None:
    for flag, expected, actual in (("--hidden-size", args.hidden_size, config.hidden_size),
                                   ("--k", args.k, config.num_embeddings)):
        if expected is not None and expected != actual:
            raise UserError(f"{args.model} was trained with {flag} {actual}, not {expected}: the architecture "
                            f"comes from the checkpoint, so drop {flag} or pick another --model")


def save_grid(images: torch.Tensor, path: Path) -> None:
    """Save (100, 1, 28, 28) pixels in [0, 1] as a 10x10 PNG, atomically."""
    try:
        with atomic_path(path) as temporary:
            save_image(make_grid(images, nrow=GRID_SIDE), temporary, format="png")
    except OSError as error:
        raise UserError(f"cannot write {path}: {error.strerror or error}") from None


def output_path(filename: str) -> Path:
    name = Path(filename)
    path = OUTPUT_FOLDER / (name if name.suffix.lower() == ".png" else name.with_name(f"{name.name}.png"))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create {path.parent}: {error.strerror}") from None
    return path


@torch.no_grad()
def main(args) -> None:
    device = resolve_device(args.device)
    model, checkpoint = load_model(args.model, device)
    check_architecture(model.config, args)
    path = output_path(args.filename or args.input)
    generator = torch.Generator().manual_seed(args.seed)
    count = GRID_SIDE * GRID_SIDE

    if args.input != "random" and (args.digit is not None or args.unconditional):
        raise UserError("--digit and --unconditional choose prior samples: use them with --input random")
    if args.digit is not None and args.unconditional:
        raise UserError("--digit D asks for one class and --unconditional for none: pass only one")

    if args.input == "MNIST":
        test_images, _ = load_mnist(args.data_folder, train=False)
        chosen = test_images[torch.randperm(len(test_images), generator=generator)[:count]].to(device)
        x_recon = model(images_to_inputs(chosen)).x_recon
        input_path = path.with_name(f"{path.stem}_input.png")
        save_grid(chosen.unsqueeze(1).float() / 255, input_path)
        save_grid(model.to_pixels(x_recon), path)
        print(f"wrote {path} (reconstructions) and {input_path} (the test digits they come from)")
    elif args.input == "random":
        prior = load_prior(checkpoint, args.model, device)
        if args.unconditional:
            classes, what = prior.draw_classes(count, generator), "unconditional prior samples"
        elif args.digit is not None:
            classes, what = torch.full((count,), args.digit), f"prior samples of digit {args.digit}"
        else:
            classes, what = torch.arange(GRID_SIDE).repeat_interleave(GRID_SIDE), "prior samples, row i = digit i"
        started = time.perf_counter()
        codes = prior.sample(classes.to(device), args.temperature, args.guidance, generator)  # (100, 7, 7)
        seconds = time.perf_counter() - started
        save_grid(model.to_pixels(model.decode(codes)), path)
        print(f"wrote {path} ({what}, temperature {args.temperature}, guidance {args.guidance}; the 100 code grids "
              f"took {seconds:.2f} s to sample)")
    else:
        noise = torch.randn(count, model.config.in_channels, 28, 28, generator=generator).to(device)
        save_grid(model.to_pixels(model(noise).x_recon), path)
        print(f"wrote {path} (noise images passed through the autoencoder)")


if __name__ == "__main__":
    run_cli(main, build_parser().parse_args())
