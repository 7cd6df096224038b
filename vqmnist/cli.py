"""The command line every script shares: a parser that reports in one line, argument types, run_cli, the device."""
import argparse
import math
import os
import sys
from pathlib import Path

import torch

from vqmnist.errors import RunStopped, UserError


class Arguments(argparse.Namespace):
    """Parsed flags that also know which ones the user typed (`typed`, a set of dests; the others hold their
    defaults). `typed` lives in a slot, outside vars(args), so it is never saved with the flags."""

    __slots__ = ("typed",)


_NOT_TYPED = object()


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is reported on one line instead of a usage block, and parse_args returns
    Arguments, which know the flags the user typed."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def parse_args(self, args=None, namespace=None) -> Arguments:
        # A first pass from a namespace where every flag is a marker: argparse keeps the attributes a namespace
        # already has, so whatever is no longer the marker was typed.
        dests = {action.dest for action in self._actions if action.dest != argparse.SUPPRESS}
        marked = super().parse_args(args, argparse.Namespace(**dict.fromkeys(dests, _NOT_TYPED)))
        parsed = super().parse_args(args, namespace if namespace is not None else Arguments())
        parsed.typed = {dest for dest, value in vars(marked).items() if value is not _NOT_TYPED}
        return parsed

    def flag_names(self) -> dict[str, str]:
        """{dest: the flag that sets it}, e.g. {"num_embeddings": "--k"}, for messages that name a flag."""
        return {action.dest: action.option_strings[0] for action in self._actions if action.option_strings}


def run_cli(main, args: argparse.Namespace) -> None:
    """Run a script's main(args), turning a UserError or Ctrl-C into one line on stderr and an exit status."""
    prog = Path(sys.argv[0]).name
    rank = int(os.environ.get("RANK", "0"))  # under torchrun; 0 in a plain run
    try:
        main(args)
    except UserError as error:
        print(f"{prog}: error: {error}" + (f" (process {rank})" if rank else ""), file=sys.stderr)
        sys.exit(2)
    except RunStopped as stopped:
        if rank == 0:  # every process stops together; one says so
            print(f"{prog}: {stopped}", file=sys.stderr)
        sys.exit(stopped.exit_code)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)


def _number_type(cast, check, requirement):
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {requirement}, got {text!r}") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
        return value

    return parse


def integer(low: int, high: int):
    """An argparse type: an integer from low to high."""
    return _number_type(int, lambda v: low <= v <= high, f"an integer from {low} to {high:,}")


def number(low: float, high: float, above_low: bool = False):
    """An argparse type: a finite number from low (or, with above_low, above it) to high."""
    bounds = f"above {low:g} and at most {high:g}" if above_low else f"from {low:g} to {high:g}"
    return _number_type(float, lambda v: math.isfinite(v) and (v > low if above_low else v >= low) and v <= high,
                        f"a number {bounds}")


unit_interval = _number_type(float, lambda v: 0 <= v < 1, "a number in [0, 1)")


def plain_name(text: str) -> str:
    """A name for files under the project's output folders: relative, without '..', so it stays inside them."""
    path = Path(text)
    if not path.parts or path.is_absolute() or ".." in path.parts:
        raise argparse.ArgumentTypeError(f"give a plain name such as 'vqvae', not {text!r}")
    return text


def add_device_flag(parser: argparse.ArgumentParser, what: str = "run on") -> None:
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help=f"device to {what} (default: cpu)")


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: CUDA is not available on this machine; use --device cpu")
    return torch.device(name)
