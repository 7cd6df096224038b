"""benchmarks/gpu_check.py's rehearsal on the CPU runs every step, so the script is ready for the few minutes a GPU is
lent: the machine, the tests, the speed table, a timed run and its scorecard, and torchrun joining a process group."""
import re
import subprocess
import sys
from pathlib import Path

from benchmarks import gpu_check

ROOT = Path(__file__).resolve().parent.parent


def test_the_rehearsal_runs_every_step_into_one_log(tmp_path):
    result = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--device", "cpu", "--quick", "--out-dir",
                             str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    log = (tmp_path / "gpu_check.log").read_text()
    assert result.returncode == 0, log[-3000:]
    ran = re.findall(r"^## (.+)$", log, flags=re.M)
    planned = [what for what, _, _ in gpu_check.steps(gpu_check.build_parser().parse_args(
        ["--device", "cpu", "--quick", "--out-dir", str(tmp_path)]), tmp_path)]
    assert ran == planned and log.count("(exit status 0, ") == len(planned)
    assert "\r" not in log, "progress bars are kept as their last state"
    assert "| autoencoder, project (as vqvae.py) |" in log and "test MSE ([0,1] pixels)" in log
    assert (tmp_path / "models" / "gpu_check" / "best.pt").is_file()
    assert (tmp_path / "models" / "gpu_check_ddp" / "last.pt").is_file()
