"""Write a 10x10 grid of images made by a trained VQ-VAE to generatedImages/NAME.png.

Usage:
    python generate.py --model models/vqvae/best.pt --input MNIST --filename recon    # + recon_input.png
    python generate.py --model models/vqvae/best.pt --input random --filename samples # row i: ten samples of digit i
    python generate.py --model models/vqvae/best.pt --input random --digit 7 --temperature 0.8 --seed 1
    python generate.py --model models/vqvae/best.pt --input random --unconditional
    python generate.py --model models/vqvae/best.pt --input noise --filename noise
    python generate.py --model models/vqvae/best.pt --input random --save-codes codes.npy   # the 100 sampled grids
    python generate.py --model models/vqvae/best.pt --input codes --codes codes.npy --filename decoded

--input MNIST reconstructs 100 test digits picked by --seed and also writes the originals to NAME_input.png.
--input random samples code grids from the prior stored in the checkpoint (trained by vqvae.py after the
autoencoder) and decodes them: row i holds ten samples of digit i, or with --digit D all 100 are Ds, or with
--unconditional the prior draws each sample's class itself (from the training set's class frequencies) and then
its codes. --temperature and --guidance (classifier-free guidance) trade variety for clean, typical digits.
--input noise decodes what the autoencoder makes of standard-normal noise images, as the reference repository's
"random" does; it is kept for comparison.
--save-codes FILE (.pt or .npy) also writes the (100, 7, 7) code grids behind the picture: the test digits' codes,
the sampled ones, those of the noise. --input codes --codes FILE decodes a file of grids (N, 7, 7), the first 100
of them, so codes edited by hand or by another model can be seen.
A continuous bottleneck, such as the Gaussian VAE (vqvae.py --bottleneck gaussian), has no codes: its --input random
decodes latents from its own prior (the Gaussian's z ~ N(0, I)), times
--temperature.
The architecture comes from the checkpoint; --hidden-size and --k, if given, are only checked against it.
"""
import pickle
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torchvision.utils import make_grid, save_image

from modules import LATENT_SIDE, load_model
from vqmnist.checkpoints import load_prior
from vqmnist.cli import (ArgumentParser, add_device_flag, nonnegative_float, plain_name, positive_float, positive_int,
                         resolve_device, run_cli)
from vqmnist.data import images_to_inputs, load_mnist
from vqmnist.errors import UserError
from vqmnist.files import atomic_path, save_torch, write_failure
from vqmnist.prior import GUIDANCE, SAMPLING_TEMPERATURE, default_temperature

GRID_SIDE = 10
CODE_FILE_SUFFIXES = (".pt", ".npy")
OUTPUT_FOLDER = Path("generatedImages")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description="Write a 10x10 grid of VQ-VAE reconstructions or random images.")
    parser.add_argument("--model", default="models/vqvae/best.pt",
                        help="checkpoint written by vqvae.py (default: models/vqvae/best.pt)")
    parser.add_argument("--input", choices=["MNIST", "random", "noise", "codes"], default="MNIST",
                        help="MNIST: reconstruct test digits; random: samples of the learned prior; noise: decode "
                             "noise images as the reference does; codes: decode the grids of --codes "
                             "(default: MNIST)")
    add_device_flag(parser)
    parser.add_argument("--filename", type=plain_name, default=None,
                        help="name of the PNG written to generatedImages/ (default: the --input value)")
    parser.add_argument("--seed", type=int, default=0,
                        help="picks the test digits, the samples or the noise (default: 0)")
    parser.add_argument("--temperature", type=positive_float, default=None,
                        help="--input random: divides the prior's logits, or scales a continuous bottleneck's latents' "
                             "standard deviation; lower gives cleaner, less varied digits (default: "
                             f"{SAMPLING_TEMPERATURE} for a prior over codes, 1 for continuous latents)")
    parser.add_argument("--guidance", type=nonnegative_float, default=GUIDANCE,
                        help="--input random: classifier-free guidance weight; higher gives digits more typical of "
                             f"their class, 0 samples the prior as trained (default: {GUIDANCE})")
    parser.add_argument("--digit", type=int, choices=range(10), default=None, metavar="D",
                        help="--input random: all 100 samples are of digit D (default: row i holds digit i)")
    parser.add_argument("--unconditional", action="store_true",
                        help="--input random: no class is asked for: the prior draws each sample's class itself, "
                             "so the grid shows whatever digits it produces")
    parser.add_argument("--codes", default=None, metavar="FILE",
                        help="--input codes: a .pt or .npy file of code grids (N, 7, 7) to decode (default: none)")
    parser.add_argument("--save-codes", default=None, metavar="FILE",
                        help="also write the grid's 100 code grids (100, 7, 7) to FILE, .pt or .npy (default: not "
                             "written)")
    parser.add_argument("--data-folder", default="data",
                        help="MNIST folder, for --input MNIST (default: data)")
    parser.add_argument("--hidden-size", type=positive_int, default=None,
                        help="optional: fail unless the checkpoint has this hidden size (default: not checked)")
    parser.add_argument("--k", type=positive_int, default=None,
                        help="optional: fail unless the checkpoint has this many codes (default: not checked)")
    return parser


