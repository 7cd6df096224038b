"""Write a 10x10 grid of images made by a trained VQ-VAE to generatedImages/NAME.png.

Usage:
    python generate.py --model models/vqvae/best.pt --input MNIST --filename recon    # + recon_input.png
    python generate.py --model models/vqvae/best.pt --input random --filename samples # row i: ten samples of digit i
    python generate.py --model models/vqvae/best.pt --input random --digit 7 --temperature 0.8 --seed 1
    python generate.py --model models/vqvae/best.pt --input random --unconditional
    python generate.py --model models/vqvae/best.pt --input random --top-p 0.95   # cleaner, less varied digits
    python generate.py --model models/vqvae/best.pt --input complete --keep-rows 3  # half-drawn digits completed
    python generate.py --model models/vqvae/best.pt --input noise --filename noise
    python generate.py --model models/vqvae/best.pt --input random --save-codes codes.npy   # the 100 sampled grids
    python generate.py --model models/vqvae/best.pt --input codes --codes codes.npy --filename decoded

--input MNIST reconstructs 100 test digits picked by --seed and also writes the originals to NAME_input.png.
--input random samples code grids from the prior stored in the checkpoint (trained by vqvae.py after the
autoencoder) and decodes them: row i holds ten samples of digit i, or with --digit D all 100 are Ds, or with
--unconditional the prior draws each sample's class itself (from the training set's class frequencies) and then
its codes. --temperature, --guidance (classifier-free guidance), --top-k and --top-p (nucleus sampling) trade
variety for clean, typical digits.
--input complete shows, in row i, a test digit i picked by --seed, then nine completions: the top --keep-rows rows
of its code grid kept, the rest drawn by the prior, given the digit's class (or, --unconditional, without it).
--input noise decodes what the autoencoder makes of standard-normal noise images, as the reference repository's
"random" does; it is kept for comparison.
--save-codes FILE (.pt or .npy) also writes the (100, 7, 7) code grids behind the picture: the test digits' codes,
the sampled ones, those of the noise; a FILE that exists is replaced only with --overwrite. --input codes --codes FILE
decodes a file of grids (N, 7, 7), the first 100 of them, so codes edited by hand or by another model can be seen.
A grid of fewer images than 100 (a test set or a code file that holds fewer) says so in the line that names it.
A residual VQ of L levels has L codes a position: its grids are (N, L, 7, 7), in both directions. If writing any of
the grid, NAME_input.png and the --save-codes file fails, none is replaced: each goes to a temporary file first,
renamed into place once all are whole.
A continuous bottleneck, such as the Gaussian VAE (vqvae.py --bottleneck gaussian), has no codes: its --input random
decodes latents from its own prior (the Gaussian's z ~ N(0, I)), times
--temperature.
The architecture comes from the checkpoint; --hidden-size and --k, if given, are only checked against it.
Every check comes before the first image is made: the flags together and with the model (a flag that cannot apply,
such as --temperature with --input MNIST, is refused in one line), the prior, the files to write, the digits or codes
to read.
"""
import argparse
import contextlib
import os
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np
import torch
from torchvision.utils import make_grid, save_image

from modules import LATENT_SIDE
from options import MAX_CODES, MAX_WIDTH
from pixel_distributions import images_to_inputs
from prior import GUIDANCE, SAMPLING_TEMPERATURE, Truncation
from vqmnist.checkpoints.format import trained_dataset
from vqmnist.checkpoints.loading import load_model
from vqmnist.configuration.cli import (ArgumentParser, add_dataset_flag, add_device_flag, add_option_flags, integer,
                                       number, plain_name, refuse_inapplicable, resolve_device, run_cli)
from vqmnist.configuration.errors import UserError
from vqmnist.configuration.limits import MAX_GUIDANCE, MAX_SEED, MAX_TEMPERATURE, MIN_TEMPERATURE
from vqmnist.io.code_files import load_codes
from vqmnist.io.data import TEST_FILES, check_default_own_folder, load_mnist
from vqmnist.io.files import atomic_path, write_failure

