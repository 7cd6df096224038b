"""The CUDA path checked in one go, for the few minutes a GPU is lent: every step's output to one log.

Usage (from the repository root):
    python -m benchmarks.gpu_check --out-dir gpu_check              # on a GPU: at most about 8 minutes
    python -m benchmarks.gpu_check --device cpu --quick --out-dir x  # the rehearsal on the CPU, at a tiny size

Steps, each a command as a user types it, its output and exit status and seconds in OUT_DIR/gpu_check.log:
the machine (nvidia-smi, torch and CUDA versions); the test suite, CUDA tests included (--quick: tests/test_cuda.py's
CUDA tests alone); benchmarks/speed.py on the device; a timed default run of vqvae.py (autoencoder, then prior) and
evaluate.py on it; one epoch under torchrun --nproc_per_node=1, which joins a process group (nccl on CUDA, gloo on
the CPU). --quick's runs train, validate and test on a few hundred digits of the committed MNIST files, written as
one's own files (--dataset own) into OUT_DIR/quick_data. A failed step does not stop the others; the exit status is
1 if any failed. tests/test_gpu_check.py runs the rehearsal, so the script cannot rot.
"""
import gzip
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from benchmarks.flags import check_out_dir
from vqmnist.configuration.cli import ArgumentParser, resolve_device, run_cli
# --quick's run: 128 training images (two steps) and 128 to validate, a tiny model and prior, on the first digits of the
# committed MNIST files (QUICK_DIGITS), which main() writes as one's own files (--dataset own) into OUT_DIR/quick_data:
# scoring the whole 59,872-image validation split and the 10,000 test digits took most of the rehearsal's time.
QUICK_DIGITS = {"train": 256, "t10k": 200}
QUICK_AUTOENCODER = ["--dataset", "own", "--num-epochs", "1", "--val-size", "128", "--hidden-size", "8", "--k", "16"]
QUICK_PRIOR = ["--prior-epochs", "1", "--prior-width", "16", "--prior-layers", "1", "--prior-heads", "2"]


def steps(args, out_dir: Path) -> list[tuple[str, list[str], Path]]:
    """(what, command, the folder it runs in) of each step, in order: the tests and the speed table run in the
    repository, the runs in out_dir, where their models/ and logs/ go."""
    python, device, data = sys.executable, ["--device", args.device], ["--data-folder", str(ROOT / "data")]
    autoencoder, prior = (QUICK_AUTOENCODER, QUICK_PRIOR) if args.quick else ([], [])
    run_data = ["--data-folder", str(quick_data_folder(out_dir))] if args.quick else data
    versions = ("import torch; print('torch', torch.__version__, '| CUDA', torch.version.cuda, '| GPU', "
                "torch.cuda.get_device_name() if torch.cuda.is_available() else 'none')")
    return [
        ("the machine", ["nvidia-smi"] if shutil.which("nvidia-smi") else ["echo", "nvidia-smi: not on this machine"],
         out_dir),
        ("torch and CUDA", [python, "-c", versions], out_dir),
        # --quick: tests/test_cuda.py's CUDA tests alone (they skip without a GPU); the suite runs its CPU cases.
        ("the tests, CUDA tests included", [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                                            *([str(ROOT / "tests" / "test_cuda.py"), "-m", "cuda"] if args.quick
                                              else [])], ROOT),
        ("each training loop's speed", [python, "-m", "benchmarks.speed", *device, *data,
                                        *(["--steps", "2", "--warmup", "1", "--repeats", "1", "--batch-size", "8",
                                           "--prior-batch-size", "8"] if args.quick else [])], ROOT),
        ("a timed default run: the autoencoder, then the prior",
         [python, str(ROOT / "vqvae.py"), *device, *run_data, *autoencoder, *prior, "--output-folder", "gpu_check",
          "--overwrite"],
         out_dir),
        ("its scorecard", [python, str(ROOT / "evaluate.py"), *device, *run_data, "--model",
                           "models/gpu_check/best.pt", *(["--samples", "65"] if args.quick else [])], out_dir),
        ("one epoch under torchrun, in a process group (nccl on CUDA)",
         [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", str(ROOT / "vqvae.py"),
          *device, *run_data, *(autoencoder or ["--num-epochs", "1"]), "--prior-epochs", "0", "--output-folder",
          "gpu_check_ddp", "--overwrite"], out_dir),
    ]


def quick_data_folder(out_dir: Path) -> Path:
    return out_dir / "quick_data"


def write_quick_data(folder: Path) -> None:
    """The first QUICK_DIGITS digits of each split of the committed MNIST files (data/MNIST/raw/*.gz), as one's own
    MNIST-format files in folder: the IDX header with the count changed, then that many images or labels."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in QUICK_DIGITS.items():
        for kind, header_size, item_size in (("images-idx3", 16, 28 * 28), ("labels-idx1", 8, 1)):
            name = f"{split}-{kind}-ubyte"
            with gzip.open(ROOT / "data" / "MNIST" / "raw" / f"{name}.gz") as source:
                header, items = bytearray(source.read(header_size)), source.read(count * item_size)
            struct.pack_into(">I", header, 4, count)  # the count follows the 4-byte magic number
            (folder / name).write_bytes(bytes(header) + items)


def main(args) -> int:
    resolve_device(args.device)
    check_out_dir(Path(args.out_dir), what="gpu_check.log and the runs' folders")
    out_dir = Path(args.out_dir).resolve()
    if args.quick:
        write_quick_data(quick_data_folder(out_dir))
    log_path = out_dir / "gpu_check.log"
    # The runs' folders (models/, logs/) go to out_dir; the project is found on PYTHONPATH.
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    failed = []
    with open(log_path, "w") as log:
        for what, command, folder in steps(args, out_dir):
            started = time.perf_counter()
            log.write(f"## {what}\n$ {' '.join(command)}\n")
            log.flush()
            result = subprocess.run(command, cwd=folder, env=environment, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, errors="replace")
            seconds = time.perf_counter() - started
            # A progress bar redraws its line after each \r: the log keeps what it showed last.
            log.writelines(line.rsplit("\r", 1)[-1] + "\n" for line in result.stdout.splitlines())
            log.write(f"(exit status {result.returncode}, {seconds:.1f} s)\n\n")
            log.flush()
            print(f"gpu_check: {what}: exit status {result.returncode}, {seconds:.1f} s", file=sys.stderr, flush=True)
            if result.returncode != 0:
                failed.append(what)
    print(f"gpu_check: {len(failed)} of the steps failed{': ' + ', '.join(failed) if failed else ''}; the log is "
          f"{log_path}", file=sys.stderr)
    return 1 if failed else 0


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description="Check the CUDA path in one go, into one log.")
    parser.add_argument("--out-dir", required=True, help="folder for gpu_check.log and the runs' folders (required)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="device to check (default: cuda)")
    parser.add_argument("--quick", action="store_true",
                        help="every step at a tiny size, and only tests/test_cuda.py: the rehearsal (default: off)")
    return parser


if __name__ == "__main__":
    run_cli(lambda args: sys.exit(main(args)), build_parser().parse_args())
