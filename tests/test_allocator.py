"""glibc keeps freed memory for reuse during CPU training (mdr.utils.allocator); its speed is benchmarked in
benchmarks/train_e2e.py (docs/benchmarks.md), not timed here."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from mdr.utils import allocator

TAKES = "from mdr.utils.allocator import retain_freed_memory; print(retain_freed_memory(1024))"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_glibc_takes_both_settings() -> None:
    done = subprocess.run([sys.executable, "-c", TAKES], capture_output=True, text=True, check=True)  # own process
    assert done.stdout.strip() == "True"


def test_zero_or_another_c_library_keeps_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    assert allocator.retain_freed_memory(0) is False
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("musl", "1.2"))
    assert allocator.retain_freed_memory(1024) is False


def test_a_size_whose_bytes_overflow_mallopts_c_int_is_never_passed(monkeypatch: pytest.MonkeyPatch) -> None:
    """4096 MiB is 2**32 bytes, which ctypes wraps to 0 (glibc then maps every allocation: 5-6x slower steps)."""
    passed: list[int] = []

    class Libc:
        def __init__(self) -> None:
            self.mallopt = lambda option, value: passed.append(value) or 1

    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("glibc", "2.35"))
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda name: Libc())
    assert allocator.retain_freed_memory(allocator.MAX_RETAIN_MB) is True
    assert passed == [allocator.MAX_RETAIN_MB << 20] * 2 and passed[0] <= 2**31 - 1
    for overflowing in (2048, 4096):
        with pytest.raises(ValueError, match=r"train.cpu_malloc_retain_mb=\d+: at most 2047"):
            allocator.retain_freed_memory(overflowing)
    assert len(passed) == 2
