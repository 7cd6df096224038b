"""Settings declared once: a config field with its flag, help, default and rule, the rule checking a stored value
and a typed flag alike; and the largest sizes a model may ask for.

A config dataclass (a bottleneck's, the autoencoder's, the prior's, and the settings each trains with) makes each
field with `option`, giving its rule (`Rule`: the kind of value and its bounds or choices) and, for one the command
line sets, its flag and help. `check_options` holds every field of a config to its rule (ValueError naming the
field), so a bad checkpoint fails in one line; `vqmnist.configuration.cli.add_option_flags` makes the flags from the
same fields, so a typed flag is held to the same rule, and `from_flags` reads a config back from the parsed flags. A
setting several configs share is a `SharedOption`, so that one flag sets all of them.
"""
import math
from dataclasses import Field, dataclass, field, fields
from typing import Any, Callable, Collection, NamedTuple


# The largest sizes a model's settings may ask for, so that a flag or a checkpoint cannot ask for more than one machine
# builds; the run's own limits are vqmnist/configuration/limits.py.
MAX_CODES = 2 ** 17  # K: a codebook, FSQ's product of levels, the prior's vocabulary
MAX_WIDTH = 2 ** 16  # channels, code dimensions, a transformer's width: each size of one layer
MAX_DEPTH = 256  # residual blocks, transformer layers
MAX_CODE_LEVELS = 8  # codes per position: a residual VQ's codebooks; the prior reads levels x positions codes
MAX_GRID_SIDE = 28  # a code grid is never larger than the image
MAX_CLASSES = 1000
MAX_LOSS_WEIGHT = 1e6  # --beta, --kl-weight, --restart-threshold: far beyond any useful value, still finite


class StepCost(NamedTuple):
    """What one training step of a bottleneck costs, estimated from its shapes (Bottleneck.step_cost)."""

    values: int  # of the largest tensor it makes
    operations: int  # multiply-adds, its first step's initialisation included


@dataclass(frozen=True)
class Rule:
    """The values a setting may take: `kind` int or float within [low, high] (open at low with above_low, at high
    with below_high), bool, str of `choices`, or tuple, which `parse` reads from text (raising ValueError) and
    `problem` checks (None or what is wrong)."""

    kind: type
    low: float | None = None
    high: float | None = None
    above_low: bool = False
    below_high: bool = False
    choices: Collection[str] | None = None  # read when used, so a live view (a registry's keys) stays current
    parse: Callable[[str], Any] | None = None
    problem: Callable[[Any], str | None] | None = None

    def requirement(self) -> str:
        """What a value must be, in words: "an integer from 1 to 512", "a number in [0, 1)", "one of (...)"."""
        if self.choices is not None:
            return f"one of {tuple(self.choices)}"
        if self.kind is bool:
            return "true or false"
        if self.kind is int:
            return f"an integer from {self.low} to {self.high:,}"
        if self.kind is float:
            if self.above_low:
                return f"a number above {self.low:g} and at most {self.high:g}"
            if self.below_high:
                return f"a number in [{self.low:g}, {self.high:g})"
            return f"a number from {self.low:g} to {self.high:g}"
        return "valid"

    def holds(self, value) -> bool:
        """Whether a value (a checkpoint's or a parsed flag's) keeps the rule."""
        if self.choices is not None:
            return isinstance(value, str) and value in self.choices
        if self.kind is bool:
            return type(value) is bool
        if self.kind is int:
            return type(value) is int and self.low <= value <= self.high
        if self.kind is float:
            return (type(value) in (int, float) and math.isfinite(value)
                    and (value > self.low if self.above_low else value >= self.low)
                    and (value < self.high if self.below_high else value <= self.high))
        return isinstance(value, self.kind) and (self.problem is None or self.problem(value) is None)

    def complaint(self, value) -> str | None:
        """None if value keeps the rule, else what it must be: the requirement, or `problem`'s own words."""
        if self.holds(value):
            return None
        problem = self.problem(value) if self.problem is not None and isinstance(value, self.kind) else None
        return self.requirement() if problem is None else problem

    def check(self, name: str, value) -> None:
        """Raise ValueError naming the setting if value breaks the rule."""
        complaint = self.complaint(value)
        if complaint is not None:
            raise ValueError(f"{name} must be {complaint}, not {value!r}")

    def from_text(self, text: str):
        """The value a typed flag gives; ValueError saying what was expected if it breaks the rule."""
        try:
            value = self.parse(text) if self.parse is not None else self.kind(text)
        except ValueError as error:
            raise ValueError(str(error) if self.parse is not None else
                             f"expected {self.requirement()}, got {text!r}") from None
        complaint = self.complaint(value)
        if complaint is not None:
            raise ValueError(f"must be {complaint}, got {text}")
        return value


