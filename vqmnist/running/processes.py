"""The processes of a run: one in a plain run, several under torchrun, and the collectives that keep them in step."""
import contextlib
import os
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from vqmnist.configuration.cli import resolve_device


class Processes(NamedTuple):
    """This process's place in the run: rank 0 of 1 in a plain run; under torchrun, one of world_size."""

    rank: int
    world_size: int
    device: torch.device


def distributed() -> bool:
    """True inside a process group of more than one process (torchrun)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if distributed() else 1


def rank() -> int:
    return dist.get_rank() if distributed() else 0


def sum_over_processes(tensor: Tensor) -> Tensor:
    """The sum of tensor over all processes, in place (nothing happens in a single process)."""
    if distributed():
        dist.all_reduce(tensor)
    return tensor


def from_process_zero(tensor: Tensor) -> Tensor:
    """Process 0's value of tensor, in place, on every process (nothing happens in a single process)."""
    if distributed():
        dist.broadcast(tensor, src=0)
    return tensor


@contextlib.contextmanager
def process_group(device_name: str):
    """Yield the Processes. Under torchrun join the process group first: gloo on CPU, nccl on CUDA with one GPU per
    process (LOCAL_RANK); a plain `python vqvae.py` is rank 0 of 1."""
    device = resolve_device(device_name)
    size = int(os.environ.get("WORLD_SIZE", "1"))
    # Under torchrun (LOCAL_RANK set) the group is joined even by a single process, so that one GPU proves nccl.
    if size == 1 and "LOCAL_RANK" not in os.environ:
        yield Processes(0, 1, device)
        return
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield Processes(dist.get_rank(), size, device)
    finally:
        dist.destroy_process_group()
