"""Training speed against the machine's own limit: each loop's images or tokens per second and FLOP rate, the
plain PyTorch loop of the same model beside it, and what fraction of this machine's matrix-product rate it reaches.

Usage (from the repository root):
    python -m benchmarks.speed                        # CPU: the matrix-product limits and the four loops' table
    python -m benchmarks.speed --beside-busy          # also each project loop beside one busy single-threaded process
    python -m benchmarks.speed --ablation             # each speed setting of the autoencoder's loop alone
    python -m benchmarks.speed --profile prior-project --steps 20   # where a loop's time goes (torch.profiler)
    python -m benchmarks.speed --time-to-quality      # test MSE of the default run stopped at the plain loop's epoch
    python -m benchmarks.speed --full                 # also time a whole default `python vqvae.py` run (with its prior)
    python -m benchmarks.speed --device cuda          # GPU; --no-amp, --compile, ... change the autoencoder's loop

The limit: the median GFLOP/s of --repeats products of two 2048 x 2048 matrices, in float32 and in bf16. A loop's
FLOPs per step are counted by torch.utils.flop_counter.FlopCounterMode over one step (matrix products and
convolutions, forward and backward), its GFLOP/s is that times its steps per second, and its fraction is of the
limit of the precision its products run in.
The loops (benchmarks/loops.py), each a fresh model of the default shape at its default batch size:
- autoencoder, plain: the reference's loop, torchvision's MNIST made into tensors image by image (ToTensor,
  Normalize) by a DataLoader, Adam, the loss read back with .item() every step;
- autoencoder, project: vqvae.py's, the uint8 training set in memory, batches cut by index, bf16 autocast where
  the device computes bf16 in hardware (machine.native_bf16), channels-last, fused Adam, glibc keeping freed
  memory (machine.keep_freed_memory), and autoencoder_task.training_step, which never waits for the device;
- prior, plain: the prior's size as nn.TransformerEncoder with a causal mask, AdamW, .item() every step, float32;
- prior, project: vqvae.py's, prior.CodePrior and prior_task.prior_step (bf16 autocast as above).
Each is timed --repeats times over --steps steps after --warmup untimed ones, the plain loops first (the memory
setting lasts for the process); the median counts. --beside-busy then times each project loop again while a
process spins on one core, as another program on a shared laptop would.

--time-to-quality: the reference needs 10 of the plain loop's epochs, so a tenth of its time is one plain-loop
epoch. It runs the default `python vqvae.py --time-limit T` in a subprocess, with T that epoch's time less the
seconds Python needs to start, then `python evaluate.py --samples 0` on the last.pt it stopped with. Where it
stopped, and how long each part of a full run took, come from the run's models/NAME/run.json. The runs read
--data-folder, as the loops do.

Every flag, the device and the data are checked before anything is timed; a flag that cannot apply to what runs
(--beside-busy with one --loop, a loop's setting with --ablation, which sets them itself) is refused.
"""
import argparse
import contextlib
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent

import torch
from torch.utils import flop_counter

from benchmarks.loops import Loop, ProjectSettings, autoencoder_plain, autoencoder_project, prior_plain, prior_project
from benchmarks.profiling import print_attention, print_profile
from benchmarks.scripts import run_script
from prior import PriorConfig
from vqmnist.configuration.cli import (ArgumentParser, add_device_flag, integer, refuse_inapplicable, resolve_device,
                                       run_cli)
from vqmnist.configuration.errors import UserError
from vqmnist.configuration.limits import MAX_BATCH, MAX_THREADS
from vqmnist.io.data import load_mnist
from vqmnist.running.machine import ThreadChooser, keep_freed_memory, native_bf16
from vqmnist.running.prior_task import PriorSettings
from vqmnist.running.run_log import read_run_figures

TRAIN_IMAGES = 60_000  # the reference trains on the whole training set each epoch
REFERENCE_TEST_MSE = 0.0069  # the reference repository's test MSE after its 10 epochs, as the brief measured it
MATMUL_SIZE = 2048
LOOPS = ["autoencoder-plain", "prior-plain", "autoencoder-project", "prior-project"]  # the plain ones first
MAX_STEPS = 1_000_000  # timed or untimed steps of one loop: days of the slowest one
MAX_REPEATS = 1000

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