def check_architecture(model, args) -> None:
    for flag, expected, actual in (("--hidden-size", args.hidden_size, model.config.hidden_size),
                                   ("--k", args.k, getattr(model.bottleneck, "num_embeddings", None))):
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


def check_flags(args, model) -> None:
    """Refuse flags that do not fit together, or that this model cannot follow."""
    if args.input != "random" and (args.digit is not None or args.unconditional):
        raise UserError("--digit and --unconditional choose prior samples: use them with --input random")
    if args.digit is not None and args.unconditional:
        raise UserError("--digit D asks for one class and --unconditional for none: pass only one")
    if (args.input == "codes") != (args.codes is not None):
        raise UserError("--input codes decodes the grids of --codes FILE: give both, or neither")
    for path in (args.codes, args.save_codes):
        if path is not None and Path(path).suffix.lower() not in CODE_FILE_SUFFIXES:
            raise UserError(f"{path}: a code file ends in .pt or .npy")
    continuous = f"{args.model} has a continuous bottleneck ({model.config.bottleneck})"
    if not model.discrete and (args.input == "codes" or args.save_codes is not None):
        raise UserError(f"{continuous}: it has no code grids to save or decode; use --input random or MNIST "
                        "without --save-codes or --codes")
    if not model.discrete and (args.digit is not None or args.unconditional):
        raise UserError(f"{continuous}, whose prior knows no classes: drop --digit and --unconditional")


class Picture(NamedTuple):
    pixels: torch.Tensor  # (N, 1, 28, 28) in [0, 1]
    codes: torch.Tensor | None  # (N, 7, 7) the code grids behind them; None for a continuous bottleneck
    what: str  # for the line that says what was written


def test_digits(args, model, generator, path: Path, device) -> Picture:
    """Reconstructions of GRID_SIDE^2 test digits picked by the seed; the digits themselves go to NAME_input.png."""
    test_images, _ = load_mnist(args.data_folder, train=False)
    chosen = test_images[torch.randperm(len(test_images), generator=generator)[:GRID_SIDE ** 2]].to(device)
    x_recon, quantized = model(images_to_inputs(chosen))
    input_path = path.with_name(f"{path.stem}_input.png")
    save_grid(chosen.unsqueeze(1).float() / 255, input_path)
    return Picture(model.to_pixels(x_recon), quantized.codes,
                   f"reconstructions; {input_path} holds the test digits they come from")


def samples(args, model, checkpoint, generator, device) -> Picture:
    """Prior samples: row i of digit i, all of --digit, or of classes the prior draws; for a continuous bottleneck,
    latents from its own prior."""
    count = GRID_SIDE ** 2
    if not model.discrete:
        latents = model.sample_latents(count, args.temperature, generator).to(device)
        return Picture(model.to_pixels(model.decode_latents(latents)), None,
                       f"{model.config.bottleneck} samples, latents from its prior x temperature {args.temperature}")
    prior = load_prior(checkpoint, args.model, model.bottleneck.num_embeddings, device)
    if args.unconditional:
        classes, what = prior.draw_classes(count, generator), "unconditional prior samples"
    elif args.digit is not None:
        classes, what = torch.full((count,), args.digit), f"prior samples of digit {args.digit}"
    else:
        classes, what = torch.arange(GRID_SIDE).repeat_interleave(GRID_SIDE), "prior samples, row i = digit i"
    started = time.perf_counter()
    codes = prior.sample(classes.to(device), args.temperature, args.guidance, generator)  # (100, 7, 7)
    seconds = time.perf_counter() - started
    return Picture(model.to_pixels(model.decode(codes)), codes,
                   f"{what}, temperature {args.temperature}, guidance {args.guidance}; the 100 code grids took "
                   f"{seconds:.2f} s to sample")


