"""Which low precision the hardware runs fast: bf16 on CUDA cards that support it and on CPUs with bf16 units."""

from __future__ import annotations

from functools import cache
from typing import get_args

import torch
from lightning.fabric.connector import _PRECISION_INPUT

PRECISIONS = tuple(
    dict.fromkeys(["auto", *(str(value) for kind in get_args(_PRECISION_INPUT) for value in get_args(kind))])
)
"""``trainer.precision``: mdr's ``auto`` (:func:`resolve_precision`) or one Lightning takes."""
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
"""/proc/cpuinfo flags of x86 CPUs with native bf16 arithmetic (AMX tiles or AVX512-BF16 dot products)."""


@cache
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def bf16_supported(device: str | torch.device) -> bool:
    """True where bf16 matmuls run natively on ``device`` (and so faster than fp32)."""
    kind = torch.device(device).type
    if kind == "cuda":  # native only: V100 / T4 emulate bf16 (slower than fp32), which is_bf16_supported() counts
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if kind == "cpu":
        return any(flag in _cpu_flags() for flag in CPU_BF16_FLAGS)
    return False


def autocast_dtype(device: str | torch.device) -> torch.dtype | None:
    """``torch.bfloat16`` where :func:`bf16_supported`, else ``None`` (stay in fp32)."""
    return torch.bfloat16 if bf16_supported(device) else None


def resolve_precision(precision: str | int, accelerator: str) -> str:
    """Lightning's precision for ``trainer.precision`` (``auto``: ``bf16-mixed`` where supported, else ``32-true``)."""
    if str(precision) != "auto":
        return str(precision)
    device = (
        "cuda" if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()) else "cpu"
    )
    return "bf16-mixed" if bf16_supported(device) else "32-true"
