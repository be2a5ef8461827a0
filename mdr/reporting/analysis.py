"""The analysis of a results frame (docs/statistics.md): cell means, deltas against p = 0, trends and verdicts,
language x p interactions, the low- vs high-resource contrast, variant effects and stage schedule comparisons."""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mdr.reporting import statistics as stats
from mdr.reporting.collect import DEFAULT_VARIANT, GROUP, METRIC
from mdr.reporting.statistics import Cell, Estimate, Parts, contrast, contrast_parts, seed_label, slope_weights
from mdr.utils.logging import get_logger

log = get_logger(__name__)

ALPHA = 0.05
EQUIVALENCE_MARGIN = 0.01  # the default TOST margin (MRR@100 units): "no effect larger than this"
SECOND_METRIC = "ndcg@10"


@dataclass
class Analysis:
    """Everything the report shows, as tables."""

    cells: pd.DataFrame
    tests: pd.DataFrame
    trends: pd.DataFrame
    variant_effects: pd.DataFrame
    interactions: pd.DataFrame
    resource_contrasts: pd.DataFrame


def same_proportion(values: pd.Series, proportion: float) -> np.ndarray:
    """Where ``values`` equals ``proportion`` (with tolerance; NaN, for runs without p, equals NaN)."""
    numbers = values.to_numpy(dtype=np.float64)
    return np.isnan(numbers) if pd.isna(proportion) else np.isclose(numbers, proportion)


def _spread(values: pd.Series) -> dict[str, Any]:
    """Mean, sample std (NaN for one run) and n of a cell's runs."""
    return {
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1)) if len(values) > 1 else np.nan,
        "n": len(values),
    }


def resource_class(values: pd.Series) -> bool | None:
    """Whether runs are of a low-resource language: their first recorded ``low_resource``; None if none is."""
    known = values.dropna()
    return bool(known.iloc[0]) if len(known) else None


class CellTables:
    """The runs of a results frame and their per-query files (each read once), as statistics cells."""

    def __init__(self, results: pd.DataFrame) -> None:
        self.results = results
        self._frames: dict[str, pd.DataFrame] = {}

    def _read(self, path: str) -> pd.DataFrame:
        if path not in self._frames:
            self._frames[path] = pd.read_csv(path, sep="\t", dtype={"query_id": str}).set_index("query_id")
        return self._frames[path]

    def rows(self, group: tuple[Any, ...], proportion: float) -> pd.DataFrame:
        """The runs of cell (``group``, ``proportion``)."""
        mask = same_proportion(self.results.hard_proportion, proportion)
        for key, value in zip(GROUP, group):
            mask &= (self.results[key] == value).to_numpy()
        return self.results[mask]

    def has(self, selections: list[pd.DataFrame], metric: str) -> bool:
        """Whether every selected run's per-query file has a ``metric`` column."""
        return all(metric in self._read(f).columns for rows in selections for f in rows.per_query_file)

    def scores(self, rows: pd.DataFrame, metric: str, parallel: bool) -> pd.DataFrame:
        """(queries, runs) of ``metric``; ``parallel``: query ids without the ``<language>_`` prefix (XQuAD-R)."""
        series = []
        for path, language in zip(rows.per_query_file, rows.language):
            values = self._read(path)[metric].astype(float)
            if parallel:
                values.index = [q.removeprefix(f"{language}_") for q in values.index]
            series.append(values)
        return pd.concat(series, axis=1)

    def cells(self, selections: list[pd.DataFrame], metric: str = METRIC, parallel: bool = False) -> list[Cell]:
        """The selected runs as cells on the queries all of them scored, grouped by language."""
        tables = [self.scores(rows, metric, parallel) for rows in selections]
        common = functools.reduce(pd.Index.intersection, (table.index for table in tables)).sort_values()
        if dropped := max(len(table.index) for table in tables) - len(common):
            log.warning("%d quer%s not scored by every compared run: left out", dropped, "y" if dropped == 1 else "ies")
        return [
            Cell(
                tuple(int(s) for s in rows.seed),
                table.loc[common].to_numpy(dtype=np.float64).T,
                group="|".join(str(language) for language in dict.fromkeys(rows.language)),
                seed_free=bool(rows.variant.astype(str).str.startswith("mask=n/a").all()),
            )
            for rows, table in zip(selections, tables)
        ]