def integer(low: int, high: int) -> Rule:
    return Rule(int, low, high)


def number(low: float, high: float, above_low: bool = False, below_high: bool = False) -> Rule:
    return Rule(float, low, high, above_low=above_low, below_high=below_high)


def one_of(*choices: str) -> Rule:
    return Rule(str, choices=tuple(choices))


def one_of_the_keys(names: dict) -> Rule:
    """A name that is a key of `names` when it is checked, not when the rule is made (a registry that grows)."""
    return Rule(str, choices=names.keys())


SWITCH = Rule(bool)
UNIT_INTERVAL = number(0, 1, below_high=True)


def option(default, rule: Rule, flag: str | None = None, help: str | None = None, shared=None,
           dest: str | None = None) -> Field:
    """A config field with its rule and, where the command line sets it, its flag and help (the default is added
    to the help). `shared` is the SharedOption that made it; `dest` the flag's attribute on the parsed arguments,
    where it is not the field's name (the prior's `epochs` is --prior-epochs, `prior_epochs`)."""
    return field(default=default, metadata={"rule": rule, "flag": flag, "help": help, "shared": shared, "dest": dest})


class SharedOption:
    """A setting several configs hold under one name and one flag (--k, --beta): each config makes its field by
    calling it. Fields of one name in two registered configs must both come from the same SharedOption
    (`check_shared_names`)."""

    def __init__(self, name: str, default, rule: Rule, flag: str, help: str):
        self.name, self.default, self.rule, self.flag, self.help = name, default, rule, flag, help

    def __call__(self) -> Field:
        return option(self.default, self.rule, self.flag, self.help, shared=self)


def shown(value) -> str:
    """A default as it would be typed: 8,8,8 for a tuple."""
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def option_fields(config_type) -> list[Field]:
    """The fields of a config made with `option`."""
    return [item for item in fields(config_type) if "rule" in item.metadata]


def flag_dest(item: Field, prefix: str = "") -> str:
    """The attribute of the parsed arguments that holds a field's flag: its `dest`, or prefix + its name."""
    return item.metadata["dest"] or prefix + item.name


def from_flags(config_type, args, prefix: str = "", **given):
    """The config of the parsed arguments `args` (any object with the flags' attributes): each option field from
    its flag's attribute where args has it, else its default; `given` sets fields by name outright."""
    values = {item.name: getattr(args, flag_dest(item, prefix)) for item in option_fields(config_type)
              if hasattr(args, flag_dest(item, prefix)) and item.name not in given}
    return config_type(**values, **given)


def check_options(config) -> None:
    """Hold every field of a config made with `option` to its rule: ValueError naming the first that breaks it."""
    for item in option_fields(config):
        item.metadata["rule"].check(item.name, getattr(config, item.name))


def check_shared_names(configs: dict[str, type]) -> None:
    """Refuse configs (by their owner's name) that would make one flag mean two settings: a field name or a flag
    two of them use must be one field (inherited) or come from one SharedOption in both. TypeError, naming both."""
    seen: dict[str, tuple[str, Field]] = {}
    for owner, config_type in configs.items():
        for item in option_fields(config_type):
            if item.metadata["shared"] is not None and item.name != item.metadata["shared"].name:
                raise TypeError(f"{owner}'s {config_type.__name__}.{item.name} is made with the SharedOption of "
                                f"{item.metadata['shared'].name}: name the field {item.metadata['shared'].name}")
            for key in (item.name, item.metadata["flag"]):
                if key is None:
                    continue
                if key in seen:
                    other, earlier = seen[key]
                    shared = item.metadata["shared"]
                    if item is not earlier and (shared is None or shared is not earlier.metadata["shared"]):
                        raise TypeError(
                            f"{owner}'s {config_type.__name__}.{item.name} ({item.metadata['flag']}) and {other}'s "
                            f"field {earlier.name} ({earlier.metadata['flag']}) share the name {key!r} but are not "
                            "one SharedOption: rename one, or make both with the same SharedOption")
                else:
                    seen[key] = (owner, item)
