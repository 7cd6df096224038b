"""The command line every script shares: a parser that reports in one line, argument types, run_cli, the device."""
import argparse
import os
import sys
from pathlib import Path

import torch

import options
from options import Rule, flag_dest, option_fields, shown
from vqmnist.configuration.errors import RunStopped, UserError
from vqmnist.io.data import DATASETS


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


def refuse_inapplicable(args, dests, why: str, flag_names: dict[str, str] | None = None) -> None:
    """The one rule for a flag that cannot apply: refuse, in one line naming the flags and `why` ("with --input
    MNIST, which draws no samples"), those of `dests` the user typed. `args` are Arguments (a plain Namespace knows
    no typed flags and passes); `flag_names` is the parser's flag_names() where a dest is not its flag's spelling."""
    typed = sorted(set(dests) & getattr(args, "typed", set()))
    if typed:
        names = [(flag_names or {}).get(dest, "--" + dest.replace("_", "-")) for dest in typed]
        one = len(names) == 1
        raise UserError(f"{' and '.join(names)} {'does' if one else 'do'} not apply {why}: drop "
                        f"{'it' if one else 'them'}")


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


def rule_type(rule: Rule):
    """An argparse type holding a typed flag to `rule` (options.Rule), with its words when it breaks it."""
    def parse(text: str):
        try:
            return rule.from_text(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


def integer(low: int, high: int):
    """An argparse type: an integer from low to high."""
    return rule_type(options.integer(low, high))


def number(low: float, high: float, above_low: bool = False):
    """An argparse type: a finite number from low (or, with above_low, above it) to high."""
    return rule_type(options.number(low, high, above_low=above_low))


unit_interval = rule_type(options.UNIT_INTERVAL)


def add_option_flags(group, config_type, prefix: str = "", skip=()) -> list[str]:
    """Add the flag of every field of config_type made with options.option that has one (and whose name is not in
    skip): its dest the field's (options.flag_dest), its type or choices from the field's rule, its help with the
    default. Returns the dests added."""
    added = []
    for item in option_fields(config_type):
        flag, rule = item.metadata["flag"], item.metadata["rule"]
        if flag is None or item.name in skip:
            continue
        kind = ({"action": argparse.BooleanOptionalAction} if rule.kind is bool else
                {"choices": list(rule.choices)} if rule.choices is not None else {"type": rule_type(rule)})
        group.add_argument(flag, dest=flag_dest(item, prefix), default=item.default,
                           help=f"{item.metadata['help']} (default: {shown(item.default)})", **kind)
        added.append(flag_dest(item, prefix))
    return added


def plain_name(text: str) -> str:
    """A name for files under the project's output folders: relative, without '..', so it stays inside them."""
    path = Path(text)
    if not path.parts or path.is_absolute() or ".." in path.parts:
        raise argparse.ArgumentTypeError(f"give a plain name such as 'vqvae', not {text!r}")
    return text


def add_dataset_flag(parser: argparse.ArgumentParser) -> None:
    """--dataset for a script that reads a trained model's data: by default the one its run trained on."""
    parser.add_argument("--dataset", choices=DATASETS, default=None,
                        help="the MNIST-format data set in --data-folder, as vqvae.py --dataset takes it (default: "
                             "the one the model was trained on)")


def add_device_flag(parser: argparse.ArgumentParser, what: str = "run on") -> None:
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help=f"device to {what} (default: cpu)")


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: CUDA is not available on this machine; use --device cpu")
    return torch.device(name)
