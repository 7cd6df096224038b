"""Running the project's scripts from a benchmark as a user runs them: `python SCRIPT ...` in the repository root."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_script(command: list[str]) -> str:
    """The stdout of `python COMMAND` in the repository root; its stderr (progress bars, errors) goes to the
    terminal. A failure ends the benchmark, naming the command and its exit status."""
    result = subprocess.run([sys.executable, *command], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if result.returncode != 0:
        sys.exit(f"{Path(sys.argv[0]).name}: `{' '.join(command)}` failed with exit status {result.returncode} (its "
                 "error is above)")
    return result.stdout
