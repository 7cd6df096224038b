"""Where a training loop's time goes: torch.profiler's operator table, and the prior's attention timed both ways."""
import statistics
import time

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from benchmarks.loops import Loop
from prior import PriorConfig, attention


def print_profile(loop: Loop, steps: int, rows: int = 15) -> None:
    """torch.profiler over `steps` steps of the loop (after a few untimed ones): its costliest operators."""
    for _ in range(5):
        next(loop.steps)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as profiler:
        for _ in range(steps):
            next(loop.steps)
    print(f"{loop.name}, {steps} steps, {torch.get_num_threads()} CPU threads:")
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def fused_attention(q, k, v, future):
    """torch's fused attention with its own causal mask."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def attention_milliseconds(attend, dtype: torch.dtype, batch_size: int, config: PriorConfig,
                           repeats: int = 20) -> float:
    """Median milliseconds of one forward and backward of `attend` at the prior's shapes (one layer)."""
    length, head_width = config.grid_size ** 2, config.width // config.num_heads
    q, k, v = (torch.randn(batch_size, config.num_heads, length, head_width, dtype=dtype, requires_grad=True)
               for _ in range(3))
    future = torch.ones(length, length, dtype=torch.bool).triu(1)
    times = []
    for repeat in range(repeats + 3):
        started = time.perf_counter()
        attend(q, k, v, future).sum().backward()
        if repeat >= 3:
            times.append(1000 * (time.perf_counter() - started))
    return statistics.median(times)


def print_attention(batch_size: int) -> None:
    """The prior's attention written out against torch's fused one, in float32 and bf16, forward and backward."""
    config = PriorConfig()
    print(f"the prior's attention, one layer, {batch_size} grids of {config.grid_size ** 2} positions, "
          f"{config.num_heads} heads, forward and backward, median of 20")
    print("| attention | fp32 ms | bf16 ms |")
    print("|---|---|---|")
    for name, attend in (("written out, prior.attention", attention),
                         ("F.scaled_dot_product_attention(is_causal=True)", fused_attention)):
        fp32, bf16 = (attention_milliseconds(attend, dtype, batch_size, config)
                      for dtype in (torch.float32, torch.bfloat16))
        print(f"| {name} | {fp32:.2f} | {bf16:.2f} |", flush=True)