def _estimate_columns(estimate: Estimate, value_name: str) -> dict[str, Any]:
    names = ("ci_low", "ci_high", "p_value", "se", "df", "seeds", "queries", "seed_level")
    columns = {value_name: estimate.value, **{name: getattr(estimate, name) for name in names}}
    seed_ids = seed_label(estimate.seed_ids) if estimate.seed_ids else "none shared"
    return columns | {"seed_ids": seed_ids, "gives_verdict": estimate.gives_verdict}


def _interval_columns(estimate: Estimate | None, value_name: str, prefix: str) -> dict[str, Any]:
    """``value_name``, ``<prefix>_ci_low``, ``<prefix>_ci_high`` and ``<prefix>_p_value`` (NaN without estimate)."""
    values = (estimate.value, estimate.ci_low, estimate.ci_high, estimate.p_value) if estimate else (np.nan,) * 4
    return dict(zip((value_name, f"{prefix}_ci_low", f"{prefix}_ci_high", f"{prefix}_p_value"), values))


def with_holm(family: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``family`` with ``p_holm``: its p-values Holm-adjusted together."""
    for row, adjusted in zip(family, stats.holm([row["p_value"] for row in family])):
        row["p_holm"] = adjusted
    return family


def comparison(
    tables: CellTables, treated: pd.DataFrame, reference: pd.DataFrame, margin: float, *family: pd.DataFrame
) -> tuple[dict[str, Any], Estimate]:
    """(columns, MRR@100 estimate) of treated - reference, the seed level pooled over ``family`` (other cells)."""
    selections = [treated, reference, *family]
    weights = [1.0, -1.0] + [0.0] * len(family)
    cells = tables.cells(selections)
    result = contrast(cells, weights, pool=True)
    second = None
    if tables.has(selections, SECOND_METRIC):
        second = contrast(tables.cells(selections, SECOND_METRIC), weights, pool=True)
    columns = _estimate_columns(result, f"delta_{METRIC}") | {"p_tost": stats.tost(result, margin)}
    columns |= dict(zip(("wins", "ties", "losses"), stats.win_tie_loss(*cells[:2])))
    columns |= _interval_columns(second, f"delta_{SECOND_METRIC}", SECOND_METRIC)
    return columns | {"note": _note(result)}, result


def _note(estimate: Estimate) -> str:
    """What the row's pairing and seed count allow: empty for a calibrated paired contrast."""
    notes = []
    if estimate.seed_level == "none":
        notes.append("seeds=1: interval from queries only")
    elif estimate.seed_level == "partial":
        notes.append("a cell has 1 seed: its seed variance not estimated")
    elif not estimate.seed_ids:
        notes.append("no seed shared: unpaired")
    if estimate.dropped_seeds and estimate.seed_ids:
        notes.append(f"paired on seeds {seed_label(estimate.seed_ids)}, the ones both cells ran")
    if not estimate.gives_verdict:
        notes.append(f"estimate only, no verdict (below {stats.CALIBRATED_SEEDS} paired seeds)")
    return "; ".join(notes)


def _baseline(tables: CellTables, group: tuple[Any, ...]) -> tuple[str, pd.DataFrame] | None:
    """(variant, runs) of a group's p = 0 cell: its variant's, else its masking undenoised, else the default's."""
    model, stage, language, variant = group
    for candidate in dict.fromkeys([variant, f"{variant.split(',')[0]},denoise=off", DEFAULT_VARIANT]):
        rows = tables.rows((model, stage, language, candidate), 0.0)
        if not rows.empty:
            return candidate, rows
    return None


def sort_results(results: pd.DataFrame) -> pd.DataFrame:
    """Runs in cell order, the default variant first within each (model, stage, language)."""

    def key(column: pd.Series) -> pd.Series:
        return column.map(lambda v: f"{v != DEFAULT_VARIANT:d}{v}") if column.name == "variant" else column

    return results.sort_values([*GROUP, "hard_proportion", "seed"], key=key).reset_index(drop=True)


def _cell_rows(tables: CellTables, results: pd.DataFrame) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for key, rows in results.groupby([*GROUP, "hard_proportion"], sort=False, dropna=False):
        interval = contrast(tables.cells([rows]), [1.0])
        second = rows[SECOND_METRIC] if SECOND_METRIC in rows else pd.Series(dtype=float)
        found.append(
            {
                **dict(zip([*GROUP, "hard_proportion"], key)),
                **_spread(rows[METRIC]),
                "ci_low": interval.ci_low,
                "ci_high": interval.ci_high,
                f"mean_{SECOND_METRIC}": float(second.mean()) if second.notna().any() else np.nan,
                "low_resource": resource_class(rows.low_resource),
            }
        )
    return found


def _trend(
    tables: CellTables, levels: list[pd.DataFrame], proportions: list[float], metric: str = METRIC
) -> tuple[Estimate, Estimate | None, list[Estimate]]:
    """(slope over every level, quadratic term or None below 3 levels, adjacent steps) of one cell group."""
    cells = tables.cells(levels, metric)
    slope = contrast(cells, slope_weights(proportions), pool=True)
    curvature = contrast(cells, stats.curvature_weights(proportions), pool=True) if len(proportions) >= 3 else None
    return slope, curvature, [contrast(cells, w, pool=True) for w in stats.step_weights(len(proportions))]


def analyse(results: pd.DataFrame, *, equivalence_margin: float = EQUIVALENCE_MARGIN) -> Analysis:
    """Every table of the report for ``results`` (one row per run and evaluated language, with its per-query file)."""
    if not equivalence_margin > 0:
        raise ValueError(f"the equivalence margin must be a number > 0, got {equivalence_margin!r}")
    results = sort_results(results)
    tables = CellTables(results)
    tests: list[dict[str, Any]] = []
    trends: list[dict[str, Any]] = []
    for group, rows in results.groupby(GROUP, sort=False):
        found = _baseline(tables, group)
        proportions = sorted(p for p in rows.hard_proportion.unique() if p != 0.0 and not pd.isna(p))
        if found is None or not proportions:
            continue
        baseline_variant, baseline = found
        named = {**dict(zip(GROUP, group)), "baseline_variant": baseline_variant}
        family, deltas = [], []
        for proportion in proportions:
            others = [tables.rows(group, p) for p in proportions if p != proportion]
            compared, delta = comparison(tables, tables.rows(group, proportion), baseline, equivalence_margin, *others)
            family.append({**named, "hard_proportion": proportion, **compared})
            deltas.append((proportion, delta))
        levels = [baseline] + [tables.rows(group, p) for p in proportions]
        slope, curvature, steps = _trend(tables, levels, [0.0, *proportions])
        tests += with_holm(family)
        decision = stats.decide(slope, curvature, deltas, steps, equivalence_margin, ALPHA)
        scored = tables.has(levels, SECOND_METRIC)
        second = _trend(tables, levels, [0.0, *proportions], SECOND_METRIC)[0] if scored else None
        trends.append(
            {
                **named,
                "proportions": " ".join(f"{p:g}" for p in [0.0, *proportions]),
                **_estimate_columns(slope, "slope"),
                **_interval_columns(curvature, "curvature", "curvature"),
                **_interval_columns(second, f"slope_{SECOND_METRIC}", SECOND_METRIC),
                "equivalence_margin": equivalence_margin,
                "verdict_kind": decision.kind,
                "verdict": decision.text,
                "low_resource": resource_class(rows.low_resource),
            }
        )
    effects: list[dict[str, Any]] = []
    for (model, stage, language), rows in results.groupby(["model", "stage", "language"], sort=False):
        family = []
        for (variant, proportion), runs in rows.groupby(["variant", "hard_proportion"], sort=False):
            reference = tables.rows((model, stage, language, DEFAULT_VARIANT), proportion)
            if variant == DEFAULT_VARIANT or reference.empty:
                continue
            compared = comparison(tables, runs, reference, equivalence_margin)[0]
            named = {"model": model, "stage": stage, "language": language, "variant": variant}
            family.append({**named, "reference_variant": DEFAULT_VARIANT, "hard_proportion": proportion, **compared})
        effects += with_holm(family)
    interactions, contrasts = _language_contrasts(tables, results, trends)
    return Analysis(
        cells=pd.DataFrame(_cell_rows(tables, results)),
        tests=pd.DataFrame(tests, columns=TEST_COLUMNS),
        trends=pd.DataFrame(trends, columns=TREND_COLUMNS),
        variant_effects=pd.DataFrame(effects, columns=EFFECT_COLUMNS),
        interactions=pd.DataFrame(interactions, columns=INTERACTION_COLUMNS),
        resource_contrasts=pd.DataFrame(contrasts, columns=RESOURCE_COLUMNS),
    )


REFERENCE_SCHEDULE = "target_only"


def compare_schedules(results: pd.DataFrame, *, equivalence_margin: float = EQUIVALENCE_MARGIN) -> pd.DataFrame:
    """MRR@100 per (model, evaluation language, schedule), each schedule but the reference (``target_only``, else the
    first) compared with it, Holm within (model, language); one column per (p, variant) of a schedule run at several"""
    results = sort_results(results)
    tables = CellTables(results)
    rows: list[dict[str, Any]] = []
    for (model, language), block in results.groupby(["model", "language"], sort=False):
        conditions = sorted(
            block.groupby(["stage", "hard_proportion", "variant"], sort=False, dropna=False),
            key=lambda item: (item[0][0] != "zero_shot", item[0][0] != REFERENCE_SCHEDULE, str(item[0][0])),
        )
        names = [str(key[0]) for key, _ in conditions]
        labelled = [
            (stage if names.count(stage) == 1 else f"{stage} (p={proportion:g}, {variant})", stage, runs)
            for (stage, proportion, variant), runs in conditions
        ]
        reference = next((item for item in labelled if item[1] == REFERENCE_SCHEDULE), labelled[0])
        family: list[dict[str, Any]] = []
        for label, stage, runs in labelled:
            row: dict[str, Any] = {"model": model, "language": language, "schedule": label, "stage": stage}
            row |= _spread(runs[METRIC]) | {
                "low_resource": resource_class(runs.low_resource),
                "reference": reference[0],
            }
            if label != reference[0]:
                row.update(comparison(tables, runs, reference[2], equivalence_margin)[0])
                family.append(row)
            rows.append(row)
        with_holm(family)
    return pd.DataFrame(rows)


def _language_parts(
    tables: CellTables, entries: list[tuple[list[pd.DataFrame], np.ndarray]], coefficients: list[float]
) -> tuple[Parts, str]:
    """sum_i coefficients[i] * language i's contrast: paired by query on parallel data, else independent."""
    id_sets = [set().union(*(tables.scores(rows, METRIC, True).index for rows in levels)) for levels, _ in entries]
    if all(ids == id_sets[0] for ids in id_sets[1:]):
        cells, weights = [], []
        for (levels, w), a in zip(entries, coefficients):
            cells += tables.cells(levels, parallel=True)
            weights += list(a * np.asarray(w))
        return contrast_parts(cells, weights, pool=True), "paired by query"
    parts = [contrast_parts(tables.cells(levels), w, pool=True) for levels, w in entries]
    return stats.combine(parts, coefficients), "independent queries"


def _language_contrasts(
    tables: CellTables, results: pd.DataFrame, trends: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Language x p interactions (per pair: deltas of deltas, slope difference) and the low- vs high-resource one."""
    interactions: list[dict[str, Any]] = []
    contrasts: list[dict[str, Any]] = []
    trend_frame = pd.DataFrame(trends)
    if trend_frame.empty:
        return interactions, contrasts
    for (model, stage, variant), block in trend_frame.groupby(["model", "stage", "variant"], sort=False):
        languages = list(dict.fromkeys(block.language))
        runs = results[(results.model == model) & (results.stage == stage) & (results.variant == variant)]
        levels_of = {
            language: {float(p) for p in runs[runs.language == language].hard_proportion.dropna()} | {0.0}
            for language in languages
        }

        def entry(language: str, weights: dict[float, float]) -> tuple[list[pd.DataFrame], np.ndarray]:
            """Every level of ``language`` (zero weight where not named: they pool the seed level)."""
            group = (model, stage, language, variant)
            levels = sorted(levels_of[language])
            baseline = _baseline(tables, group)[1]  # type: ignore[index]  # a trend exists, so does its p = 0
            cells = [baseline if p == 0.0 else tables.rows(group, p) for p in levels]
            return cells, np.array([weights.get(p, 0.0) for p in levels])

        def language_contrast(
            chosen: list[str], weights: dict[float, float], a: list[float], name: str
        ) -> dict[str, Any]:
            parts, pairing = _language_parts(tables, [entry(language, weights) for language in chosen], a)
            named = {"model": model, "stage": stage, "variant": variant, "query_pairing": pairing}
            return {**named, **_estimate_columns(stats.estimate(parts), name)}

        for first, second in itertools.combinations(languages, 2):
            common = sorted(levels_of[first] & levels_of[second])
            if len(common) < 2:
                continue
            family = [(f"delta at p={p:g}", {p: 1.0, 0.0: -1.0}) for p in common[1:]]
            weights = slope_weights(common)
            end_to_end = np.array([-1.0] + [0.0] * (len(common) - 2) + [1.0]) / (common[-1] - common[0])
            if not np.allclose(weights, end_to_end):  # three equally spaced levels: the slope is the last delta
                family.append(("slope over p=" + " ".join(f"{p:g}" for p in common), dict(zip(common, weights))))
            rows = []
            for name, chosen in family:
                rows.append(language_contrast([first, second], chosen, [1.0, -1.0], f"difference_{METRIC}"))
                rows[-1].update(language=first, other_language=second, contrast=name)
            interactions += with_holm(rows)
        classes = {language: resource_class(block[block.language == language].low_resource) for language in languages}
        if unknown := [language for language, low_resource in classes.items() if low_resource is None]:
            log.warning(
                f"{model} {stage} {variant}: no low_resource recorded for {', '.join(unknown)} (metrics.json, "
                "config.yaml, conf/language): left out of the low- vs high-resource contrast"
            )
        low = [language for language, low_resource in classes.items() if low_resource is True]
        high = [language for language, low_resource in classes.items() if low_resource is False]
        common = sorted(set.intersection(*(levels_of[language] for language in low + high))) if low and high else []
        if len(common) < 2:
            continue
        coefficients = [1.0 / len(low)] * len(low) + [-1.0 / len(high)] * len(high)
        named = {"low_resource": " ".join(low), "high_resource": " ".join(high)}
        named["proportions"] = " ".join(f"{p:g}" for p in common)
        weights = dict(zip(common, slope_weights(common)))
        contrasts.append(language_contrast(low + high, weights, coefficients, f"slope_difference_{METRIC}") | named)
    return interactions, contrasts


_ESTIMATE = "ci_low ci_high seeds queries se df seed_level seed_ids gives_verdict"
_SECOND = f"{SECOND_METRIC}_ci_low {SECOND_METRIC}_ci_high {SECOND_METRIC}_p_value"
_DELTA = f"{_ESTIMATE} p_tost wins ties losses delta_{SECOND_METRIC} {_SECOND}"
TEST_COLUMNS = (
    f"model stage language hard_proportion delta_{METRIC} p_value p_holm {_DELTA} variant baseline_variant note"
).split()
TREND_COLUMNS = (
    f"model stage language variant baseline_variant proportions slope p_value {_ESTIMATE} curvature curvature_ci_low "
    f"curvature_ci_high curvature_p_value slope_{SECOND_METRIC} {_SECOND} equivalence_margin verdict_kind verdict "
    "low_resource"
).split()
EFFECT_COLUMNS = (
    f"model stage language variant reference_variant hard_proportion delta_{METRIC} p_holm p_value {_DELTA} note"
).split()
INTERACTION_COLUMNS = (
    f"model stage variant language other_language contrast difference_{METRIC} p_holm p_value {_ESTIMATE} query_pairing"
).split()
RESOURCE_COLUMNS = (
    f"model stage variant low_resource high_resource proportions slope_difference_{METRIC} p_value {_ESTIMATE} "
    "query_pairing"
).split()