GRID_SIDE = 10
DEFAULT_KEPT_ROWS = 3
CODE_FILE_SUFFIXES = (".pt", ".npy")
OUTPUT_FOLDER = Path("generatedImages")
SAMPLER_FLAGS = ("temperature", "guidance", "top_k", "top_p")  # how --input random and complete draw from the prior


def grid_name(text: str) -> str:
    """--filename: a plain name that ends in a file name, so that NAME.png is a file and not a folder."""
    plain_name(text)
    last = text.replace(os.sep, "/").split("/")[-1]  # pathlib would drop a trailing "/" or "." and hide them
    if last in ("", ".") or last.lower() == ".png":
        raise argparse.ArgumentTypeError(f"give a file name such as 'recon' or 'sweep/seed1', not {text!r}, which "
                                         "names a folder or a PNG without a name")
    return text


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description="Write a 10x10 grid of VQ-VAE reconstructions or random images.")
    parser.add_argument("--model", default="models/vqvae/best.pt",
                        help="checkpoint written by vqvae.py (default: models/vqvae/best.pt)")
    parser.add_argument("--input", choices=["MNIST", "random", "complete", "noise", "codes"], default="MNIST",
                        help="MNIST: reconstruct test digits; random: samples of the learned prior; complete: the "
                             "prior completes test digits of which it is shown the top --keep-rows rows of codes; "
                             "noise: decode noise images as the reference does; codes: decode the grids of --codes "
                             "(default: MNIST)")
    add_device_flag(parser)
    parser.add_argument("--filename", type=grid_name, default=None,
                        help="name of the PNG written to generatedImages/ (default: the --input value)")
    parser.add_argument("--seed", type=integer(0, MAX_SEED), default=0,
                        help=f"picks the test digits, the samples or the noise, 0 to {MAX_SEED:,} (default: 0)")
    parser.add_argument("--temperature", type=number(MIN_TEMPERATURE, MAX_TEMPERATURE),
                        default=SAMPLING_TEMPERATURE,
                        help="--input random: divides the prior's logits, or scales a continuous bottleneck's "
                             f"latents' standard deviation, {MIN_TEMPERATURE:g} to {MAX_TEMPERATURE:g}; lower gives "
                             f"cleaner, less varied digits; 1 changes neither (default: {SAMPLING_TEMPERATURE})")
    parser.add_argument("--guidance", type=number(0, MAX_GUIDANCE), default=GUIDANCE,
                        help=f"--input random: classifier-free guidance weight, 0 to {MAX_GUIDANCE:g}; higher gives "
                             "digits more typical of their class, 0 samples the prior as trained (default: "
                             f"{GUIDANCE})")
    add_option_flags(parser, Truncation)
    parser.add_argument("--digit", type=int, choices=range(10), default=None, metavar="D",
                        help="--input random: all 100 samples are of digit D (default: row i holds digit i)")
    parser.add_argument("--unconditional", action="store_true",
                        help="--input random: no class is asked for: the prior draws each sample's class itself, "
                             "so the grid shows whatever digits it produces; --input complete: the prior completes "
                             "each digit without being told its class")
    parser.add_argument("--keep-rows", type=integer(1, LATENT_SIDE - 1), default=None, metavar="N",
                        help=f"--input complete: rows of each digit's {LATENT_SIDE}x{LATENT_SIDE} code grid kept, 1 to "
                             f"{LATENT_SIDE - 1}; the prior draws the rest (default: {DEFAULT_KEPT_ROWS})")
    parser.add_argument("--codes", default=None, metavar="FILE",
                        help="--input codes: a .pt or .npy file of code grids (N, 7, 7), (N, L, 7, 7) for a residual "
                             "VQ, to decode (default: none)")
    parser.add_argument("--save-codes", default=None, metavar="FILE",
                        help="also write the grid's 100 code grids (100, 7, 7), (100, L, 7, 7) for a residual VQ, to "
                             "FILE, .pt or .npy (default: not written)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the --save-codes FILE if it exists (default: refuse); the grid in "
                             f"{OUTPUT_FOLDER}/ is replaced either way")
    parser.add_argument("--data-folder", default="data",
                        help="MNIST folder, for --input MNIST (default: data)")
    add_dataset_flag(parser)
    parser.add_argument("--hidden-size", type=integer(1, MAX_WIDTH), default=None,
                        help=f"optional: fail unless the checkpoint has this hidden size, 1 to {MAX_WIDTH:,} "
                             "(default: not checked)")
    parser.add_argument("--k", type=integer(1, MAX_CODES), default=None,
                        help=f"optional: fail unless the checkpoint has this many codes, 1 to {MAX_CODES:,} (default: "
                             "not checked)")
    return parser


