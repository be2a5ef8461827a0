"""Calibration of :mod:`mdr.reporting.statistics` on simulated sweeps (docs/statistics.md#calibration).

A simulated sweep has two parallel languages, proportions p, S seeds and Q queries of reciprocal ranks drawn
like MRR@100 on XQuAD-R, with query x cell redraws, seed x query redraws shared by a seed's cells with
probability ``seed_correlation``, a seed effect (SD ``seed_sd``, ``seed_sd_ratio``: its growth from p = 0 to 1),
optional Gaussian noise (``residual_sd``) and the true effect ``effect * p + curvature * (p^2 - p)`` (the second
language ``language_effect * p`` more), so the truth of every contrast is known. :func:`run` reports how often
each test rejects, how often its 95% interval covers the truth, and the verdict's rates.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from mdr.reporting.statistics import Cell, contrast, curvature_weights, decide, slope_weights, step_weights, tost

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


def _naive_reject(treated: np.ndarray, baseline: np.ndarray, alpha: float) -> bool:
    """The previous procedure's seed level alone: a paired t(S - 1) test on the per-seed deltas."""
    per_seed = treated.mean(axis=1) - baseline.mean(axis=1)  # (S,)
    return bool(scipy_stats.ttest_1samp(per_seed, 0.0).pvalue < alpha)


def evaluate(sample: np.ndarray, scenario: Scenario) -> dict[str, bool]:
    """Whether each reported test rejects (or covers the truth) on one simulated sweep, as the report runs it."""
    alpha, seeds, pool = scenario.alpha, tuple(range(scenario.seeds)), scenario.pool
    cells = [[Cell(seeds, sample[lang, k], group=str(lang)) for k in range(sample.shape[1])] for lang in range(2)]
    proportions = list(scenario.proportions)
    levels, last = len(proportions), len(proportions) - 1

    def against_zero(k: int) -> np.ndarray:
        weights = np.zeros(levels)
        weights[k], weights[0] = 1.0, -1.0
        return weights

    found: dict[str, bool] = {}
    delta = contrast(cells[0], against_zero(last), pool=pool)
    found["delta.reject"] = delta.p_value < alpha
    found["delta.cover"] = delta.ci_low <= scenario.effect <= delta.ci_high
    found["delta.naive_reject"] = _naive_reject(sample[0, last], sample[0, 0], alpha)
    found["tost.equivalent"] = tost(delta, scenario.margin) < alpha
    slope = contrast(cells[0], slope_weights(proportions), pool=pool)
    found["slope.reject"] = slope.p_value < alpha
    found["slope.cover"] = slope.ci_low <= scenario.effect <= slope.ci_high
    curvature = None
    if levels >= 3:
        curvature = contrast(cells[0], curvature_weights(proportions), pool=pool)
        found["curvature.reject"] = curvature.p_value < alpha
        found["curvature.cover"] = curvature.ci_low <= scenario.curvature <= curvature.ci_high
    deltas = [(p, contrast(cells[0], against_zero(k), pool=pool)) for k, p in enumerate(proportions) if k > 0]
    steps = [contrast(cells[0], w, pool=pool) for w in step_weights(levels)]
    decision = decide(slope, curvature, deltas, steps, scenario.margin, alpha)
    found["verdict.effect"] = decision.kind in {"hurts", "helps", "curved"}
    found["verdict.right_direction"] = decision.kind == ("helps" if scenario.effect > 0 else "hurts")
    found["verdict.equivalent"] = decision.kind == "equivalent"
    corners = [cells[0][last], cells[0][0], cells[1][last], cells[1][0]]
    interaction = contrast(corners, [1.0, -1.0, -1.0, 1.0], pool=pool)
    found["interaction.reject"] = interaction.p_value < alpha
    found["interaction.cover"] = interaction.ci_low <= -scenario.language_effect <= interaction.ci_high
    slope_weight = slope_weights(proportions)
    slope_difference = contrast([*cells[0], *cells[1]], [*slope_weight, *(-slope_weight)], pool=pool)
    found["slope_interaction.reject"] = slope_difference.p_value < alpha
    return found


def run(scenario: Scenario, simulations: int, seed: int = 0) -> dict[str, Any]:
    """Simulate ``simulations`` sweeps of ``scenario``; rates of each test with their Monte Carlo SE."""
    rng = np.random.default_rng(seed)
    counts: Counter[str] = Counter()
    for _ in range(simulations):
        counts.update(evaluate(simulate(scenario, rng), scenario))
    return {
        "scenario": asdict(scenario),
        "simulations": simulations,
        "rates": {name: count / simulations for name, count in sorted(counts.items())},
        "monte_carlo_se_at_5pct": math.sqrt(0.05 * 0.95 / simulations),
    }
