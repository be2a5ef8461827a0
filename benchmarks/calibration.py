"""Calibration of the sweep statistics (mdr.reporting.statistics) on simulated sweeps: prints JSON.

    nice python benchmarks/calibration.py                  # full settings (several minutes on 2 cores)
    python benchmarks/calibration.py --null 400 --effect 200 --seeds 3   # a quick look
    python benchmarks/calibration.py --table calibration.json  # docs/statistics.md's table from a saved run

For each scenario (seeds S, seed SD, true effect; Q = 635 queries, p in {0, .25, .5, .75, 1}, two parallel
languages; the variance components of mdr.reporting.calibration.Scenario) it reports how often each test
rejects (type-I error where the truth is 0, power where it is not), how often each 95% interval covers the
truth, how often the verdict claims an effect / the right direction / equivalence, and how often TOST claims
|delta| < 0.01 when the true delta is exactly 0.01 (TOST's type-I error). ``--correlation`` sets the correlation
of a seed's runs across cells (default .5, as in the committed me5_small tables; 0 is a stress case);
``--seed-sd-ratio 3`` makes the seed level unequal across a language's levels (the stress case for pooling it),
``--residual-sd 0.1`` replaces the sparse redraws by Gaussian seed x query noise, ``--no-pool`` gives every
contrast its own seed level (the procedure before pooling).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mdr.reporting.calibration import Scenario, run  # noqa: E402


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
