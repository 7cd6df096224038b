"""Running the project's scripts from a benchmark as a user runs them: `python SCRIPT ...` in the repository root."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_script(command: list[str], show_progress: bool = True) -> str:
    """The stdout of `python COMMAND` in the repository root. Its stderr (progress bars, errors) goes to the
    terminal, or without show_progress is kept back and shown only if it fails. A failure ends the benchmark,
    naming the command and its exit status."""
    result = subprocess.run([sys.executable, *command], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=None if show_progress else subprocess.PIPE, text=True)
    if result.returncode != 0:
        error = "its error is above" if show_progress else f"its error:\n{result.stderr[-2000:]}"
        sys.exit(f"{Path(sys.argv[0]).name}: `{' '.join(command)}` failed with exit status {result.returncode} "
                 f"({error})")
    return result.stdout
