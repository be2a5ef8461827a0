"""Calibration of the sweep statistics (mdr.reporting.statistics) on simulated sweeps: prints JSON.

    nice python benchmarks/calibration.py                  # full settings (several minutes on 2 cores)
    python benchmarks/calibration.py --null 400 --effect 200 --seeds 3   # a quick look
    python benchmarks/calibration.py --table calibration.json  # docs/statistics.md's table from a saved run

For each scenario (seeds S, seed SD, true effect; Q = 635 queries, p in {0, .25, .5, .75, 1}, two parallel
languages; the variance components of :class:`Scenario`) it reports how often each test rejects (type-I error
where the truth is 0, power where it is not), how often each 95% interval covers the truth, how often the verdict
claims an effect / the right direction / equivalence, and how often TOST claims |delta| < 0.01 when the true
delta is exactly 0.01 (TOST's type-I error). ``--correlation`` sets the correlation of a seed's runs across cells
(default .5, as in the committed me5_small tables; 0 is a stress case); ``--seed-sd-ratio 3`` makes the seed
level unequal across a language's levels (the stress case for pooling it), ``--residual-sd 0.1`` replaces the
sparse redraws by Gaussian seed x query noise, ``--no-pool`` gives every contrast its own seed level.

A simulated sweep has two parallel languages, proportions p, S seeds and Q queries of reciprocal ranks drawn
like MRR@100 on XQuAD-R, with query x cell redraws, seed x query redraws shared by a seed's cells with
probability ``seed_correlation``, a seed effect (SD ``seed_sd``, ``seed_sd_ratio``: its growth from p = 0 to 1),
optional Gaussian noise (``residual_sd``) and the true effect ``effect * p + curvature * (p^2 - p)`` (the second
language ``language_effect * p`` more), so the truth of every contrast is known (docs/statistics.md#calibration).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mdr.reporting.statistics import (  # noqa: E402
    Cell,
    contrast,
    curvature_weights,
    decide,
    slope_weights,
    step_weights,
    tost,  # noqa: E402
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


def markdown_table(document: dict) -> str:
    """One row per (correlation, seeds, seed SD): type-I error and coverage at effect 0, TOST's type-I error at
    0.01, power at each effect."""
    rows: dict[tuple[str, int, float], dict[float, dict]] = {}
    for result in document["scenarios"]:
        scenario = result["scenario"]
        key = (_shape(scenario), scenario["seeds"], scenario["seed_sd"])
        rows.setdefault(key, {})[scenario["effect"]] = result
    tests = ["delta", "slope", "curvature", "interaction", "slope_interaction"]
    lines = [
        "| noise shape | S | seed SD | type-I: delta / slope / curvature / language x p / low-high slope / verdict "
        "| coverage: delta / slope / curvature / language x p | TOST type-I | power delta (verdict) .01 / .02 / .04 |",
        "|---:|---:|---:|---|---|---:|---|",
    ]
    for (shape, seeds, seed_sd), by_effect in rows.items():
        null = by_effect.get(0.0)
        at_margin = by_effect.get(0.01)
        type_one = coverage = tost = "–"
        if null:
            rates = null["rates"]
            type_one = " / ".join(f"{rates[f'{t}.reject']:.3f}" for t in tests) + f" / {rates['verdict.effect']:.3f}"
            coverage = " / ".join(f"{rates[f'{t}.cover']:.3f}" for t in tests[:4])
            type_one += f" (n={null['simulations']})"
        if at_margin:
            tost = f"{at_margin['rates']['tost.equivalent']:.3f}"
        power = []
        for effect in (0.01, 0.02, 0.04):
            found = by_effect.get(effect)
            rates = found["rates"] if found else None
            power.append(f"{rates['delta.reject']:.2f} ({rates['verdict.right_direction']:.2f})" if rates else "–")
        lines.append(f"| {shape} | {seeds} | {seed_sd:g} | {type_one} | {coverage} | {tost} | {' / '.join(power)} |")
    return "\n".join(lines)


def _shape(scenario: dict) -> str:
    """The noise shape of a scenario in words (the table's first column)."""
    parts = [f"seed corr. {scenario['seed_correlation']:g}"]
    if scenario.get("seed_sd_ratio", 1.0) != 1.0:
        parts.append(f"seed SD at p=1 {scenario['seed_sd_ratio']:g}x p=0's")
    if scenario.get("residual_sd", 0.0) > 0:
        parts.append(f"Gaussian seed x query noise SD {scenario['residual_sd']:g}")
    if not scenario.get("pool", True):
        parts.append("per-contrast seed level (unpooled)")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    """Run the grid of scenarios and print one JSON document."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--null", type=int, default=4000, help="simulations per scenario with effect 0 or 0.01")
    parser.add_argument("--effect", type=int, default=1000, help="simulations per scenario with effect .02 / .04")
    parser.add_argument("--seeds", type=int, nargs="+", default=[3, 5])
    parser.add_argument("--seed-sd", type=float, nargs="+", default=[0.005, 0.010])
    parser.add_argument("--effects", type=float, nargs="+", default=[0.0, 0.01, 0.02, 0.04])
    parser.add_argument("--correlation", type=float, nargs="+", default=[0.5])
    parser.add_argument("--seed-sd-ratio", type=float, default=1.0, help="seed SD at p = 1 over p = 0 (stress)")
    parser.add_argument(
        "--residual-sd", type=float, default=0.0, help="Gaussian seed x query noise instead of sparse redraws"
    )
    parser.add_argument("--no-pool", action="store_true", help="each contrast's own seed level (no pooling)")
    parser.add_argument("--random-seed", type=int, default=2026)
    parser.add_argument("--table", nargs="+", help="print the Markdown table of saved JSON output(s) and exit")
    args = parser.parse_args(argv)
    if args.table:
        merged = {"scenarios": [s for path in args.table for s in json.loads(Path(path).read_text())["scenarios"]]}
        print(markdown_table(merged))
        return 0
    results = []
    index = 0
    for correlation in args.correlation:
        for seeds in args.seeds:
            for seed_sd in args.seed_sd:
                for effect in args.effects:
                    scenario = replace(Scenario(), seeds=seeds, seed_sd=seed_sd, effect=effect)
                    scenario = replace(
                        scenario,
                        seed_correlation=correlation,
                        seed_sd_ratio=args.seed_sd_ratio,
                        pool=not args.no_pool,
                        **({"residual_sd": args.residual_sd, "seed_query_noise": 0.0} if args.residual_sd else {}),
                    )
                    simulations = args.null if effect in (0.0, scenario.margin) else args.effect
                    results.append(run(scenario, simulations, seed=args.random_seed + index))
                    index += 1
                    print(f"done: S={seeds} sd={seed_sd} effect={effect} rho={correlation}", file=sys.stderr)
    print(json.dumps({"scenarios": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
