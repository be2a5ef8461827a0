"""The analysis of a results frame: cell means with intervals, deltas against p = 0, trends and verdicts,
variant effects and the comparison of stage schedules.

Cells are (model, stage, language, variant, hard_proportion), so only like is compared with like. Each
proportion is compared with p = 0 of the same variant (else of the same masking without denoising, which p = 0
never uses, else of the default variant; the table says which), with the seed-aware two-level bootstrap of
:mod:`mdr.reporting.significance`; Holm's adjustment runs within each (model, stage, language, variant). A trend
(least-squares slope of MRR@100 in p) and a one-line verdict summarise each; non-default variants are also
compared with the default variant at the same p. When the sweep holds several stage schedules,
:func:`compare_schedules` compares them per (model, language), each against ``target_only`` (else the first
schedule) with the same bootstrap, Holm within (model, language).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mdr.reporting.collect import DEFAULT_VARIANT, GROUP, KEYS, METRIC
from mdr.reporting.significance import Cell, Estimate, bootstrap_contrast, holm, slope_weights, verdict

ALPHA = 0.05


@dataclass
class Analysis:
    """Everything the report shows, as tables."""

    cells: pd.DataFrame
    tests: pd.DataFrame
    trends: pd.DataFrame
    variant_effects: pd.DataFrame


class _CellTables:
    """Per-query metric tables of sweep cells, read once per file."""

    def __init__(self, results: pd.DataFrame, metric: str = METRIC) -> None:
        self.results = results
        self.metric = metric
        self._series: dict[str, pd.Series] = {}

    def _read(self, path: str) -> pd.Series:
        if path not in self._series:
            frame = pd.read_csv(path, sep="\t", dtype={"query_id": str})
            self._series[path] = frame.set_index("query_id")[self.metric].astype(float)
        return self._series[path]

    def rows(self, group: tuple[Any, ...], proportion: float) -> pd.DataFrame:
        keys = dict(zip(GROUP, group))
        mask = np.ones(len(self.results), dtype=bool)
        for key, value in keys.items():
            mask &= (self.results[key] == value).to_numpy()
        return self.results[mask & same_proportion(self.results.hard_proportion, proportion)]

    def cells(self, selections: list[pd.DataFrame]) -> list[Cell]:
        """The selected runs as cells on the queries every one of them scored."""
        tables = [pd.concat([self._read(f) for f in rows.per_query_file], axis=1) for rows in selections]
        common = tables[0].index
        for table in tables[1:]:
            common = common.intersection(table.index)
        common = common.sort_values()
        return [
            Cell(tuple(int(s) for s in rows.seed), table.loc[common].to_numpy(dtype=np.float64).T)
            for rows, table in zip(selections, tables)
        ]


def same_proportion(values: pd.Series, proportion: float) -> np.ndarray:
    """Where ``values`` equals ``proportion`` (floats compared with tolerance; NaN, for runs without p, equals NaN)."""
    numbers = values.to_numpy(dtype=np.float64)
    if pd.isna(proportion):
        return np.isnan(numbers)
    return np.isclose(numbers, proportion)


def _rng_seed(*parts: Any) -> int:
    return zlib.crc32("|".join(str(p) for p in parts).encode())


def _estimate_columns(estimate: Estimate, value_name: str) -> dict[str, Any]:
    return {
        value_name: estimate.value,
        "ci_low": estimate.ci_low,
        "ci_high": estimate.ci_high,
        "p_value": estimate.p_value,
        "seeds": estimate.seeds,
        "queries": estimate.queries,
        "seed_level": estimate.seed_level,
    }


def _note(estimate: Estimate) -> str:
    if estimate.seed_level == "none":
        return "seeds=1: interval from queries only"
    if estimate.seed_level == "partial":
        return "a cell has 1 seed: its seed variance not estimated"
    return ""


def _baseline(tables: _CellTables, group: tuple[Any, ...]) -> tuple[str, pd.DataFrame] | None:
    """(variant, runs) of the p = 0 cell a group is compared with (see the module docstring)."""
    model, stage, language, variant = group
    masking = variant.split(",")[0]
    for candidate in dict.fromkeys([variant, f"{masking},denoise=off", DEFAULT_VARIANT]):
        rows = tables.rows((model, stage, language, candidate), 0.0)
        if not rows.empty:
            return candidate, rows
    return None


def sort_results(results: pd.DataFrame) -> pd.DataFrame:
    """Runs in cell order, the default variant first within each (model, stage, language)."""

    def key(column: pd.Series) -> pd.Series:
        if column.name == "variant":
            return column.map(lambda variant: f"{variant != DEFAULT_VARIANT:d}{variant}")
        return column

    return results.sort_values(KEYS, key=key).reset_index(drop=True)


def analyse(results: pd.DataFrame, trials: int = 10_000) -> Analysis:
    """Cell means with intervals, tests against p = 0, trends and verdicts, and variant effects."""
    results = sort_results(results)
    tables = _CellTables(results)
    cell_rows: list[dict[str, Any]] = []
    for key, rows in results.groupby([*GROUP, "hard_proportion"], sort=False, dropna=False):
        [cell] = tables.cells([rows])
        estimate = bootstrap_contrast([cell], [1.0], trials, seed=_rng_seed("cell", *key))
        values = rows[METRIC]
        cell_rows.append(
            {
                **dict(zip([*GROUP, "hard_proportion"], key)),
                "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if len(values) > 1 else float("nan"),
                "n": len(values),
                "ci_low": estimate.ci_low,
                "ci_high": estimate.ci_high,
                "low_resource": bool(rows.low_resource.iloc[0]),
            }
        )
    tests: list[dict[str, Any]] = []
    trends: list[dict[str, Any]] = []
    for group, rows in results.groupby(GROUP, sort=False):
        found = _baseline(tables, group)
        if found is None:
            continue
        baseline_variant, baseline = found
        proportions = sorted(p for p in rows.hard_proportion.unique() if p != 0.0 and not pd.isna(p))
        if not proportions:
            continue
        family: list[dict[str, Any]] = []
        for proportion in proportions:
            cells = tables.cells([tables.rows(group, proportion), baseline])
            estimate = bootstrap_contrast(cells, [1.0, -1.0], trials, seed=_rng_seed("delta", *group, proportion))
            family.append(
                {
                    **dict(zip(GROUP, group)),
                    "baseline_variant": baseline_variant,
                    "hard_proportion": proportion,
                    **_estimate_columns(estimate, f"delta_{METRIC}"),
                    "note": _note(estimate),
                }
            )
        for test, adjusted in zip(family, holm([t["p_value"] for t in family])):
            test["p_holm"] = adjusted
        tests += family
        cells = tables.cells([baseline] + [tables.rows(group, p) for p in proportions])
        slope = bootstrap_contrast(cells, slope_weights([0.0, *proportions]), trials, seed=_rng_seed("slope", *group))
        seeds = min(t["seeds"] for t in family)
        trends.append(
            {
                **dict(zip(GROUP, group)),
                "baseline_variant": baseline_variant,
                "proportions": " ".join(f"{p:g}" for p in [0.0, *proportions]),
                **_estimate_columns(slope, "slope"),
                "verdict": verdict(
                    slope, [(t["hard_proportion"], t[f"delta_{METRIC}"], t["p_holm"]) for t in family], seeds, ALPHA
                ),
            }
        )
    effects: list[dict[str, Any]] = []
    for (model, stage, language), rows in results.groupby(["model", "stage", "language"], sort=False):
        family = []
        for (variant, proportion), cell_runs in rows.groupby(["variant", "hard_proportion"], sort=False):
            reference = tables.rows((model, stage, language, DEFAULT_VARIANT), proportion)
            if variant == DEFAULT_VARIANT or reference.empty:
                continue
            cells = tables.cells([cell_runs, reference])
            key = ("variant", model, stage, language, variant, proportion)
            estimate = bootstrap_contrast(cells, [1.0, -1.0], trials, seed=_rng_seed(*key))
            family.append(
                {
                    "model": model,
                    "stage": stage,
                    "language": language,
                    "variant": variant,
                    "reference_variant": DEFAULT_VARIANT,
                    "hard_proportion": proportion,
                    **_estimate_columns(estimate, f"delta_{METRIC}"),
                    "note": _note(estimate),
                }
            )
        for effect, adjusted in zip(family, holm([e["p_value"] for e in family])):
            effect["p_holm"] = adjusted
        effects += family
    test_columns = [
        *GROUP[:3],
        "hard_proportion",
        f"delta_{METRIC}",
        "p_value",
        "p_holm",
        "ci_low",
        "ci_high",
        "seeds",
        "queries",
        "variant",
        "baseline_variant",
        "seed_level",
        "note",
    ]
    trend_columns = [
        *GROUP,
        "baseline_variant",
        "proportions",
        "slope",
        "ci_low",
        "ci_high",
        "p_value",
        "seeds",
        "queries",
        "seed_level",
        "verdict",
    ]
    effect_columns = [
        *GROUP,
        "reference_variant",
        "hard_proportion",
        f"delta_{METRIC}",
        "p_value",
        "p_holm",
        "ci_low",
        "ci_high",
        "seeds",
        "queries",
        "seed_level",
        "note",
    ]
    return Analysis(
        cells=pd.DataFrame(cell_rows),
        tests=pd.DataFrame(tests, columns=test_columns),
        trends=pd.DataFrame(trends, columns=trend_columns),
        variant_effects=pd.DataFrame(effects, columns=effect_columns),
    )


REFERENCE_SCHEDULE = "target_only"


def _schedule_order(stage: str) -> tuple[bool, bool, str]:
    return (stage != "zero_shot", stage != REFERENCE_SCHEDULE, stage)


def compare_schedules(results: pd.DataFrame, trials: int = 10_000) -> pd.DataFrame:
    """MRR@100 per (model, evaluation language, schedule), each schedule against the reference schedule.

    The reference is ``target_only`` where the sweep ran it, else the first schedule; a schedule that ran with
    several proportions or variants gets one column per (p, variant). Differences use the two-level bootstrap
    of :mod:`mdr.reporting.significance` (paired by seed and query); Holm within each (model, language).
    """
    results = sort_results(results)
    tables = _CellTables(results)
    rows: list[dict[str, Any]] = []
    for (model, language), block in results.groupby(["model", "language"], sort=False):
        conditions = sorted(
            block.groupby(["stage", "hard_proportion", "variant"], sort=False, dropna=False),
            key=lambda item: _schedule_order(str(item[0][0])),
        )
        names = [str(key[0]) for key, _ in conditions]
        labelled = []
        for (stage, proportion, variant), runs in conditions:
            label = stage if names.count(stage) == 1 else f"{stage} (p={proportion:g}, {variant})"
            labelled.append((label, stage, runs))
        reference = next((item for item in labelled if item[1] == REFERENCE_SCHEDULE), labelled[0])
        family: list[dict[str, Any]] = []
        for label, stage, runs in labelled:
            values = runs[METRIC]
            row: dict[str, Any] = {
                "model": model,
                "language": language,
                "schedule": label,
                "stage": stage,
                "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if len(values) > 1 else float("nan"),
                "n": len(values),
                "low_resource": bool(runs.low_resource.iloc[0]),
                "reference": reference[0],
            }
            if label != reference[0]:
                cells = tables.cells([runs, reference[2]])
                seed = _rng_seed("schedule", model, language, label)
                estimate = bootstrap_contrast(cells, [1.0, -1.0], trials, seed=seed)
                row.update(_estimate_columns(estimate, f"delta_{METRIC}"))
                family.append(row)
            rows.append(row)
        for row, adjusted in zip(family, holm([r["p_value"] for r in family])):
            row["p_holm"] = adjusted
    return pd.DataFrame(rows)
