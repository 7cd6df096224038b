"""Training speed: the reference's plain loop against the project's loop, same model and batch size, one process.

Usage (from the repository root; `python -m benchmarks.speed` is the same):
    python benchmarks/speed.py                        # CPU, default architecture and batch size, 3 x 200 steps each
    python benchmarks/speed.py --ablation             # each speed setting of the project's loop alone, fresh processes
    python benchmarks/speed.py --time-to-quality      # test MSE of the default run stopped at the plain loop's epoch
    python benchmarks/speed.py --full                 # also time a whole default `python vqvae.py` run (with its prior)
    python benchmarks/speed.py --device cuda          # GPU; --no-amp, --compile, ... change the project's loop

(a) plain: torchvision's MNIST turned into tensors image by image (ToTensor, Normalize) by a DataLoader, Adam,
    the loss read back with .item() every step, as the reference does;
(b) project: what vqvae.py does: the uint8 training set in memory on the device, batches cut by index and scaled
    on the fly, bf16 autocast where the device computes bf16 in hardware (training.native_bf16), channels-last
    weights, fused Adam, glibc keeping freed memory (training.keep_freed_memory), and the training step
    training.training_step, which never waits for the device.
Both train a fresh model of the default configuration. Each loop is timed --repeats times over --steps steps after
--warmup untimed ones, the plain loop first (the memory setting of (b) lasts for the process); the median counts.

--time-to-quality: the reference needs 10 of the plain loop's epochs, so a tenth of its time is one plain-loop
epoch. It runs the default `python vqvae.py --time-limit T` in a subprocess, with T that epoch's time less the
seconds Python needs to start, then `python evaluate.py --samples 0` on the last.pt it stopped with. Where it
stopped, and how long each part of a full run took, come from the run's models/NAME/run.json.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if __name__ == "__main__" and not __package__:
    # Run as `python benchmarks/speed.py`: start again as `python -m benchmarks.speed` in the repository root,
    # where the project's modules are importable.
    os.chdir(ROOT)
    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.speed", *sys.argv[1:]])

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchvision import datasets, transforms  # noqa: E402

from data import epoch_batches, load_mnist  # noqa: E402
from modules import VQVAE, VQVAEConfig  # noqa: E402
from run_log import read_run_figures  # noqa: E402
from training import keep_freed_memory, make_optimizer, native_bf16, training_step  # noqa: E402

TRAIN_IMAGES = 60_000  # the reference trains on the whole training set each epoch
REFERENCE_TEST_MSE = 0.0069  # the reference repository's test MSE after its 10 epochs, as the brief measured it

# (name, flags of this script): each row changes one setting of the project's loop, in a fresh process.
ABLATION = [
    ("project loop, as vqvae.py runs it", []),
    ("without bf16 autocast (--no-amp)", ["--no-amp"]),
    ("without channels-last", ["--no-channels-last"]),
    ("without fused Adam", ["--no-fused-adam"]),
    ("without keeping freed memory", ["--no-keep-freed-memory"]),
    ("one thread", ["--threads", "1"]),
    ("with --compile", ["--compile"]),
]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(step_batches, args, device: torch.device) -> float:
    """Median img/s over --repeats timings of --steps steps, after --warmup untimed ones."""
    for _ in range(args.warmup):
        next(step_batches)
    speeds = []
    for _ in range(args.repeats):
        synchronize(device)
        started = time.perf_counter()
        for _ in range(args.steps):
            next(step_batches)
        synchronize(device)
        speeds.append(args.steps * args.batch_size / (time.perf_counter() - started))
    return statistics.median(speeds)


def plain_loop(data_folder: Path, batch_size: int, device: torch.device):
    dataset = datasets.MNIST(str(data_folder), train=True, download=False, transform=transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))]))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0,
                        pin_memory=device.type == "cuda")
    torch.manual_seed(0)
    model = VQVAE(VQVAEConfig()).to(device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    while True:
        for x, _ in loader:
            x = x.to(device)
            x_recon, quantized = model(x)
            loss = torch.nn.functional.mse_loss(x_recon, x) + quantized.codebook_loss + quantized.commitment_loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()
            yield


def project_loop(images: torch.Tensor, batch_size: int, device: torch.device, args):
    """The set-up and steps of vqvae.py's training loop."""
    images = images.to(device)
    torch.manual_seed(0)
    model = VQVAE(VQVAEConfig()).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if args.compile else model
    optimizer = make_optimizer(model, lr=1e-3, fused=args.fused_adam)
    generator = torch.Generator().manual_seed(0)
    while True:
        for batch in epoch_batches(images, batch_size, generator, num_workers=0):
            training_step(model, optimizer, batch, amp=args.amp, forward=forward)
            yield


