"""Training speed: the reference's plain loop against the project's loop, same model and batch size, one process.

Usage (from the repository root):
    python benchmarks/speed.py                         # CPU, default architecture and batch size, 200 steps each
    python benchmarks/speed.py --device cuda --amp     # GPU; --amp and --compile apply to the project's loop
    python benchmarks/speed.py --full                  # also time a whole default `python vqvae.py` run

(a) plain: torchvision's MNIST turned into tensors image by image (ToTensor, Normalize) by a DataLoader, the loss
    read back with .item() every step, as the reference does;
(b) project: the uint8 training set in memory on the device, batches cut by index and scaled on the fly, and
    the training step of vqvae.py (utils.training_step), which never waits for the device.
Both train a fresh model of the default configuration; each is timed over --steps steps after --warmup steps.
"""
import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchvision import datasets, transforms  # noqa: E402

from modules import VQVAE, VQVAEConfig  # noqa: E402
from utils import epoch_batches, load_mnist, training_step  # noqa: E402

TRAIN_IMAGES = 60_000  # the reference trains on the whole training set each epoch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fresh_model(device: torch.device):
    torch.manual_seed(0)
    model = VQVAE(VQVAEConfig()).to(device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    return model, optimizer


def time_steps(step_batches, warmup: int, steps: int, device: torch.device) -> float:
    """Seconds for `steps` calls of the iterator's steps after `warmup` untimed ones."""
    for _ in range(warmup):
        next(step_batches)
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        next(step_batches)
    synchronize(device)
    return time.perf_counter() - started


def plain_loop(data_folder: Path, batch_size: int, device: torch.device):
    dataset = datasets.MNIST(str(data_folder), train=True, download=False, transform=transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))]))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0,
                        pin_memory=device.type == "cuda")
    model, optimizer = fresh_model(device)
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


def project_loop(images: torch.Tensor, batch_size: int, device: torch.device, amp: bool, compile: bool):
    images = images.to(device)
    model, optimizer = fresh_model(device)
    forward = torch.compile(model) if compile else model
    generator = torch.Generator().manual_seed(0)
    while True:
        for batch in epoch_batches(images, batch_size, generator, num_workers=0):
            training_step(model, optimizer, batch, amp=amp, forward=forward)
            yield


def main(args) -> None:
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    images, _ = load_mnist(args.data_folder, train=True)  # also checks and decompresses the files
    print(f"device {device}, {torch.get_num_threads()} CPU threads, default model, batch {args.batch_size}, "
          f"{args.steps} timed steps after {args.warmup}")
    plain = time_steps(plain_loop(Path(args.data_folder), args.batch_size, device), args.warmup, args.steps,
                       device)
    project = time_steps(project_loop(images, args.batch_size, device, args.amp, args.compile), args.warmup,
                         args.steps, device)
    plain_speed = args.steps * args.batch_size / plain
    project_speed = args.steps * args.batch_size / project
    options = " ".join(flag for flag, on in (("--amp", args.amp), ("--compile", args.compile)) if on)
    print(f"| loop | img/s | s per {TRAIN_IMAGES:,}-image epoch |")
    print("|---|---|---|")
    print(f"| plain (torchvision ToTensor/Normalize, DataLoader, .item() per step) | {plain_speed:,.0f} | "
          f"{TRAIN_IMAGES / plain_speed:.1f} |")
    print(f"| project (in-memory uint8, index batches, no sync){' ' + options if options else ''} | "
          f"{project_speed:,.0f} | {TRAIN_IMAGES / project_speed:.1f} |")
    print(f"speed-up: {project_speed / plain_speed:.2f}x; the plain loop needs {10 * TRAIN_IMAGES / plain_speed:.0f} s "
          "for 10 epochs")
    if args.full:
        command = [sys.executable, "vqvae.py", "--output-folder", "speed/full", "--overwrite", "--device",
                   args.device]
        started = time.perf_counter()
        subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(f"full default run (`{' '.join(command[1:])}`): {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Images per second of the plain loop and of the project's loop.")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="device (default: cpu)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size of both loops (default: 64)")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per loop (default: 200)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps first (default: 20)")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast in the project's loop")
    parser.add_argument("--compile", action="store_true", help="torch.compile in the project's loop")
    parser.add_argument("--data-folder", default="data", help="MNIST folder (default: data)")
    parser.add_argument("--full", action="store_true", help="also time a whole default vqvae.py run")
    main(parser.parse_args())
