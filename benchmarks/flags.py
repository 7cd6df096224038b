"""What the benchmarks' command lines share beyond vqmnist.configuration.cli: a comma-separated list of values, each
held to a flag's argparse type, values given once, and an output folder checked before any work."""
import argparse
from pathlib import Path

from vqmnist.configuration.errors import UserError


def listed(kind):
    """An argparse type: comma-separated values, each read by the argparse type `kind` (whose one-line refusal
    names the value it refuses), none given twice, as a list."""
    def parse(text: str) -> list:
        values = [kind(item.strip()) for item in text.split(",")]
        check_once(values, text)
        return values

    return parse


def check_once(values: list, text: str, flag: str | None = None) -> None:
    """Refuse values of which one is given twice: a table's row, or a seed of a mean, would count it twice. Raises
    argparse's ArgumentTypeError without a flag (from within a type), else UserError naming it."""
    twice = sorted({str(value) for value in values if values.count(value) > 1})
    if twice:
        message = f"give each value once: {', '.join(twice)} {'is' if len(twice) == 1 else 'are'} given twice in {text}"
        if flag is None:
            raise argparse.ArgumentTypeError(message)
        raise UserError(f"{flag}: {message}")


def check_out_dir(out_dir: Path, flag: str = "--out-dir", what: str = "the tables and plots") -> None:
    """Refuse, before any work, an output folder that is a file or where no file can be written: it is made, and a
    probe file written there and removed (an existing folder may still refuse files)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{flag} {out_dir} is a file, not a folder: give a folder for {what}")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-test"
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise UserError(f"{flag} {out_dir}: cannot write to it ({error.strerror}): give a folder that can be "
                        "written to") from None
