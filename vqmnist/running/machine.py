"""How training uses the machine: the CPU thread count, chosen while training runs so that a core another
program keeps busy does not stall it; bf16 autocast where it is native; glibc keeping freed memory."""
import ctypes
import platform
import statistics
import time
from collections.abc import Callable

import torch

PROBE_PERIOD_SECONDS = 20.0
PROBE_STEPS = 8
DEFAULT_THREADS = torch.get_num_threads()  # PyTorch's choice, one per core, before a chooser changes it


def candidate_counts(threads: int) -> list[int]:
    """The thread counts to try, most first: all of them, one fewer (another program busy on one core), half."""
    return sorted({threads, max(1, threads - 1), max(1, threads // 2)}, reverse=True)


class ThreadChooser:
    """Every PROBE_PERIOD_SECONDS, time PROBE_STEPS training steps at each candidate thread count, then train on
    at the fastest.

    Alone, every core is the fastest. Beside a program busy on one core, each parallel operation waits for its
    thread on that core, which runs a fraction of the time, so every small kernel of a step waits (docs/speed.md);
    one thread fewer leaves that core to the other program. The probing steps are ordinary training steps. `clock`
    and `set_threads` are for the tests; on a GPU it does nothing.
    """

    def __init__(self, enabled: bool, threads: int | None = None, clock: Callable[[], float] = time.perf_counter,
                 set_threads: Callable[[int], None] = torch.set_num_threads):
        self.counts = candidate_counts(threads or DEFAULT_THREADS)
        self.enabled = enabled and len(self.counts) > 1
        self.clock, self.set_threads = clock, set_threads
        self.chosen = self.counts[0]
        self.next_probe = clock()  # probe in the first steps
        self.probing: int | None = None  # the index in counts being timed, None between probes
        self.step_times: dict[int, float] = {}  # the median seconds of a step at each count, at the last probe
        self.durations: list[float] = []
        self.last: float | None = None  # when the last timed step ended

    @classmethod
    def for_training(cls, device, threads_flag: int) -> "ThreadChooser":
        """The chooser of a training loop on `device` under vqvae.py's --threads: on for the CPU when it is 0."""
        return cls(device.type == "cpu" and not threads_flag)

    def step_done(self) -> None:
        """Call after each training step; CPU steps are synchronous, so the clock times them."""
        if not self.enabled:
            return
        now = self.clock()
        if self.probing is None:
            if now >= self.next_probe:
                self._try(0, now)
            return
        # The first step at a new count pays for the change, so it is not timed; the median leaves out a step that
        # also logged or collected garbage.
        if self.last is not None:
            self.durations.append(now - self.last)
        self.last = now
        if len(self.durations) < PROBE_STEPS:
            return
        self.step_times[self.counts[self.probing]] = statistics.median(self.durations)
        if self.probing + 1 < len(self.counts):
            self._try(self.probing + 1, now)
            return
        self.chosen = min(self.step_times, key=self.step_times.get)
        self.set_threads(self.chosen)
        self.probing, self.next_probe = None, now + PROBE_PERIOD_SECONDS

    def _try(self, index: int, now: float) -> None:
        self.probing, self.durations, self.last = index, [], None
        self.set_threads(self.counts[index])


def native_bf16(device: torch.device) -> bool:
    """Whether the device computes in bf16 in hardware, so that bf16 autocast is faster: CUDA GPUs from Ampere on,
    x86 CPUs with AVX512-BF16 or AMX. Elsewhere bf16 is converted in software, which can be slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def keep_freed_memory() -> None:
    """Let glibc's malloc keep freed memory for the next allocation instead of handing it back to the kernel.

    By default every freed block of more than 128 KB goes back (munmap, or a trim of the heap), so each training
    step on the CPU page-faults its activations in again; keeping it makes CPU training faster (docs/speed.md,
    `benchmarks/speed.py --ablation`). jemalloc and tcmalloc behave like this out of the box. A no-op on systems
    without glibc."""
    if platform.libc_ver()[0] != "glibc":
        return
    mallopt = ctypes.CDLL("libc.so.6").mallopt
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    mallopt(m_mmap_threshold, 32 << 20)  # glibc's largest allowed: blocks up to 32 MB come from the heap
    mallopt(m_trim_threshold, 1 << 30)  # the heap's free top is returned only beyond 1 GB
