"""glibc's malloc during CPU training: keep the buffers a step frees for the next step instead of mapping them
afresh, page faults and all (docs/benchmarks.md has the figures)."""

from __future__ import annotations

import ctypes
import platform

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
C_INT_MAX = 2**31 - 1
MAX_RETAIN_MB = C_INT_MAX >> 20  # 2047: the most MiB whose bytes fit mallopt's C int (4096 MiB would wrap to 0)


def retain_freed_memory(limit_mb: int) -> bool:
    """Serve allocations of up to ``limit_mb`` MiB from glibc's heap and keep up to that much freed memory there;
    True when glibc took both settings (False: ``limit_mb`` 0, or not glibc).

    Raises:
        ValueError: ``limit_mb`` above :data:`MAX_RETAIN_MB`.
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
