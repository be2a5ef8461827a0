"""Paired tests over queries: two-sided randomisation (sign-flip) test and Holm's step-down correction."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def paired_randomization_test(a: Sequence[float], b: Sequence[float], trials: int = 10_000, seed: int = 0) -> float:
    """Two-sided p-value for mean(a - b) = 0, flipping the sign of each paired difference at random.

    Uses ``(hits + 1) / (trials + 1)`` so the p-value is never 0 (Smucker, Allan & Carterette 2007).
    """
    diffs = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if diffs.size == 0:
        raise ValueError("no paired values")
    observed = abs(diffs.mean())
    signs = np.random.default_rng(seed).choice((-1.0, 1.0), size=(trials, diffs.size))
    permuted = np.abs((signs * diffs).mean(axis=1))
    hits = int((permuted >= observed - 1e-12).sum())
    return (hits + 1) / (trials + 1)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given)."""
    order = np.argsort(p_values)
    adjusted = np.empty(len(p_values))
    running = 0.0
    for position, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - position) * p_values[index]))
        adjusted[index] = running
    return adjusted.tolist()