def check_architecture(model, args) -> None:
    if not model.discrete:
        refuse_inapplicable(args, ("k",), f"to {args.model}, whose bottleneck ({model.config.bottleneck}) is "
                                          "continuous: it has no codes to count")
    for flag, expected, actual in (("--hidden-size", args.hidden_size, model.config.hidden_size),
                                   ("--k", args.k, getattr(model.bottleneck, "num_embeddings", None))):
        if expected is not None and expected != actual:
            raise UserError(f"{args.model} was trained with {flag} {actual}, not {expected}: the architecture "
                            f"comes from the checkpoint, so drop {flag} or pick another --model")


def output_path(filename: str) -> Path:
    name = Path(filename)
    path = OUTPUT_FOLDER / (name if name.suffix.lower() == ".png" else name.with_name(f"{name.name}.png"))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create {path.parent}: {error.strerror}") from None
    return path


def check_flags(args, model) -> None:
    """Refuse flags that do not fit together, or that this model cannot follow: a typed flag that cannot apply, by
    the one rule (refuse_inapplicable), in one line naming why."""
    mode = f"with --input {args.input}"
    if args.input not in ("random", "complete"):
        refuse_inapplicable(args, ("digit", "unconditional"), f"{mode}, which draws no prior samples (--digit and "
                            "--unconditional choose them: use them with --input random, or --unconditional with "
                            "--input complete)")
        refuse_inapplicable(args, SAMPLER_FLAGS, f"{mode}, which draws nothing from the prior (the sampler's flags "
                                                 "set how --input random and complete draw)")
    if args.input == "complete":
        refuse_inapplicable(args, ("digit",), f"{mode}, which completes a test digit of each class (use it with "
                                              "--input random)")
        if args.unconditional:
            refuse_inapplicable(args, ("guidance",), f"{mode} --unconditional, which completes the digits without "
                                                     "their classes: there is no class to guide them to")
    if args.input != "complete":
        refuse_inapplicable(args, ("keep_rows",), f"{mode} (it says how much of each digit the prior completes: use "
                                                  "it with --input complete)")
    if args.input != "codes":
        refuse_inapplicable(args, ("codes",), f"{mode} (it names the grids that --input codes decodes)")
    elif args.codes is None:
        raise UserError("--input codes decodes the grids of --codes FILE: give --codes")
    else:
        refuse_inapplicable(args, ("seed",), f"{mode}, which decodes the grids of --codes as they are: nothing is "
                                             "picked or drawn at random")
    if args.digit is not None and args.unconditional:
        raise UserError("--digit D asks for one class and --unconditional for none: pass only one")
    if args.save_codes is None:
        refuse_inapplicable(args, ("overwrite",), f"without --save-codes: it lets --save-codes replace a file (the "
                                                  f"grid in {OUTPUT_FOLDER}/ is replaced either way)")
    for path in (args.codes, args.save_codes):
        if path is not None and Path(path).suffix.lower() not in CODE_FILE_SUFFIXES:
            raise UserError(f"{path}: a code file ends in .pt or .npy")
    if model.discrete:
        return
    continuous = f"to {args.model}, which has a continuous bottleneck ({model.config.bottleneck})"
    if args.input in ("codes", "complete"):
        raise UserError(f"{args.model} has a continuous bottleneck ({model.config.bottleneck}): it has no code grids "
                        f"to decode or complete; use --input random, MNIST or noise")
    refuse_inapplicable(args, ("save_codes",), f"{continuous}: it has no code grids to save")
    refuse_inapplicable(args, ("digit", "unconditional"), f"{continuous}, whose prior knows no classes")
    refuse_inapplicable(args, ("guidance", "top_k", "top_p"), f"{continuous}: its samples are latents from its own "
                        "prior, which knows no classes to guide to and draws no codes to truncate")