def run_script(command: list[str], show_progress: bool = False) -> str:
    """The script's stdout. With show_progress its stderr (progress bars, errors) goes to the terminal."""
    result = subprocess.run([sys.executable, *command], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=None if show_progress else subprocess.PIPE, text=True)
    if result.returncode != 0:
        sys.exit(f"speed.py: `{' '.join(command)}` failed" + ("" if show_progress else f":\n{result.stderr[-2000:]}"))
    return result.stdout


def ablation(args) -> None:
    """Each row in its own process, since keep_freed_memory cannot be undone within one."""
    common = ["-m", "benchmarks.speed", "--device", args.device, "--batch-size", str(args.batch_size), "--steps",
              str(args.steps), "--warmup", str(args.warmup), "--repeats", str(args.repeats), "--data-folder",
              args.data_folder]
    plain = float(re.search(r"plain loop: ([\d.]+)", run_script(common + ["--loop", "plain"])).group(1))
    print(f"device {args.device}, default model, batch {args.batch_size}, median of {args.repeats} x {args.steps} "
          f"steps, each row a fresh process")
    print("| loop | img/s | vs the plain loop |")
    print("|---|---|---|")
    print(f"| plain (torchvision ToTensor/Normalize, DataLoader, .item() per step) | {plain:,.0f} | 1.00x |")
    for name, flags in ABLATION:
        if args.device == "cpu" or "--threads" not in flags:
            output = run_script(common + ["--loop", "project", *flags])
            speed = float(re.search(r"project loop: ([\d.]+)", output).group(1))
            print(f"| {name} | {speed:,.0f} | {speed / plain:.2f}x |", flush=True)


def stopped_at_limit(model_dir) -> str | None:
    """Where the run in model_dir stopped at its --time-limit, as its run.json says; None if it did not."""
    stopped = read_run_figures(model_dir).get("stopped")
    return stopped["where"] if stopped and stopped["cause"] == "time-limit" else None


def part_seconds(model_dir) -> tuple[float, float]:
    """How long the autoencoder and the prior of the run in model_dir trained, as its run.json says."""
    figures = read_run_figures(model_dir)
    return figures["autoencoder"]["seconds"], figures["prior"]["seconds"]


def full_run(device: str) -> None:
    command = ["vqvae.py", "--output-folder", "speed/full", "--overwrite", "--device", device]
    started = time.perf_counter()
    run_script(command, show_progress=True)  # a long run: its progress bars show
    seconds = time.perf_counter() - started
    autoencoder, prior = part_seconds(ROOT / "models" / "speed" / "full")
    print(f"full default run (`{' '.join(command)}`): {seconds:.1f} s, of which the autoencoder {autoencoder:.0f} s "
          f"and the prior {prior:.0f} s (as vqvae.py records them in run.json)")


def time_to_quality(plain_speed: float, device: str) -> None:
    budget = TRAIN_IMAGES / plain_speed  # a tenth of the plain loop's 10 epochs
    started = time.perf_counter()
    run_script(["-c", "import vqvae"])
    startup = time.perf_counter() - started  # Python and the imports, before vqvae.py's clock starts
    command = ["vqvae.py", "--output-folder", "speed/time_to_quality", "--overwrite", "--device", device,
               "--time-limit", f"{budget - startup:.1f}"]
    started = time.perf_counter()
    stopped = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    where = stopped_at_limit(ROOT / "models" / "speed" / "time_to_quality")
    if stopped.returncode != 0 or where is None:
        sys.exit(f"speed.py: `{' '.join(command)}` did not stop at its time limit:\n{stopped.stderr[-2000:]}")
    scores = json.loads(run_script(["evaluate.py", "--model", "models/speed/time_to_quality/last.pt", "--device",
                                    device, "--samples", "0", "--json"]))
    verdict = "reached" if scores["test_mse"] <= REFERENCE_TEST_MSE and seconds <= budget else "NOT reached"
    print(f"time to quality: `{' '.join(command)}` stopped {where} after {seconds:.1f} s of wall time "
          f"(budget {budget:.1f} s, a tenth of the plain loop's 10 epochs); test MSE {scores['test_mse']:.5f} "
          f"against the reference's 10-epoch {REFERENCE_TEST_MSE}: {verdict}")


