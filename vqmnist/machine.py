"""How training uses the machine's hardware: bf16 autocast where it is native, and glibc keeping freed memory."""
import ctypes
import platform

import torch


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
