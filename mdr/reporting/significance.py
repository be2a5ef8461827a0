"""Seed-aware statistics for a sweep: a two-level bootstrap over training seeds and test queries, Holm, verdicts.

A sweep cell (model, stage, language, variant, proportion p) holds one run per training seed, each scored on
the same test queries: a (seeds x queries) table of per-query MRR@100. Seeds and queries are *crossed*, so
the error of a mean over that table has two parts, a seed part (about sd_seed^2 / S) and a query part (about
sd_query^2 / Q). A test over queries alone sees only the second: three seeds that move every query by +0.06,
+0.06 and -0.09 look like a sure +0.01 to it. Every estimate here is a linear contrast of cell means,
``sum_j w_j * mean(cell_j)`` (a delta against p = 0: w = (+1, -1); a least-squares slope in p: w_j =
(p_j - mean p) / sum (p - mean p)^2; a cell mean: w = (1,)), and its distribution is bootstrapped on both levels:

- **Seeds** (level 1): when every cell of the contrast has the same seeds, the contrast is paired by seed
  (one per-seed contrast table); otherwise the cells' seed levels are independent and combine as in
  Welch's test (Welch-Satterthwaite degrees of freedom).
  The seed-level deviation is drawn from the Student-t sampling distribution of a mean of S values,
  ``sd(seed means) / sqrt(S) * t(S - 1)``, not by resampling the S seeds: a resample of 2-5 values can never
  leave their observed range, so when seed noise dominates its 95% interval misses the truth in up to
  ``2 * 0.5^S`` of sweeps (25% at 3 seeds; on the seed-dominated synthetic null of ``tests/test_reporting.py``
  a plain seed-and-query resample calls 15% of nulls significant, this procedure at most 5-6%). With queries
  fixed this is exactly the t-test of the per-seed contrasts, and it approaches a seed resample as S grows.
- **Queries** (level 2): the per-query contrast (each cell averaged over its seeds) is resampled with
  replacement, the same queries for every cell, so cells are always paired by query (Sakai 2006,
  "Evaluating evaluation metrics based on the bootstrap", SIGIR). A seed mean already carries the
  seed-by-query residual (the seed level includes it, with its t tails), so the resampled per-query values
  are shrunk to leave it out, by the residual mean square of a two-way ANOVA of the (seeds x queries) table
  (the reflated/shrunken-residual bootstrap of multilevel models; Carpenter, Goldstein & Rasbash 2003).
  Seeds and queries are crossed factors, as in Owen's pigeonhole bootstrap (2007), with this t seed level.
- With one seed in a cell nothing estimates its seed variance: that cell contributes no seed level and its
  residual stays in the query level, the interval is from queries only, and the estimate says so
  (``seeds == 1``, ``seed_level`` ``none`` or ``partial``).

The interval is the percentile interval of the bootstrap distribution; the two-sided p-value inverts it,
``p = 2 * min(P*(theta* <= 0), P*(theta* >= 0))`` with (hits + 1) / (trials + 1), so p < alpha exactly when
0 lies outside the 1 - alpha interval (up to that +1), and p is never 0. Holm's step-down adjustment controls
the family-wise error over the proportions of one (model, stage, language, variant).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_CHUNK_VALUES = 2_000_000
"""Resampled (replicate, query) pairs held in memory at once."""


@dataclass(frozen=True)
class Cell:
    """One sweep cell: per-query scores of each seed's run, columns in a query order shared by all cells.

    Attributes:
        seeds: the training seed of each row of ``scores``.
        scores: (seeds, queries) per-query metric.
    """

    seeds: tuple[int, ...]
    scores: np.ndarray

    def __post_init__(self) -> None:
        if self.scores.ndim != 2 or self.scores.shape[0] != len(self.seeds) or self.scores.shape[1] == 0:
            raise ValueError(f"a cell needs a (seeds, queries) table with queries > 0, got {self.scores.shape}")


@dataclass(frozen=True)
class Estimate:
    """A contrast with its bootstrap interval and p-value.

    Attributes:
        value: the contrast on the observed data.
        ci_low / ci_high: the percentile interval.
        p_value: two-sided, for value = 0.
        seeds: seeds behind the seed level (paired: the shared seeds; else the fewest of any cell).
        queries: queries behind the query level.
        seed_level: ``paired`` (same seeds in every cell), ``unpaired``, ``partial`` (some cell has one
            seed: no seed level for it) or ``none`` (one seed everywhere: interval from queries only).
    """

    value: float
    ci_low: float
    ci_high: float
    p_value: float
    seeds: int
    queries: int
    seed_level: str


def _query_level(per_query: np.ndarray, shrink: float, trials: int, rng: np.random.Generator) -> np.ndarray:
    """(trials,) deviations of the mean of ``per_query`` (centred, times ``shrink``) over resampled queries."""
    count = per_query.size
    centred = (per_query - per_query.mean()) * shrink
    chunk = max(1, _CHUNK_VALUES // count)
    out = np.empty(trials)
    for start in range(0, trials, chunk):
        size = min(chunk, trials - start)
        rows = rng.integers(0, count, size=(size, count))  # (size, Q)
        out[start : start + size] = centred[rows].mean(axis=1)
    return out


def residual_mean_square(table: np.ndarray) -> float:
    """The seed-by-query residual mean square of a (seeds, queries) table (two-way ANOVA, no replication)."""
    seeds, queries = table.shape
    if seeds < 2 or queries < 2:
        return 0.0
    residual = table - table.mean(axis=1, keepdims=True) - table.mean(axis=0, keepdims=True) + table.mean()
    return float((residual**2).sum()) / ((seeds - 1) * (queries - 1))


def _seed_level(table: np.ndarray, trials: int, rng: np.random.Generator) -> np.ndarray:
    """(trials,) draws of sd(seed means) / sqrt(S) * t(S - 1) for a (seeds >= 2, queries) table."""
    seeds = table.shape[0]
    return table.mean(axis=1).std(ddof=1) / math.sqrt(seeds) * rng.standard_t(seeds - 1, size=trials)


def _welch_seed_level(cells: Sequence[tuple[Cell, float]], trials: int, rng: np.random.Generator) -> np.ndarray:
    """(trials,) draws of sum_j w_j * (seed-level deviation of cell j), independent cells (S_j >= 2 each).

    One t draw with the Welch-Satterthwaite degrees of freedom of the combined variance: calibrated where a
    sum of independent t draws would be conservative.
    """
    parts = [w * w * cell.scores.mean(axis=1).var(ddof=1) / len(cell.seeds) for cell, w in cells]  # var of each term
    total = float(sum(parts))
    if not cells or total == 0.0:
        return np.zeros(trials)
    dof = total**2 / sum(part**2 / (len(cell.seeds) - 1) for part, (cell, _) in zip(parts, cells))
    return math.sqrt(total) * rng.standard_t(dof, size=trials)


def _shrink(per_query: np.ndarray, residual_share: float) -> float:
    """Factor that leaves the query-level variance without the residual share the seed level carries."""
    spread = float(per_query.var(ddof=1)) if per_query.size > 1 else 0.0
    return math.sqrt(max(0.0, 1.0 - residual_share / spread)) if spread > 0 else 0.0


def bootstrap_contrast(
    cells: Sequence[Cell],
    weights: Sequence[float],
    trials: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """``sum_j weights[j] * mean(cells[j])`` with its two-level bootstrap interval and p-value (module docstring).

    Args:
        cells: cells on a common query order (same number of columns).
        weights: the contrast, one weight per cell.
        trials: bootstrap replicates.
        confidence: of the percentile interval.
        seed: of the bootstrap's random generator (results are reproducible).
    """
    if len(cells) != len(weights) or not cells:
        raise ValueError(f"{len(cells)} cells for {len(weights)} weights")
    queries = {cell.scores.shape[1] for cell in cells}
    if len(queries) != 1:
        raise ValueError(f"cells are not on one query order: {sorted(queries)} queries")
    active = [(cell, float(w)) for cell, w in zip(cells, weights) if w != 0]
    rng = np.random.default_rng(seed)
    value = sum(w * float(cell.scores.mean()) for cell, w in active)
    per_query = np.asarray(sum(w * cell.scores.mean(axis=0) for cell, w in active), dtype=np.float64)  # (Q,)
    seed_sets = {tuple(sorted(cell.seeds)) for cell, _ in active}
    shared = next(iter(seed_sets))
    if len(seed_sets) == 1 and len(shared) >= 2 and len(set(shared)) == len(shared):
        table = np.asarray(sum(w * cell.scores[np.argsort(cell.seeds)] for cell, w in active))  # (S, Q) per seed
        seed_draws = _seed_level(table, trials, rng)
        residual_share = residual_mean_square(table) / len(shared)
        seeds, level = len(shared), "paired"
    else:
        estimable = [(cell, w) for cell, w in active if len(cell.seeds) >= 2]
        seed_draws = _welch_seed_level(estimable, trials, rng)
        residual_share = sum(w * w * residual_mean_square(cell.scores) / len(cell.seeds) for cell, w in estimable)
        seeds = min(len(cell.seeds) for cell, _ in active)
        level = "unpaired" if len(estimable) == len(active) else ("partial" if estimable else "none")
    draws = value + _query_level(per_query, _shrink(per_query, residual_share), trials, rng) + seed_draws
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(draws, [tail, 1.0 - tail])
    below = (int((draws <= 0).sum()) + 1) / (trials + 1)
    above = (int((draws >= 0).sum()) + 1) / (trials + 1)
    return Estimate(
        value=float(value),
        ci_low=float(low),
        ci_high=float(high),
        p_value=min(1.0, 2.0 * min(below, above)),
        seeds=seeds,
        queries=queries.pop(),
        seed_level=level,
    )


def slope_weights(proportions: Sequence[float]) -> np.ndarray:
    """Weights that turn cell means into the least-squares slope of the mean in the proportion."""
    x = np.asarray(proportions, dtype=np.float64)
    centred = x - x.mean()
    spread = float((centred**2).sum())
    if len(x) < 2 or spread == 0:
        raise ValueError(f"a slope needs two distinct proportions, got {list(proportions)}")
    return centred / spread


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given)."""
    order = np.argsort(p_values, kind="stable")
    adjusted = np.empty(len(p_values))
    running = 0.0
    for position, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - position) * p_values[index]))
        adjusted[index] = running
    return adjusted.tolist()