class Measured(NamedTuple):
    """A loop's median speed and the FLOPs of one of its steps."""

    loop: Loop
    steps_per_second: float
    flops_per_step: int

    @property
    def items_per_second(self) -> float:
        return self.steps_per_second * self.loop.items_per_step

    @property
    def gflops(self) -> float:
        return self.steps_per_second * self.flops_per_step / 1e9


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(dtype: torch.dtype, device: torch.device, repeats: int) -> float:
    """The median GFLOP/s of a MATMUL_SIZE-square matrix product in dtype: the machine's limit for that precision."""
    a, b = (torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device).to(dtype) for _ in range(2))
    a @ b
    rates = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        a @ b
        synchronize(device)
        rates.append(2 * MATMUL_SIZE ** 3 / (time.perf_counter() - started) / 1e9)
    return statistics.median(rates)


def steps_per_second(loop: Loop, args, device: torch.device) -> float:
    """Median steps per second over --repeats timings of --steps steps, after --warmup untimed ones."""
    for _ in range(args.warmup):
        next(loop.steps)
    speeds = []
    for _ in range(args.repeats):
        synchronize(device)
        started = time.perf_counter()
        for _ in range(args.steps):
            next(loop.steps)
        synchronize(device)
        speeds.append(args.steps / (time.perf_counter() - started))
    return statistics.median(speeds)


def count_cpu_attention() -> None:
    """Give FlopCounterMode torch's own attention formulas for the CPU's fused attention, which it lacks (the plain
    prior's nn.TransformerEncoder runs it): the products of softmax(q k^T) v, forward and backward."""
    forward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
    if forward in flop_counter.flop_registry:
        return

    @flop_counter.register_flop_formula(forward)
    def forward_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

    @flop_counter.register_flop_formula(backward)
    def backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def measure(loop: Loop, args, device: torch.device) -> Measured:
    """The loop's speed, then the FLOPs of one more of its steps as FlopCounterMode counts them."""
    speed = steps_per_second(loop, args, device)
    count_cpu_attention()
    with flop_counter.FlopCounterMode(display=False) as counter:
        next(loop.steps)
    return Measured(loop, speed, counter.get_total_flops())


