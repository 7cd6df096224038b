"""Flag values a checkpoint stores, checked by the very parser that checks them when they are typed."""
import argparse
from collections.abc import Iterable
from pathlib import Path

from vqmnist.errors import UserError, shown


def as_typed(value) -> str:
    """A flag's value as it is typed on the command line: 8,8,8 rather than (8, 8, 8)."""
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def flag_problem(action: argparse.Action, value) -> str | None:
    """What is wrong with `value` as the value of the flag `action`, had it been typed; None if nothing is."""
    if action.nargs == 0:  # --flag / --no-flag: a switch
        return None if type(value) is bool else "must be true or false"
    scalar = (int, float, str)
    if type(value) not in scalar + (tuple, list) or (
            type(value) in (tuple, list) and not all(type(item) in scalar for item in value)):
        return f"is a {type(value).__name__}, which no flag takes"
    try:
        text = as_typed(value)
        parsed = action.type(text) if action.type is not None else text
    except (argparse.ArgumentTypeError, ValueError, TypeError) as error:
        return f"is refused as the flag would be ({str(error)[:120]})"
    if type(parsed) is not type(value) and not (type(value) is list and type(parsed) is tuple):
        return f"is of type {type(value).__name__} where the flag gives {type(parsed).__name__}"
    if (tuple(value) if type(value) is list else value) != parsed:
        return "does not read back as itself"
    if action.choices is not None and parsed not in action.choices:
        return f"must be one of {', '.join(map(str, action.choices))}"
    return None


def check_stored_flags(parser: argparse.ArgumentParser, stored: dict, dests: Iterable[str], path: Path,
                       where: str = "flags", names: dict[str, str] | None = None) -> None:
    """Refuse, in one line naming the file and the flag, a value in `stored` (dest -> value; `names` maps a stored
    name to its flag's dest where they differ) of one of `dests` that the flag would refuse if typed."""
    actions = {action.dest: action for action in parser._actions if action.option_strings}
    names = names or {}
    for name in dests:
        if name not in stored:
            continue
        action = actions[names.get(name, name)]
        problem = flag_problem(action, stored[name])
        if problem is not None:
            raise UserError(f"{path}: its stored {where} give {action.option_strings[0]} {shown(stored[name])}, which "
                            f"{problem}: the file was edited or damaged; use a checkpoint vqvae.py wrote, or start "
                            "a new run with --overwrite")