def main(args) -> None:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if args.amp is None:
        args.amp = native_bf16(device)
    if args.ablation:
        ablation(args)
        return
    images, _ = load_mnist(args.data_folder, train=True)  # also checks and decompresses the files
    if args.loop != "project":
        plain = images_per_second(plain_loop(Path(args.data_folder), args.batch_size, device), args, device)
        print(f"plain loop: {plain:.1f} img/s", flush=True)
    if args.loop != "plain":
        if args.keep_freed_memory:
            keep_freed_memory()
        project = images_per_second(project_loop(images, args.batch_size, device, args), args, device)
        print(f"project loop: {project:.1f} img/s", flush=True)
    if args.loop != "both":
        return
    options = ", ".join(name for name, on in (("bf16 autocast", args.amp), ("--compile", args.compile)) if on)
    print(f"device {device}, {torch.get_num_threads()} CPU threads, default model, batch {args.batch_size}, median "
          f"of {args.repeats} x {args.steps} steps after {args.warmup}")
    print(f"| loop | img/s | s per {TRAIN_IMAGES:,}-image epoch |")
    print("|---|---|---|")
    print(f"| plain (torchvision ToTensor/Normalize, DataLoader, .item() per step) | {plain:,.0f} | "
          f"{TRAIN_IMAGES / plain:.1f} |")
    print(f"| project (as vqvae.py{': ' + options if options else ''}) | {project:,.0f} | "
          f"{TRAIN_IMAGES / project:.1f} |")
    print(f"speed-up: {project / plain:.2f}x; the plain loop needs {10 * TRAIN_IMAGES / plain:.0f} s for 10 epochs",
          flush=True)
    if args.time_to_quality:
        time_to_quality(plain, args.device)
    if args.full:
        full_run(args.device)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Images per second of the plain loop and of the project's loop.")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="device (default: cpu)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size of both loops (default: 64)")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per repeat (default: 200)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps first (default: 20)")
    parser.add_argument("--repeats", type=int, default=3, help="timings per loop; the median counts (default: 3)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads; 0: PyTorch's choice (default: 0)")
    parser.add_argument("--data-folder", default="data", help="MNIST folder (default: data)")
    parser.add_argument("--loop", choices=["both", "plain", "project"], default="both",
                        help="which loops to time (default: both)")
    project = parser.add_argument_group("the project's loop (defaults: as vqvae.py)")
    project.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                         help="bf16 autocast (default: as vqvae.py, on where the device computes bf16 in hardware)")
    project.add_argument("--compile", action="store_true", help="torch.compile (default: off)")
    project.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                         help="channels-last weights and activations (default: on)")
    project.add_argument("--fused-adam", action=argparse.BooleanOptionalAction, default=True,
                         help="Adam's fused implementation (default: on)")
    project.add_argument("--keep-freed-memory", action=argparse.BooleanOptionalAction, default=True,
                         help="utils.keep_freed_memory (default: on)")
    runs = parser.add_argument_group("what else to run")
    runs.add_argument("--ablation", action="store_true",
                      help="time the plain loop, then each row of ABLATION in its own process, and print the table")
    runs.add_argument("--time-to-quality", action="store_true",
                      help="stop a default vqvae.py run at a tenth of the plain loop's 10-epoch time; its test MSE")
    runs.add_argument("--full", action="store_true", help="also time a whole default vqvae.py run")
    return parser


if __name__ == "__main__":
    main(build_parser().parse_args())