def verdict(
    slope: Estimate | None,
    deltas: Sequence[tuple[float, float, float]],
    seeds: int,
    alpha: float = 0.05,
) -> str:
    """One line: do hard negatives help, hurt, or show no detectable effect?

    An *upward signal* is a slope interval above 0 or a proportion with Holm-adjusted p < ``alpha`` and a
    positive delta; a downward one likewise. Only upward signals: "help"; only downward: "hurt"; both:
    "mixed" (e.g. better at p = 0.5, worse at p = 1); none: "no detectable effect". Under no effect at
    all, a wrong "help"/"hurt" has probability at most 2 * alpha (the slope interval and the Holm family).

    Args:
        slope: the slope of the metric in p (None when fewer than two proportions were run).
        deltas: (proportion, delta against p = 0, Holm-adjusted p-value) per proportion.
        seeds: the seeds behind the tests (1: training-seed variance was not estimated).
    """
    up = [p for p, delta, p_holm in deltas if p_holm < alpha and delta > 0]
    down = [p for p, delta, p_holm in deltas if p_holm < alpha and delta < 0]
    rises = slope is not None and slope.ci_low > 0
    falls = slope is not None and slope.ci_high < 0
    helps, hurts = rises or bool(up), falls or bool(down)
    at = f"at {seeds} seed{'s' if seeds != 1 else ''}"
    if seeds == 1:
        at += " (training-seed variance not estimated: intervals from queries only)"
    if helps and not hurts:
        return f"hard negatives help {at}"
    if hurts and not helps:
        return f"hard negatives hurt {at}"
    if helps and hurts:
        parts = [f"better at p={p:g}" for p in up] + (["rising slope"] if rises else [])
        parts += [f"worse at p={p:g}" for p in down] + (["falling slope"] if falls else [])
        return f"mixed {at}: " + ", ".join(parts)
    return f"no detectable effect {at}"
