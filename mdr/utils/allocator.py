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
C_INT_MAX = 2**31 - 1
MAX_RETAIN_MB = C_INT_MAX >> 20
"""2047: the most MiB whose bytes fit the C ``int`` mallopt takes (2048 MiB would wrap to -2**31, 4096 to 0)."""


def retain_freed_memory(limit_mb: int) -> bool:
    """Serve allocations of up to ``limit_mb`` MiB from glibc's heap and keep up to that much freed memory there.

    Returns:
        True when glibc took both settings; False with ``limit_mb`` 0 or where the C library is not glibc.

    Raises:
        ValueError: ``limit_mb`` above :data:`MAX_RETAIN_MB` (its bytes do not fit mallopt's C ``int``).
    """
    if limit_mb > MAX_RETAIN_MB:
        raise ValueError(
            f"train.cpu_malloc_retain_mb={limit_mb}: at most {MAX_RETAIN_MB} (mallopt takes the bytes as a C int)"
        )
    if limit_mb <= 0 or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int  # ctypes wraps, unchecked
    size = int(limit_mb) << 20
    return bool(mallopt(M_MMAP_THRESHOLD, size)) and bool(mallopt(M_TRIM_THRESHOLD, size))