@contextlib.contextmanager
def busy_process():
    """Another program on the machine: a Python process spinning on one core until the block ends."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # let it start spinning
        yield
    finally:
        busy.kill()
        busy.wait()


def ablation(args) -> None:
    """Each row in its own process, since keep_freed_memory cannot be undone within one."""
    common = ["-m", "benchmarks.speed", "--device", args.device, "--batch-size", str(args.batch_size), "--steps",
              str(args.steps), "--warmup", str(args.warmup), "--repeats", str(args.repeats), "--data-folder",
              data_folder(args)]
    output = run_script(common + ["--loop", "autoencoder-plain"], show_progress=False)
    plain = float(re.search(r"autoencoder-plain: ([\d.]+)", output).group(1))
    print(f"device {args.device}, default model, batch {args.batch_size}, median of {args.repeats} x {args.steps} "
          f"steps, each row a fresh process")
    print("| loop | img/s | vs the plain loop |")
    print("|---|---|---|")
    print(f"| plain (torchvision ToTensor/Normalize, DataLoader, .item() per step) | {plain:,.0f} | 1.00x |")
    for name, flags in ABLATION:
        if args.device == "cpu" or "--threads" not in flags:
            output = run_script(common + ["--loop", "autoencoder-project", *flags], show_progress=False)
            speed = float(re.search(r"autoencoder-project: ([\d.]+)", output).group(1))
            print(f"| {name} | {speed:,.0f} | {speed / plain:.2f}x |", flush=True)


def stopped_at_limit(model_dir) -> str | None:
    """Where the run in model_dir stopped at its --time-limit, as its run.json says; None if it did not."""
    stopped = read_run_figures(model_dir).get("stopped")
    return stopped["where"] if stopped and stopped["cause"] == "time-limit" else None


def part_seconds(model_dir) -> tuple[float, float]:
    """How long the autoencoder and the prior of the run in model_dir trained, as its run.json says."""
    figures = read_run_figures(model_dir)
    return figures["autoencoder"]["seconds"], figures["prior"]["seconds"]


def data_folder(args) -> str:
    """--data-folder as the scripts run in the repository root find it."""
    return str(Path(args.data_folder).resolve())


def full_run(args) -> None:
    command = ["vqvae.py", "--output-folder", "speed/full", "--overwrite", "--device", args.device, "--data-folder",
               data_folder(args)]
    started = time.perf_counter()
    run_script(command)  # a long run: its progress bars show
    seconds = time.perf_counter() - started
    autoencoder, prior = part_seconds(ROOT / "models" / "speed" / "full")
    print(f"full default run (`{' '.join(command)}`): {seconds:.1f} s, of which the autoencoder {autoencoder:.0f} s "
          f"and the prior {prior:.0f} s (as vqvae.py records them in run.json)")


def time_to_quality(plain_speed: float, args) -> None:
    budget = TRAIN_IMAGES / plain_speed  # a tenth of the plain loop's 10 epochs
    device = args.device
    started = time.perf_counter()
    run_script(["-c", "import vqvae"], show_progress=False)
    startup = time.perf_counter() - started  # Python and the imports, before vqvae.py's clock starts
    if budget - startup < 0.1:
        raise UserError(f"the plain loop's epoch ({budget:.1f} s) is over before Python has started vqvae.py "
                        f"({startup:.1f} s): no run fits it, so --time-to-quality has nothing to measure")
    command = ["vqvae.py", "--output-folder", "speed/time_to_quality", "--overwrite", "--device", device,
               "--data-folder", data_folder(args), "--time-limit", f"{budget - startup:.1f}"]
    started = time.perf_counter()
    run_script(command, show_progress=False)  # a stop at the time limit exits with status 0
    seconds = time.perf_counter() - started
    where = stopped_at_limit(ROOT / "models" / "speed" / "time_to_quality")
    if where is None:
        raise UserError(f"`{' '.join(command)}` finished before its time limit, so nothing was stopped at it")
    scores = json.loads(run_script(["evaluate.py", "--model", "models/speed/time_to_quality/last.pt", "--device",
                                    device, "--samples", "0", "--json"], show_progress=False))
    verdict = "reached" if scores["test_mse"] <= REFERENCE_TEST_MSE and seconds <= budget else "NOT reached"
    print(f"time to quality: `{' '.join(command)}` stopped {where} after {seconds:.1f} s of wall time "
          f"(budget {budget:.1f} s, a tenth of the plain loop's 10 epochs); test MSE {scores['test_mse']:.5f} "
          f"against the reference's 10-epoch {REFERENCE_TEST_MSE}: {verdict}")


def build_loop(name: str, images: torch.Tensor, args, device: torch.device) -> Loop:
    prior_config = PriorConfig()
    if name == "autoencoder-plain":
        try:
            return autoencoder_plain(Path(args.data_folder), args.batch_size, device)
        except RuntimeError as error:  # torchvision's: the unpacked files are not in DATA/MNIST/raw
            raise UserError(f"torchvision's MNIST, which the plain loop reads, cannot read "
                            f"{Path(args.data_folder) / 'MNIST' / 'raw'} ({error}): let the checked files be unpacked "
                            "there (a writable --data-folder)") from None
    if name == "autoencoder-project":
        settings = ProjectSettings(args.amp, args.channels_last, args.fused_adam, args.compile)
        return autoencoder_project(images, args.batch_size, device, settings)
    if name == "prior-plain":
        return prior_plain(prior_config, args.prior_batch_size, device)
    return prior_project(prior_config, args.prior_batch_size, device, args.amp)


def print_table(results: dict[str, Measured], limits: dict[str, float], args, device: torch.device) -> None:
    print(f"device {device}, {torch.get_num_threads()} CPU threads, default models, batch {args.batch_size} "
          f"(autoencoder) and {args.prior_batch_size} grids (prior), median of {args.repeats} x {args.steps} steps "
          f"after {args.warmup}; limit: {MATMUL_SIZE}-square matrix products, {limits['fp32']:,.1f} GFLOP/s in fp32 "
          # one decimal: bf16 without hardware support runs below one GFLOP/s
          + (f"and {limits['bf16']:,.1f} in bf16" if "bf16" in limits else "(no loop ran in bf16)"))
    print("| loop | precision | speed | GFLOP per step | GFLOP/s | of the limit | vs the plain loop |")
    print("|---|---|---|---|---|---|---|")
    for name, measured in results.items():
        loop = measured.loop
        plain = results[name.replace("project", "plain")]
        print(f"| {loop.name} | {loop.precision} | {measured.items_per_second:,.0f} {loop.unit}/s | "
              f"{measured.flops_per_step / 1e9:.2f} | {measured.gflops:,.0f} | "
              f"{measured.gflops / limits[loop.precision]:.0%} | "
              f"{measured.items_per_second / plain.items_per_second:.2f}x |")
    autoencoder = results["autoencoder-plain"].items_per_second
    print(f"the plain autoencoder loop needs {10 * TRAIN_IMAGES / autoencoder:.0f} s for 10 epochs", flush=True)


def with_chooser(loop: Loop) -> Loop:
    """The loop with vqvae.py's thread choice (--threads 0): a ThreadChooser told of every step."""
    chooser = ThreadChooser(enabled=True)

    def steps():
        for _ in loop.steps:
            chooser.step_done()
            yield

    return loop._replace(steps=steps())


