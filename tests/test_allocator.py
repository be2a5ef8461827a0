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