def save_codes(path, codes: torch.Tensor) -> None:
    """Code grids (N, 7, 7) as int64, to a .npy (numpy.save) or .pt (torch.save) file, atomically."""
    codes = codes.cpu().long()
    try:
        if Path(path).suffix.lower() == ".npy":
            with atomic_path(Path(path)) as temporary, open(temporary, "wb") as file:
                np.save(file, codes.numpy())
        else:
            save_torch(path, codes)
    except (OSError, RuntimeError) as error:
        raise write_failure(path, error, "run generate.py again") from None


def load_codes(path, model) -> torch.Tensor:
    """The first GRID_SIDE^2 code grids of a .npy or .pt file, refused in one line unless they are integer grids
    (N, 7, 7) of indices below K."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no code file at {path}: write one with generate.py --save-codes {path}")
    try:
        codes = (torch.from_numpy(np.load(path, allow_pickle=False)) if path.suffix.lower() == ".npy"
                 else torch.load(path, map_location="cpu", weights_only=True))
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as error:
        raise UserError(f"{path} is not a readable code file ({type(error).__name__}): write one with "
                        "generate.py --save-codes") from None
    integer_dtypes = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
    if not isinstance(codes, torch.Tensor) or codes.dtype not in integer_dtypes:
        raise UserError(f"{path} must hold one integer tensor of code indices (N, 7, 7)")
    if codes.dim() != 3 or tuple(codes.shape[1:]) != (LATENT_SIDE, LATENT_SIDE) or len(codes) == 0:
        raise UserError(f"{path} holds a tensor of shape {tuple(codes.shape)}: code grids have shape (N, 7, 7), N >= 1")
    num_embeddings = model.bottleneck.num_embeddings
    if int(codes.min()) < 0 or int(codes.max()) >= num_embeddings:
        raise UserError(f"{path} holds indices from {int(codes.min())} to {int(codes.max())}, but the model "
                        f"has codes 0 to {num_embeddings - 1}")
    return codes[:GRID_SIDE ** 2].long()


@torch.no_grad()
def main(args) -> None:
    device = resolve_device(args.device)
    model, checkpoint = load_model(args.model, device)
    check_architecture(model, args)
    check_flags(args, model)
    if args.temperature is None:
        args.temperature = default_temperature(model.discrete)
    path = output_path(args.filename or args.input)
    generator = torch.Generator().manual_seed(args.seed)
    if args.input == "MNIST":
        picture = test_digits(args, model, generator, path, device)
    elif args.input == "random":
        picture = samples(args, model, checkpoint, generator, device)
    elif args.input == "codes":
        codes = load_codes(args.codes, model).to(device)
        picture = Picture(model.to_pixels(model.decode(codes)), codes, f"the {len(codes)} code grids of {args.codes}")
    else:
        noise = torch.randn(GRID_SIDE ** 2, model.config.in_channels, 28, 28, generator=generator).to(device)
        x_recon, quantized = model(noise)
        picture = Picture(model.to_pixels(x_recon), quantized.codes, "noise images passed through the autoencoder")
    save_grid(picture.pixels, path)
    print(f"wrote {path} ({picture.what})")
    if args.save_codes is not None:
        save_codes(args.save_codes, picture.codes)
        print(f"wrote {args.save_codes}: the {len(picture.codes)} code grids behind it, shape "
              f"{tuple(picture.codes.shape)}; decode them with --input codes --codes {args.save_codes}")


if __name__ == "__main__":
    run_cli(main, build_parser().parse_args())
