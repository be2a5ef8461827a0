"""glibc's malloc during CPU training: keep freed memory for reuse instead of handing it back to the kernel.

A training step allocates and frees the same large buffers every step (activations, autocast's bf16 copies, the
word-embedding gradient). With glibc's defaults a buffer above its mmap threshold is a fresh mapping each time and
each of its pages faults in again; where the kernel must first reclaim page cache (a machine writing checkpoints),
those faults stall the step. docs/benchmarks.md has the figures.
"""

from __future__ import annotations

import ctypes
import platform

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def retain_freed_memory(limit_mb: int) -> bool:
    """Serve allocations of up to ``limit_mb`` MiB from glibc's heap and keep up to that much freed memory there.

    Returns:
        True when glibc took both settings; False with ``limit_mb`` 0 or where the C library is not glibc.
    """
    if limit_mb <= 0 or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    size = int(limit_mb) << 20
    return bool(libc.mallopt(M_MMAP_THRESHOLD, size)) and bool(libc.mallopt(M_TRIM_THRESHOLD, size))