def beside_busy(results: dict[str, Measured], args, device: torch.device) -> None:
    """Each project loop timed again while a busy single-threaded process shares the cores: at the process's
    thread count, and with the thread count chosen as vqvae.py chooses it."""
    threads = torch.get_num_threads()
    print("beside one busy single-threaded process (`python -c 'while True: pass'`); time per epoch against alone")
    print(f"| loop | alone, {threads} threads | beside it, {threads} threads | beside it, threads chosen as vqvae.py "
          "(--threads 0) |")
    print("|---|---|---|---|")
    for name in ("autoencoder-project", "prior-project"):
        alone = results[name]
        with busy_process():
            fixed = steps_per_second(alone.loop, args, device)
            chosen = steps_per_second(with_chooser(alone.loop), args, device)
        torch.set_num_threads(threads)
        unit, per_step = alone.loop.unit, alone.loop.items_per_step
        print(f"| {alone.loop.name} | {alone.items_per_second:,.0f} {unit}/s | {fixed * per_step:,.0f} {unit}/s, "
              f"{alone.steps_per_second / fixed:.2f}x | {chosen * per_step:,.0f} {unit}/s, "
              f"{alone.steps_per_second / chosen:.2f}x |", flush=True)


def check_flags(args) -> None:
    """Refuse, before anything is timed, flags that cannot apply to what this run does."""
    if args.ablation:
        refuse_inapplicable(args, ["loop", "profile", "beside_busy", "time_to_quality", "full", "prior_batch_size",
                                   "amp", "compile", "channels_last", "fused_adam", "keep_freed_memory", "threads"],
                            "with --ablation, which times the autoencoder's loops alone and sets each row's settings "
                            "itself")
        return
    if args.profile:
        refuse_inapplicable(args, ["loop", "beside_busy", "time_to_quality", "full", "warmup", "repeats"],
                            "with --profile, which profiles --steps steps of one loop after 5 untimed ones")
    elif args.loop != "all":
        refuse_inapplicable(args, ["beside_busy", "time_to_quality", "full"],
                            f"with --loop {args.loop}, which times that loop alone, without the table of all "
                            "four")
    running = [args.profile] if args.profile else LOOPS if args.loop == "all" else [args.loop]
    what = f"to the loop{'s' * (len(running) > 1)} {' and '.join(running)}"
    if not any(name.startswith("autoencoder") for name in running):
        refuse_inapplicable(args, ["batch_size"], what)
    if not any(name.startswith("prior") for name in running):
        refuse_inapplicable(args, ["prior_batch_size"], what)
    if "autoencoder-project" not in running:
        refuse_inapplicable(args, ["compile", "channels_last", "fused_adam"], f"{what}, only to the autoencoder's "
                            "project loop")
    if not any(name.endswith("project") for name in running):
        refuse_inapplicable(args, ["amp", "keep_freed_memory"], f"{what}, only to the project's loops")