def check_targets(targets: dict[Path, str], args) -> None:
    """Refuse, before any work, files that cannot be written whole: {path: the flag that names it}. Checked first so
    that a failure comes before sampling, not after some files have been replaced."""
    for path, flag in targets.items():
        if path.is_dir():
            raise UserError(f"{path} is a folder: pick another {flag}")
    if args.save_codes is None:
        return
    codes_path = Path(args.save_codes)
    if args.save_codes.endswith(("/", os.sep)):  # Path() drops the slash that says a folder was meant
        raise UserError(f"--save-codes {args.save_codes} names a folder: give a file name such as codes.npy")
    if not codes_path.parent.is_dir():
        raise UserError(f"cannot write {codes_path}: {codes_path.parent} is not a folder; create it or pick another "
                        "--save-codes")
    if codes_path.exists() and os.path.samefile(codes_path, args.model):
        raise UserError(f"--save-codes {args.save_codes} is the --model checkpoint: saving codes there would replace "
                        "it; pick another file")
    if codes_path.exists() and not args.overwrite:
        raise UserError(f"{args.save_codes} already exists: pass --overwrite to replace it, or choose another "
                        "--save-codes")


def read_test_set(args, checkpoint: dict):
    """The test images and labels --input MNIST and complete draw from. With --dataset own and no --data-folder
    typed, a default folder that lacks the files is refused naming the flag (and the folder the run read them
    from), not the folder the user never chose; --input complete needs a test digit of each class."""
    if args.dataset == "own":
        stored = checkpoint["args"].get("data_folder") if isinstance(checkpoint["args"], dict) else None
        check_default_own_folder(args.data_folder, "data_folder" in getattr(args, "typed", set()), TEST_FILES,
                                 "the test digits", stored)
    test_images, test_labels = load_mnist(args.data_folder, train=False, dataset=args.dataset)
    if args.input == "complete" and len(set(test_labels.tolist())) < GRID_SIDE:
        raise UserError(f"the test set in {args.data_folder} lacks some of the ten digits: --input complete shows one "
                        "of each")
    return test_images, test_labels


class Picture(NamedTuple):
    pixels: torch.Tensor  # (N, 1, 28, 28) in [0, 1]
    codes: torch.Tensor | None  # (N, 7, 7) or (N, L, 7, 7) the code grids behind them; None for a continuous bottleneck
    what: str  # for the line that says what was written
    inputs: torch.Tensor | None = None  # (N, 1, 28, 28) in [0, 1]: the test digits reconstructed, for NAME_input.png


def input_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}_input.png")


def test_digits(args, model, test_images, generator, path: Path, device) -> Picture:
    """Reconstructions of GRID_SIDE^2 test digits picked by the seed (all of them, said so, where the test set holds
    fewer), and the digits themselves for NAME_input.png."""
    chosen = test_images[torch.randperm(len(test_images), generator=generator)[:GRID_SIDE ** 2]].to(device)
    x_recon, quantized = model(images_to_inputs(chosen))
    what = "reconstructions" if len(chosen) == GRID_SIDE ** 2 else (
        f"reconstructions of all {len(chosen)} test digits in {args.data_folder}, fewer than the grid's "
        f"{GRID_SIDE ** 2}")
    return Picture(model.to_pixels(x_recon), quantized.codes,
                   f"{what}; {input_path(path)} holds the test digits they come from",
                   chosen.unsqueeze(1).float() / 255)


