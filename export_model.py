"""Write a checkpoint's model without its training state: a small file to share or to commit.

Usage:
    python export_model.py --model models/vqvae/best.pt --output pretrained/vqvae_mnist.pt

The file keeps what generate.py and evaluate.py use (vqmnist.checkpoints.EXPORT_KEYS: the format, the autoencoder's
config and weights, the prior, the epoch and step, the validation scores and the training flags) and drops what
only --resume needs (the optimizer state, the schedule, the random-number generator states). It prints the
file's size and SHA-256. --output is checked before the checkpoint is read: a name that is no file's (empty, ".",
"..", one ending in "/") or a folder is refused, as is a file that exists without --overwrite; its folder is made, and
must take a file, before the export is written.
"""
import hashlib
import os
from pathlib import Path

from vqmnist.checkpoints.format import exported, save_checkpoint
from vqmnist.checkpoints.loading import load_model
from vqmnist.configuration.cli import ArgumentParser, run_cli
from vqmnist.configuration.errors import UserError
from vqmnist.io.files import check_writable, write_failure

EXAMPLE_NAME = "vqvae_mnist.pt"


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description="Write a checkpoint's model without its training state.")
    parser.add_argument("--model", default="models/vqvae/best.pt",
                        help="checkpoint written by vqvae.py (default: models/vqvae/best.pt)")
    parser.add_argument("--output", required=True, help="file to write, such as pretrained/vqvae_mnist.pt")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists (default: refuse)")
    parser.add_argument("--allow-no-prior", action="store_true",
                        help="export an autoencoder without a prior (default: refuse, since --input random needs it)")
    return parser


def check_output(args) -> Path:
    """--output as the file the export is written to, refused in one line where it cannot be: a name that is no
    file's (pathlib would drop the trailing "/" of "newdir/" and write a file named newdir), a folder, the --model
    itself, or a file that exists without --overwrite."""
    if not args.output:
        raise UserError(f"--output is empty: give a file name such as {Path('pretrained') / EXAMPLE_NAME}")
    last = args.output.replace(os.sep, "/").split("/")[-1]
    if last in ("", ".", ".."):
        folder = args.output.rstrip("/" + os.sep) or "pretrained"
        raise UserError(f"--output {args.output!r} names a folder, not a file: give a file name such as "
                        f"{Path(folder) / EXAMPLE_NAME}")
    output = Path(args.output)
    if output.is_dir():
        raise UserError(f"--output {args.output} is a folder: give a file name such as {output / EXAMPLE_NAME}")
    if output.resolve() == Path(args.model).resolve() or (
            output.exists() and Path(args.model).exists() and os.path.samefile(output, args.model)):
        raise UserError("--output must differ from --model: the export would replace the checkpoint it reads")
    if output.exists() and not args.overwrite:
        raise UserError(f"{output} already exists: pass --overwrite to replace it, or choose another --output")
    return output


def main(args) -> None:
    output = check_output(args)  # before the checkpoint is read: a bad name costs nothing
    model, prior, checkpoint, _ = load_model(args.model, "cpu")  # what is shared must load, prior included
    if prior is None and model.discrete and not args.allow_no_prior:  # a continuous bottleneck samples its own prior
        raise UserError(f"{args.model} has no prior, so generate.py --input random could not use the export: "
                        "train one with vqvae.py --prior-only, or pass --allow-no-prior")
    check_writable(output)  # makes its folder, and writes and removes a probe file there
    try:
        save_checkpoint(output, exported(checkpoint))
    except (OSError, RuntimeError) as error:  # torch.save's RuntimeError: a write that came up short
        raise write_failure(output, error, "export again") from None
    digest = hashlib.sha256(output.read_bytes()).hexdigest()
    print(f"wrote {output}: {output.stat().st_size:,} bytes, SHA-256 {digest}")


if __name__ == "__main__":
    run_cli(main, build_parser().parse_args())
