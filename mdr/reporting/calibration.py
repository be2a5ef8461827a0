"""Calibration of :mod:`mdr.reporting.statistics` on simulated sweeps with realistic variance components.

A simulated sweep has two languages (parallel: the same queries, with correlated difficulty), a set of
proportions p, S seeds and Q queries. A run's per-query score is a reciprocal rank:

- each query has a base reciprocal rank drawn from a fixed distribution (mean .765, SD .329, like MRR@100
  on XQuAD-R: rank 1 for 64% of queries, ranks 2-50 or none for the rest); the second language keeps a query's
  base with probability ``language_overlap`` and redraws it otherwise;
- query x cell interaction: each cell redraws a query's score with probability ``query_interaction``
  (per-query effects correlated across cells, not identical);
- seed x query noise: each run redraws a query's score with probability ``seed_query_noise``; with
  probability ``seed_correlation`` the redraw (whether and what) is the seed's own, shared by every cell of that
  seed (runs of one seed share initialisation and data order);
- a seed effect, normal with SD ``seed_sd``, shifts every query of a run; its correlation across cells of one
  seed is ``seed_correlation``; ``seed_sd_ratio`` != 1 makes the seed level unequal across cells (the stress case
  for pooling it): the per-cell part's SD grows by that factor from p = 0 to p = 1, its mean square kept;
- ``residual_sd`` > 0 adds Gaussian seed x query noise with that SD to every score of every run (the other
  noise shape: dense, light-tailed, where the redraws are sparse and heavy-tailed);
- the true effect ``effect * p + curvature * (p^2 - p)`` is added to every query of a cell (both languages;
  the second language gets ``language_effect * p`` more). Redraws keep the expected score, so the truth of every
  contrast is known exactly: delta at p = 1 = ``effect``, slope = ``effect`` (p^2 - p has no least-squares
  slope on levels symmetric about .5), quadratic term = ``curvature``, language x p delta at p = 1 =
  ``-language_effect``.

:func:`run` simulates a scenario and reports, for each test, how often it rejects (type-I error under a
null, power under an effect), how often its 95% interval covers the truth, and the verdict's error rate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from mdr.reporting.statistics import (
    Cell,
    contrast,
    curvature_weights,
    decide,
    slope_weights,
    step_weights,
    tost,
)

RECIPROCAL_RANKS = np.array([1, 1 / 2, 1 / 3, 1 / 4, 1 / 5, 1 / 7, 1 / 10, 1 / 20, 1 / 50, 0.0])
RANK_PROBABILITIES = np.array([0.64, 0.17, 0.07, 0.03, 0.02, 0.02, 0.015, 0.015, 0.01, 0.01])


@dataclass(frozen=True)
class Scenario:
    """Variance components and true effects of a simulated sweep (module docstring)."""

    seeds: int = 3
    seed_sd: float = 0.005
    queries: int = 635
    proportions: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    effect: float = 0.0
    curvature: float = 0.0
    language_effect: float = 0.0
    query_interaction: float = 0.02
    seed_query_noise: float = 0.05
    seed_correlation: float = 0.5
    language_overlap: float = 0.5
    margin: float = 0.01
    alpha: float = 0.05
    seed_sd_ratio: float = 1.0
    residual_sd: float = 0.0
    pool: bool = True


_CUMULATIVE = np.cumsum(RANK_PROBABILITIES)[:-1]


def _draw_scores(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return RECIPROCAL_RANKS[np.searchsorted(_CUMULATIVE, rng.random(shape), side="right")]


def _redraw(rng: np.random.Generator, values: np.ndarray, probability: float) -> np.ndarray:
    return np.where(rng.random(values.shape) < probability, _draw_scores(rng, values.shape), values)


def simulate(scenario: Scenario, rng: np.random.Generator) -> np.ndarray:
    """(languages=2, levels, seeds, queries) reciprocal ranks of one simulated sweep."""
    levels, seeds, queries = len(scenario.proportions), scenario.seeds, scenario.queries
    base = _draw_scores(rng, (queries,))
    base = np.stack([base, _redraw(rng, base, 1.0 - scenario.language_overlap)])  # (2, Q)
    cell = _redraw(rng, np.broadcast_to(base[:, None, :], (2, levels, queries)), scenario.query_interaction)
    run = np.broadcast_to(cell[:, :, None, :], (2, levels, seeds, queries))  # (2, K, S, Q)
    shared = rng.random((2, 1, seeds, queries)) < scenario.seed_correlation  # the seed's own redraw
    hit = np.where(
        shared,
        rng.random((2, 1, seeds, queries)) < scenario.seed_query_noise,
        rng.random(run.shape) < scenario.seed_query_noise,
    )
    fresh = np.where(shared, _draw_scores(rng, (2, 1, seeds, queries)), _draw_scores(rng, run.shape))
    scores = np.where(hit, fresh, run)
    rho = scenario.seed_correlation
    p = np.asarray(scenario.proportions)
    scale = scenario.seed_sd_ratio**p  # (K,) per-cell SD of the cell's own seed part
    scale = scale / math.sqrt(float((scale**2).mean()))
    seed_effect = math.sqrt(rho) * rng.normal(size=(2, 1, seeds, 1)) + math.sqrt(1 - rho) * scale[
        None, :, None, None
    ] * rng.normal(size=(2, levels, seeds, 1))
    truth = scenario.effect * p + scenario.curvature * (p * p - p)  # (K,)
    shift = np.stack([truth, truth + scenario.language_effect * p])[:, :, None, None]  # (2, K, 1, 1)
    noise = scenario.residual_sd * rng.normal(size=scores.shape) if scenario.residual_sd > 0 else 0.0
    return scores + scenario.seed_sd * seed_effect + shift + noise


@dataclass
class _Tally:
    """Counts of rejections and coverage per test."""

    trials: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, hit: bool) -> None:
        self.counts[name] = self.counts.get(name, 0) + int(hit)


def _naive_reject(treated: np.ndarray, baseline: np.ndarray, alpha: float) -> bool:
    """The previous procedure's seed level alone: a paired t(S - 1) test on the per-seed deltas."""
    per_seed = treated.mean(axis=1) - baseline.mean(axis=1)  # (S,)
    return bool(scipy_stats.ttest_1samp(per_seed, 0.0).pvalue < alpha)