def samples(args, model, prior, generator, device) -> Picture:
    """Prior samples: row i of digit i, all of --digit, or of classes the prior draws; for a continuous bottleneck
    (prior None), latents from its own prior."""
    count = GRID_SIDE ** 2
    if not model.discrete:
        latents = model.sample_latents(count, args.temperature, generator).to(device)
        return Picture(model.to_pixels(model.decode_latents(latents)), None,
                       f"{model.config.bottleneck} samples, latents from its prior x temperature {args.temperature}")
    if args.unconditional:
        classes, what = prior.draw_classes(count, generator), "unconditional prior samples"
    elif args.digit is not None:
        classes, what = torch.full((count,), args.digit), f"prior samples of digit {args.digit}"
    else:
        classes, what = torch.arange(GRID_SIDE).repeat_interleave(GRID_SIDE), "prior samples, row i = digit i"
    started = time.perf_counter()
    truncation = Truncation(args.top_k, args.top_p)
    codes = prior.sample(classes.to(device), args.temperature, args.guidance, generator,
                         truncation=truncation)  # (100, [L,] 7, 7)
    seconds = time.perf_counter() - started
    return Picture(model.to_pixels(model.decode(codes)), codes,
                   f"{what}, temperature {args.temperature}, guidance {args.guidance}{truncation.describe()}; the 100 "
                   f"code grids took {seconds:.2f} s to sample")


def completions(args, model, prior, test_set, generator, device) -> Picture:
    """Row i: a test digit of class i picked by the seed, then nine completions by the prior of its code grid's top
    --keep-rows rows, given the digit's class (or, --unconditional, without it)."""
    test_images, test_labels = test_set
    order = torch.randperm(len(test_images), generator=generator)
    picks = torch.stack([order[test_labels[order] == digit][0] for digit in range(GRID_SIDE)])  # (10,)
    originals = test_images[picks].to(device)
    codes = model.encode(images_to_inputs(originals))  # (10, 7, 7), or (10, L, 7, 7)
    per_digit, kept = GRID_SIDE - 1, args.keep_rows or DEFAULT_KEPT_ROWS
    # (90, kept * 7 * L): the kept rows' codes, in the prior's order
    prefix = prior.to_sequence(codes)[:, :kept * LATENT_SIDE * prior.config.levels].repeat_interleave(per_digit, 0)
    classes = torch.full((len(prefix),), prior.no_class, device=device) if args.unconditional else \
        test_labels[picks].to(device).repeat_interleave(per_digit)
    truncation = Truncation(args.top_k, args.top_p)
    completed = prior.sample(classes, args.temperature, args.guidance, generator, prefix, truncation)  # (90, [L,] 7, 7)
    pixels = model.to_pixels(model.decode(completed)).view(GRID_SIDE, per_digit, 1, 28, 28)
    originals = originals.unsqueeze(1).float().div(255).unsqueeze(1)  # (10, 1, 1, 28, 28)
    grids = torch.cat([codes.unsqueeze(1), completed.view(GRID_SIDE, per_digit, *codes.shape[1:])], 1)
    given = "without their classes" if args.unconditional else "given their classes"
    return Picture(torch.cat([originals, pixels], 1).flatten(0, 1), grids.flatten(0, 1),
                   f"row i: a test digit i, then nine completions {given} of its top {kept} of {LATENT_SIDE} code "
                   f"rows, temperature {args.temperature}, guidance {args.guidance}{truncation.describe()}")


def grid_writer(images: torch.Tensor) -> Callable[[BinaryIO], None]:
    """Writes (100, 1, 28, 28) pixels in [0, 1] as a 10x10 PNG."""
    return lambda file: save_image(make_grid(images, nrow=GRID_SIDE), file, format="png")