def main(args) -> None:
    device = resolve_device(args.device)
    check_flags(args)
    images, _ = load_mnist(args.data_folder, train=True)  # also checks the files and unpacks them
    # torchvision's MNIST (the plain loop) wants the test files unpacked beside the training ones.
    load_mnist(args.data_folder, train=False)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if args.amp is None:
        args.amp = native_bf16(device)
    if args.ablation:
        ablation(args)
        return
    if args.profile:
        if args.keep_freed_memory and "project" in args.profile:
            keep_freed_memory()
        print_profile(build_loop(args.profile, images, args, device), args.steps)
        if args.profile.startswith("prior"):
            print_attention(args.prior_batch_size)
        return
    names = LOOPS if args.loop == "all" else [args.loop]
    results = {}
    for name in names:  # the plain loops first: keep_freed_memory lasts for the process
        if name == "autoencoder-project" and args.keep_freed_memory:
            keep_freed_memory()
        measured = results[name] = measure(build_loop(name, images, args, device), args, device)
        print(f"{name}: {measured.items_per_second:.1f} {measured.loop.unit}/s", flush=True)
    if args.loop != "all":
        return
    # bf16's limit only where a loop ran in it: without hardware bf16 one product takes tens of seconds.
    limits = {precision: matmul_gflops(dtype, device, args.repeats)
              for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))
              if any(measured.loop.precision == precision for measured in results.values()) or precision == "fp32"}
    print_table(results, limits, args, device)
    if args.beside_busy:
        beside_busy(results, args, device)
    if args.time_to_quality:
        time_to_quality(results["autoencoder-plain"].items_per_second, args)
    if args.full:
        full_run(args)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description="Each training loop's speed and FLOP rate against the machine's.")
    add_device_flag(parser)
    parser.add_argument("--batch-size", type=integer(1, MAX_BATCH), default=64,
                        help=f"images per autoencoder batch, 1 to {MAX_BATCH:,} (default: 64)")
    parser.add_argument("--prior-batch-size", type=integer(1, MAX_BATCH), default=PriorSettings.batch_size,
                        help=f"code grids per prior batch, 1 to {MAX_BATCH:,} (default: {PriorSettings.batch_size})")
    parser.add_argument("--steps", type=integer(1, MAX_STEPS), default=200,
                        help=f"timed steps per repeat, 1 to {MAX_STEPS:,} (default: 200)")
    parser.add_argument("--warmup", type=integer(0, MAX_STEPS), default=20,
                        help=f"untimed steps first, 0 to {MAX_STEPS:,} (default: 20)")
    parser.add_argument("--repeats", type=integer(1, MAX_REPEATS), default=3,
                        help=f"timings per loop, 1 to {MAX_REPEATS:,}; the median counts (default: 3)")
    parser.add_argument("--threads", type=integer(0, MAX_THREADS), default=0,
                        help=f"CPU threads, 1 to {MAX_THREADS}; 0: PyTorch's choice (default: 0)")
    parser.add_argument("--data-folder", default="data", help="MNIST folder (default: data)")
    parser.add_argument("--loop", choices=["all", *LOOPS], default="all",
                        help="time one loop and print its speed alone, or all and the table (default: all)")
    project = parser.add_argument_group("the project's loops (defaults: as vqvae.py)")
    project.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                         help="bf16 autocast (default: as vqvae.py, on where the device computes bf16 in hardware)")
    project.add_argument("--compile", action="store_true", help="torch.compile the autoencoder (default: off)")
    project.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                         help="channels-last weights and activations of the autoencoder (default: on)")
    project.add_argument("--fused-adam", action=argparse.BooleanOptionalAction, default=True,
                         help="Adam's fused implementation for the autoencoder (default: on)")
    project.add_argument("--keep-freed-memory", action=argparse.BooleanOptionalAction, default=True,
                         help="machine.keep_freed_memory (default: on)")
    runs = parser.add_argument_group("what else to run")
    runs.add_argument("--profile", choices=LOOPS, default=None,
                      help="instead of the table, torch.profiler's costliest operators over --steps steps of one "
                           "loop (for a prior, then its attention timed both ways)")
    runs.add_argument("--beside-busy", action="store_true",
                      help="time each project loop again beside a busy single-threaded process")
    runs.add_argument("--ablation", action="store_true",
                      help="time the plain autoencoder loop, then each row of ABLATION in its own process")
    runs.add_argument("--time-to-quality", action="store_true",
                      help="stop a default vqvae.py run at a tenth of the plain loop's 10-epoch time; its test MSE")
    runs.add_argument("--full", action="store_true", help="also time a whole default vqvae.py run")
    return parser


if __name__ == "__main__":
    run_cli(main, build_parser().parse_args())