def evaluate(sample: np.ndarray, scenario: Scenario, tally: _Tally) -> None:
    """Run every reported test on one simulated sweep and count rejections and coverage.

    As the report does: a language's deltas, slope, quadratic term and steps pool their seed level over the
    language's levels; a language x p contrast over its four cells; the low- vs high-resource slope over all.
    """
    alpha, seeds, pool = scenario.alpha, tuple(range(scenario.seeds)), scenario.pool
    cells = [[Cell(seeds, sample[lang, k], group=str(lang)) for k in range(sample.shape[1])] for lang in range(2)]
    proportions = list(scenario.proportions)
    levels, last = len(proportions), len(proportions) - 1

    def against_zero(k: int) -> np.ndarray:
        weights = np.zeros(levels)
        weights[k], weights[0] = 1.0, -1.0
        return weights

    delta = contrast(cells[0], against_zero(last), pool=pool)
    tally.add("delta.reject", delta.p_value < alpha)
    tally.add("delta.cover", delta.ci_low <= scenario.effect <= delta.ci_high)
    tally.add("delta.naive_reject", _naive_reject(sample[0, last], sample[0, 0], alpha))
    tally.add("tost.equivalent", tost(delta, scenario.margin) < alpha)
    slope = contrast(cells[0], slope_weights(proportions), pool=pool)
    tally.add("slope.reject", slope.p_value < alpha)
    tally.add("slope.cover", slope.ci_low <= scenario.effect <= slope.ci_high)
    curvature = None
    if levels >= 3:
        curvature = contrast(cells[0], curvature_weights(proportions), pool=pool)
        tally.add("curvature.reject", curvature.p_value < alpha)
        tally.add("curvature.cover", curvature.ci_low <= scenario.curvature <= curvature.ci_high)
    deltas = [(p, contrast(cells[0], against_zero(k), pool=pool)) for k, p in enumerate(proportions) if k > 0]
    steps = [contrast(cells[0], w, pool=pool) for w in step_weights(levels)]
    decision = decide(slope, curvature, deltas, steps, scenario.margin, alpha)
    tally.add("verdict.effect", decision.kind in {"hurts", "helps", "curved"})
    right = "helps" if scenario.effect > 0 else "hurts"
    tally.add("verdict.right_direction", decision.kind == right)
    tally.add("verdict.equivalent", decision.kind == "equivalent")
    corners = [cells[0][last], cells[0][0], cells[1][last], cells[1][0]]
    interaction = contrast(corners, [1.0, -1.0, -1.0, 1.0], pool=pool)
    tally.add("interaction.reject", interaction.p_value < alpha)
    tally.add("interaction.cover", interaction.ci_low <= -scenario.language_effect <= interaction.ci_high)
    slope_weight = slope_weights(proportions)
    slope_difference = contrast([*cells[0], *cells[1]], [*slope_weight, *(-slope_weight)], pool=pool)
    tally.add("slope_interaction.reject", slope_difference.p_value < alpha)
    tally.trials += 1


def run(scenario: Scenario, simulations: int, seed: int = 0) -> dict[str, Any]:
    """Simulate ``simulations`` sweeps of ``scenario``; rates of each test with their Monte Carlo SE."""
    rng = np.random.default_rng(seed)
    tally = _Tally()
    for _ in range(simulations):
        evaluate(simulate(scenario, rng), scenario, tally)
    rates = {name: count / tally.trials for name, count in sorted(tally.counts.items())}
    return {
        "scenario": asdict(scenario),
        "simulations": tally.trials,
        "rates": rates,
        "monte_carlo_se_at_5pct": math.sqrt(0.05 * 0.95 / tally.trials),
    }


def grid(
    seeds: Sequence[int] = (3, 5),
    seed_sds: Sequence[float] = (0.005, 0.010),
    effects: Sequence[float] = (0.0, 0.01, 0.02, 0.04),
    base: Scenario | None = None,
) -> list[Scenario]:
    """Scenarios over seeds x seed SD x true effect (the null first)."""
    base = base or Scenario()
    return [replace(base, seeds=s, seed_sd=sd, effect=e) for s in seeds for sd in seed_sds for e in effects]