def codes_writer(path, codes: torch.Tensor) -> Callable[[BinaryIO], None]:
    """Writes code grids (N, 7, 7) or (N, L, 7, 7) as int64, with numpy.save for a .npy path, torch.save for a .pt
    one."""
    codes = codes.cpu().long()
    if Path(path).suffix.lower() == ".npy":
        return lambda file: np.save(file, codes.numpy())
    return lambda file: torch.save(codes, file)


def write_outputs(outputs: dict[Path, Callable[[BinaryIO], None]]) -> None:
    """Write every output to a temporary file beside it, and rename them over their targets only once all are whole:
    a failure to write any (an unwritable place, a full disk) leaves no new or replaced file. The renames run in
    reverse order (the ExitStack's), so the last output, the one in a place of the user's choosing, goes first."""
    try:
        with contextlib.ExitStack() as renames:
            for path, write in outputs.items():
                temporary = renames.enter_context(atomic_path(path))
                try:
                    with open(temporary, "wb") as file:
                        write(file)
                        file.flush()
                        os.fsync(file.fileno())
                except (OSError, RuntimeError) as error:
                    raise write_failure(path, error, "run generate.py again") from None
    except OSError as error:  # a rename; os.replace names its target second
        raise write_failure(error.filename2 or error.filename, error, "run generate.py again") from None


@torch.no_grad()
def main(args) -> None:
    # Every check first: the flags, the prior, the files to write, the digits or codes to read; then the picture.
    device = resolve_device(args.device)
    loaded = load_model(args.model, device)
    model = loaded.model
    check_architecture(model, args)
    check_flags(args, model)
    args.dataset = args.dataset or trained_dataset(loaded.checkpoint, args.model)
    prior = (loaded.require_prior(instead=", or use --input noise")
             if model.discrete and args.input in ("random", "complete") else None)
    path = output_path(args.filename or args.input)
    targets = {path: "--filename"}
    if args.input == "MNIST":
        targets[input_path(path)] = "--filename"
    if args.save_codes is not None:
        targets[Path(args.save_codes)] = "--save-codes"
    check_targets(targets, args)
    test_set = read_test_set(args, loaded.checkpoint) if args.input in ("MNIST", "complete") else None
    codes = load_codes(args.codes, model.bottleneck.num_embeddings, GRID_SIDE ** 2,
                       model.bottleneck.code_levels).to(device) if args.input == "codes" else None
    generator = torch.Generator().manual_seed(args.seed)
    if args.input == "MNIST":
        picture = test_digits(args, model, test_set[0], generator, path, device)
    elif args.input == "random":
        picture = samples(args, model, prior, generator, device)
    elif args.input == "complete":
        picture = completions(args, model, prior, test_set, generator, device)
    elif args.input == "codes":
        which = (f"the first {len(codes)}" if len(codes) == GRID_SIDE ** 2
                 else f"all {len(codes)}, fewer than the grid's {GRID_SIDE ** 2},")
        picture = Picture(model.to_pixels(model.decode(codes)), codes, f"{which} code grids of {args.codes}")
    else:
        noise = torch.randn(GRID_SIDE ** 2, model.config.in_channels, 28, 28, generator=generator).to(device)
        x_recon, quantized = model(noise)
        picture = Picture(model.to_pixels(x_recon), quantized.codes, "noise images passed through the autoencoder")
    outputs = {path: grid_writer(picture.pixels)}
    if picture.inputs is not None:
        outputs[input_path(path)] = grid_writer(picture.inputs)
    if args.save_codes is not None:
        outputs[Path(args.save_codes)] = codes_writer(args.save_codes, picture.codes)
    write_outputs(outputs)
    print(f"wrote {path} ({picture.what})")
    if args.save_codes is not None:
        print(f"wrote {args.save_codes}: the {len(picture.codes)} code grids behind it, shape "
              f"{tuple(picture.codes.shape)}; decode them with --input codes --codes {shlex.quote(args.save_codes)}")


if __name__ == "__main__":
    run_cli(main, build_parser().parse_args())
