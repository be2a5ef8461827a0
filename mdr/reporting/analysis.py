"""The analysis of a results frame: cell means with intervals, deltas against p = 0, trends and verdicts,
language x p interactions, variant effects and the comparison of stage schedules.

Cells are (model, stage, language, variant, hard_proportion), so only like is compared with like. Each
proportion is compared with p = 0 of the same variant (else of the same masking without denoising, which p = 0
never uses, else of the default variant; the table says which), with the Satterthwaite t test of
:mod:`mdr.reporting.statistics` (paired by seed and query); Holm's adjustment runs within each (model, stage,
language, variant), and each delta gets a TOST against the equivalence margin and per-query wins / ties /
losses. A trend (least-squares slope over every level of p, the quadratic term, the adjacent steps) and a
one-line verdict summarise each; two languages of one (model, stage, variant) are compared by their deltas
(language x p interaction, paired by query where the query ids match once the language prefix is removed, as
on XQuAD-R) and, with both low- and high-resource languages, by the contrast of their slopes. Non-default
variants are also compared with the default variant at the same p. When the sweep holds several stage
schedules, :func:`mdr.reporting.schedules.compare_schedules` compares them per (model, language), each against
``target_only`` (else the first schedule), Holm within (model, language). nDCG@10 is tested beside MRR@100
everywhere.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mdr.reporting.collect import DEFAULT_VARIANT, GROUP, KEYS
from mdr.reporting.integrity import METRIC
from mdr.reporting.statistics import (
    CALIBRATED_SEEDS,
    Cell,
    Estimate,
    Parts,
    combine,
    contrast,
    contrast_parts,
    curvature_weights,
    decide,
    estimate,
    holm,
    seed_label,
    slope_weights,
    step_weights,
    tost,
    win_tie_loss,
)
from mdr.utils.logging import get_logger

log = get_logger(__name__)

ALPHA = 0.05
EQUIVALENCE_MARGIN = 0.01
"""Default equivalence margin (MRR@100 units): TOST claims "no effect larger than this"."""
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


def shared_query_id(query_id: str, language: str) -> str:
    """A query id without its ``<language>_`` prefix: parallel data (XQuAD-R) shares the rest across languages."""
    prefix = f"{language}_"
    return query_id[len(prefix) :] if query_id.startswith(prefix) else query_id


class _CellTables:
    """Per-query metric tables of sweep cells, read once per file."""

    def __init__(self, results: pd.DataFrame) -> None:
        self.results = results
        self._frames: dict[str, pd.DataFrame] = {}

    def _read(self, path: str) -> pd.DataFrame:
        if path not in self._frames:
            self._frames[path] = pd.read_csv(path, sep="\t", dtype={"query_id": str}).set_index("query_id")
        return self._frames[path]

    def rows(self, group: tuple[Any, ...], proportion: float) -> pd.DataFrame:
        keys = dict(zip(GROUP, group))
        mask = np.ones(len(self.results), dtype=bool)
        for key, value in keys.items():
            mask &= (self.results[key] == value).to_numpy()
        return self.results[mask & same_proportion(self.results.hard_proportion, proportion)]

    def has(self, selections: list[pd.DataFrame], metric: str) -> bool:
        """Whether every selected run's per-query file has a ``metric`` column."""
        return all(metric in self._read(f).columns for rows in selections for f in rows.per_query_file)

    def query_ids(self, rows: pd.DataFrame, parallel: bool = False) -> set[str]:
        """Query ids the runs of ``rows`` scored (``parallel``: without the language prefix)."""
        ids: set[str] = set()
        for path, language in zip(rows.per_query_file, rows.language):
            index = self._read(path).index
            ids |= {shared_query_id(q, str(language)) for q in index} if parallel else set(index)
        return ids

    def cells(self, selections: list[pd.DataFrame], metric: str = METRIC, parallel: bool = False) -> list[Cell]:
        """The selected runs as cells on the queries every one of them scored, grouped by language (the cells
        whose seed level a pooled contrast estimates together).

        Args:
            selections: runs per cell.
            metric: per-query column.
            parallel: match queries across languages by the id without its language prefix.
        """
        tables = []
        for rows in selections:
            series = []
            for path, language in zip(rows.per_query_file, rows.language):
                values = self._read(path)[metric].astype(float)
                if parallel:
                    values.index = [shared_query_id(q, str(language)) for q in values.index]
                series.append(values)
            tables.append(pd.concat(series, axis=1))
        common = tables[0].index
        for table in tables[1:]:
            common = common.intersection(table.index)
        dropped = max(len(table.index) for table in tables) - len(common)
        if dropped:
            log.warning("%d quer%s not scored by every compared run: left out", dropped, "y" if dropped == 1 else "ies")
        common = common.sort_values()
        return [
            Cell(
                tuple(int(s) for s in rows.seed),
                table.loc[common].to_numpy(dtype=np.float64).T,
                group="|".join(str(language) for language in dict.fromkeys(rows.language)),
                seed_free=bool(rows.variant.astype(str).str.startswith("mask=n/a").all()),
            )
            for rows, table in zip(selections, tables)
        ]


def resource_class(values: pd.Series) -> bool | None:
    """Whether runs are of a low-resource language: their first recorded ``low_resource``; None when none
    records it (:func:`mdr.reporting.collect.low_resource` found no language config saying)."""
    known = values.dropna()
    return bool(known.iloc[0]) if len(known) else None


def same_proportion(values: pd.Series, proportion: float) -> np.ndarray:
    """Where ``values`` equals ``proportion`` (floats compared with tolerance; NaN, for runs without p, equals NaN)."""
    numbers = values.to_numpy(dtype=np.float64)
    if pd.isna(proportion):
        return np.isnan(numbers)
    return np.isclose(numbers, proportion)


def _estimate_columns(estimate: Estimate, value_name: str) -> dict[str, Any]:
    return {
        value_name: estimate.value,
        "ci_low": estimate.ci_low,
        "ci_high": estimate.ci_high,
        "p_value": estimate.p_value,
        "se": estimate.se,
        "df": estimate.df,
        "seeds": estimate.seeds,
        "queries": estimate.queries,
        "seed_level": estimate.seed_level,
        "seed_ids": seed_label(estimate.seed_ids) if estimate.seed_ids else "none shared",
        "gives_verdict": estimate.gives_verdict,
    }


def _second_metric_columns(estimate: Estimate | None, value_name: str) -> dict[str, Any]:
    """``<value_name>_ndcg@10`` with its interval and p-value (NaN where per-query files lack the column)."""
    nan = float("nan")
    return {
        f"{value_name}_{SECOND_METRIC}": estimate.value if estimate else nan,
        f"{SECOND_METRIC}_ci_low": estimate.ci_low if estimate else nan,
        f"{SECOND_METRIC}_ci_high": estimate.ci_high if estimate else nan,
        f"{SECOND_METRIC}_p_value": estimate.p_value if estimate else nan,
    }


def _comparison(
    tables: _CellTables,
    treated: pd.DataFrame,
    reference: pd.DataFrame,
    margin: float,
    family: Sequence[pd.DataFrame] = (),
) -> dict[str, Any]:
    """treated - reference: MRR@100 and nDCG@10 tests, TOST against ``margin``, wins / ties / losses.

    ``family``: the other cells of the group (one language's other proportions), over which the seed level is
    pooled (:func:`mdr.reporting.statistics.contrast_parts`).
    """
    selections = [treated, reference, *family]
    weights = [1.0, -1.0] + [0.0] * len(family)
    cells = tables.cells(selections)
    result = contrast(cells, weights, pool=True)
    wins, ties, losses = win_tie_loss(*cells[:2])
    second = None
    if tables.has(selections, SECOND_METRIC):
        second = contrast(tables.cells(selections, SECOND_METRIC), weights, pool=True)
    return {
        **_estimate_columns(result, f"delta_{METRIC}"),
        "p_tost": tost(result, margin),
        "wins": wins,
        "ties": ties,
        "losses": losses,
        **_second_metric_columns(second, "delta"),
        "note": _note(result),
        "_estimate": result,
    }


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
        notes.append(f"estimate only, no verdict (below {CALIBRATED_SEEDS} paired seeds)")
    return "; ".join(notes)


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


def _cell_rows(tables: _CellTables, results: pd.DataFrame) -> list[dict[str, Any]]:
    rows_out: list[dict[str, Any]] = []
    for key, rows in results.groupby([*GROUP, "hard_proportion"], sort=False, dropna=False):
        [cell] = tables.cells([rows])
        interval = contrast([cell], [1.0])
        values = rows[METRIC]
        second = rows[SECOND_METRIC] if SECOND_METRIC in rows else pd.Series(dtype=float)
        rows_out.append(
            {
                **dict(zip([*GROUP, "hard_proportion"], key)),
                "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if len(values) > 1 else float("nan"),
                "n": len(values),
                "ci_low": interval.ci_low,
                "ci_high": interval.ci_high,
                f"mean_{SECOND_METRIC}": float(second.mean()) if second.notna().any() else float("nan"),
                "low_resource": resource_class(rows.low_resource),
            }
        )
    return rows_out


def _trend(
    tables: _CellTables, levels: list[pd.DataFrame], proportions: list[float], metric: str = METRIC
) -> tuple[Estimate, Estimate | None, list[Estimate]]:
    """(slope over every level, quadratic term or None below 3 levels, adjacent steps) of one cell group."""
    cells = tables.cells(levels, metric)
    slope = contrast(cells, slope_weights(proportions), pool=True)
    curvature = contrast(cells, curvature_weights(proportions), pool=True) if len(proportions) >= 3 else None
    return slope, curvature, [contrast(cells, w, pool=True) for w in step_weights(len(proportions))]


def analyse(results: pd.DataFrame, *, equivalence_margin: float = EQUIVALENCE_MARGIN) -> Analysis:
    """Cell means with intervals, tests against p = 0, trends and verdicts, interactions and variant effects.

    Args:
        results: one row per (run, evaluation language) with its per-query file.
        equivalence_margin: TOST margin in MRR@100 units (``hydra.callbacks.aggregate.equivalence_margin``,
            ``--equivalence-margin``).
    """
    if not equivalence_margin > 0:
        raise ValueError(f"the equivalence margin must be a number > 0, got {equivalence_margin!r}")
    results = sort_results(results)
    tables = _CellTables(results)
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
            others = [tables.rows(group, p) for p in proportions if p != proportion]
            compared = _comparison(tables, tables.rows(group, proportion), baseline, equivalence_margin, others)
            family.append(
                {
                    **dict(zip(GROUP, group)),
                    "baseline_variant": baseline_variant,
                    "hard_proportion": proportion,
                    **compared,
                }
            )
        for test, adjusted in zip(family, holm([t["p_value"] for t in family])):
            test["p_holm"] = adjusted
        levels = [baseline] + [tables.rows(group, p) for p in proportions]
        slope, curvature, steps = _trend(tables, levels, [0.0, *proportions])
        deltas = [(t["hard_proportion"], t.pop("_estimate")) for t in family]
        tests += family
        decision = decide(slope, curvature, deltas, steps, equivalence_margin, ALPHA)
        second = (
            _trend(tables, levels, [0.0, *proportions], SECOND_METRIC)[0] if tables.has(levels, SECOND_METRIC) else None
        )
        trends.append(
            {
                **dict(zip(GROUP, group)),
                "baseline_variant": baseline_variant,
                "proportions": " ".join(f"{p:g}" for p in [0.0, *proportions]),
                **_estimate_columns(slope, "slope"),
                "curvature": curvature.value if curvature else float("nan"),
                "curvature_ci_low": curvature.ci_low if curvature else float("nan"),
                "curvature_ci_high": curvature.ci_high if curvature else float("nan"),
                "curvature_p_value": curvature.p_value if curvature else float("nan"),
                **_second_metric_columns(second, "slope"),
                "equivalence_margin": equivalence_margin,
                "verdict_kind": decision.kind,
                "verdict": decision.text,
                "low_resource": resource_class(rows.low_resource),
            }
        )
    effects: list[dict[str, Any]] = []
    for (model, stage, language), rows in results.groupby(["model", "stage", "language"], sort=False):
        family = []
        for (variant, proportion), cell_runs in rows.groupby(["variant", "hard_proportion"], sort=False):
            reference = tables.rows((model, stage, language, DEFAULT_VARIANT), proportion)
            if variant == DEFAULT_VARIANT or reference.empty:
                continue
            compared = _comparison(tables, cell_runs, reference, equivalence_margin)
            compared.pop("_estimate")
            family.append(
                {
                    "model": model,
                    "stage": stage,
                    "language": language,
                    "variant": variant,
                    "reference_variant": DEFAULT_VARIANT,
                    "hard_proportion": proportion,
                    **compared,
                }
            )
        for effect, adjusted in zip(family, holm([e["p_value"] for e in family])):
            effect["p_holm"] = adjusted
        effects += family
    interactions, contrasts = _language_contrasts(tables, results, trends)
    return Analysis(
        cells=pd.DataFrame(_cell_rows(tables, results)),
        tests=pd.DataFrame(tests, columns=TEST_COLUMNS),
        trends=pd.DataFrame(trends, columns=TREND_COLUMNS),
        variant_effects=pd.DataFrame(effects, columns=EFFECT_COLUMNS),
        interactions=pd.DataFrame(interactions, columns=INTERACTION_COLUMNS),
        resource_contrasts=pd.DataFrame(contrasts, columns=RESOURCE_COLUMNS),
    )


def _language_parts(
    tables: _CellTables, entries: list[tuple[list[pd.DataFrame], np.ndarray]], coefficients: list[float]
) -> tuple[Parts, str]:
    """sum_i coefficients[i] * (weights_i . cell means of language i): one contrast on shared queries where the
    languages' query ids match without their prefixes (parallel data), else independent parts."""
    id_sets = [tables.query_ids(pd.concat(levels), parallel=True) for levels, _ in entries]
    if all(ids == id_sets[0] for ids in id_sets[1:]):
        cells, weights = [], []
        for (levels, w), a in zip(entries, coefficients):
            cells += tables.cells(levels, parallel=True)
            weights += list(a * np.asarray(w))
        return contrast_parts(cells, weights, pool=True), "paired by query"
    parts = [contrast_parts(tables.cells(levels), w, pool=True) for levels, w in entries]
    return combine(parts, coefficients), "independent queries"


def _language_contrasts(
    tables: _CellTables, results: pd.DataFrame, trends: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Language x p interactions (delta of deltas per pair of languages, at each p both ran, and the difference
    of their slopes over the levels both ran where that is not the last delta again, as with p = 0, .5, 1) and
    the low- vs high-resource contrast of the slope."""
    interactions: list[dict[str, Any]] = []
    contrasts: list[dict[str, Any]] = []
    trend_frame = pd.DataFrame(trends)
    if trend_frame.empty:
        return interactions, contrasts
    for (model, stage, variant), block in trend_frame.groupby(["model", "stage", "variant"], sort=False):
        languages = list(dict.fromkeys(block.language))
        levels_of = {
            language: {
                float(p)
                for p in tables.results[
                    (tables.results.model == model)
                    & (tables.results.stage == stage)
                    & (tables.results.language == language)
                    & (tables.results.variant == variant)
                ].hard_proportion.dropna()
            }
            | {0.0}
            for language in languages
        }

        def cells_of(language: str, proportions: list[float]) -> list[pd.DataFrame]:
            group = (model, stage, language, variant)
            found = _baseline(tables, group)
            assert found is not None  # a trend exists for the language, so does its p = 0
            return [found[1] if p == 0.0 else tables.rows(group, p) for p in proportions]

        def entry(language: str, weights: dict[float, float]) -> tuple[list[pd.DataFrame], np.ndarray]:
            """Every level of ``language`` (zero weight where not named: they pool the seed level)."""
            levels = sorted(levels_of[language])
            return cells_of(language, levels), np.array([weights.get(p, 0.0) for p in levels])

        for first, second in itertools.combinations(languages, 2):
            common = sorted(levels_of[first] & levels_of[second])
            if len(common) < 2:
                continue
            family = []
            for proportion in common[1:]:
                entries = [entry(language, {proportion: 1.0, 0.0: -1.0}) for language in (first, second)]
                parts, pairing = _language_parts(tables, entries, [1.0, -1.0])
                result = estimate(parts)
                family.append(
                    {
                        "model": model,
                        "stage": stage,
                        "variant": variant,
                        "language": first,
                        "other_language": second,
                        "contrast": f"delta at p={proportion:g}",
                        **_estimate_columns(result, f"difference_{METRIC}"),
                        "query_pairing": pairing,
                    }
                )
            weights = slope_weights(common)
            end_to_end = np.zeros(len(common))
            end_to_end[[0, -1]] = np.array([-1.0, 1.0]) / (common[-1] - common[0])
            if not np.allclose(weights, end_to_end):  # three equally spaced levels: the slope is the last delta
                entries = [entry(language, dict(zip(common, weights))) for language in (first, second)]
                parts, pairing = _language_parts(tables, entries, [1.0, -1.0])
                family.append(
                    {
                        "model": model,
                        "stage": stage,
                        "variant": variant,
                        "language": first,
                        "other_language": second,
                        "contrast": "slope over p=" + " ".join(f"{p:g}" for p in common),
                        **_estimate_columns(estimate(parts), f"difference_{METRIC}"),
                        "query_pairing": pairing,
                    }
                )
            for row, adjusted in zip(family, holm([r["p_value"] for r in family])):
                row["p_holm"] = adjusted
            interactions += family
        classes = {language: resource_class(block[block.language == language].low_resource) for language in languages}
        unknown = [language for language, low_resource in classes.items() if low_resource is None]
        if unknown:
            log.warning(
                "%s %s %s: no low_resource recorded for %s (metrics.json, config.yaml, conf/language): left out of the "
                "low- vs high-resource contrast",
                model,
                stage,
                variant,
                ", ".join(unknown),
            )
        low = [language for language, low_resource in classes.items() if low_resource is True]
        high = [language for language, low_resource in classes.items() if low_resource is False]
        languages = low + high
        if not low or not high:
            continue
        common = sorted(set.intersection(*(levels_of[language] for language in languages)))
        if len(common) < 2:
            continue
        weights = slope_weights(common)
        entries = [entry(language, dict(zip(common, weights))) for language in [*low, *high]]
        coefficients = [1.0 / len(low)] * len(low) + [-1.0 / len(high)] * len(high)
        parts, pairing = _language_parts(tables, entries, coefficients)
        contrasts.append(
            {
                "model": model,
                "stage": stage,
                "variant": variant,
                "low_resource": " ".join(low),
                "high_resource": " ".join(high),
                "proportions": " ".join(f"{p:g}" for p in common),
                **_estimate_columns(estimate(parts), f"slope_difference_{METRIC}"),
                "query_pairing": pairing,
            }
        )
    return interactions, contrasts


_ESTIMATE = ["p_value", "ci_low", "ci_high", "seeds", "queries", "se", "df", "seed_level", "seed_ids", "gives_verdict"]
_SECOND = [f"{SECOND_METRIC}_ci_low", f"{SECOND_METRIC}_ci_high", f"{SECOND_METRIC}_p_value"]
TEST_COLUMNS = [
    *GROUP[:3],
    "hard_proportion",
    f"delta_{METRIC}",
    "p_value",
    "p_holm",
    *_ESTIMATE[1:],
    "p_tost",
    "wins",
    "ties",
    "losses",
    f"delta_{SECOND_METRIC}",
    *_SECOND,
    "variant",
    "baseline_variant",
    "note",
]
TREND_COLUMNS = [
    *GROUP,
    "baseline_variant",
    "proportions",
    "slope",
    *_ESTIMATE,
    "curvature",
    "curvature_ci_low",
    "curvature_ci_high",
    "curvature_p_value",
    f"slope_{SECOND_METRIC}",
    *_SECOND,
    "equivalence_margin",
    "verdict_kind",
    "verdict",
    "low_resource",
]
EFFECT_COLUMNS = [
    *GROUP,
    "reference_variant",
    "hard_proportion",
    f"delta_{METRIC}",
    "p_holm",
    *_ESTIMATE,
    "p_tost",
    "wins",
    "ties",
    "losses",
    f"delta_{SECOND_METRIC}",
    *_SECOND,
    "note",
]
INTERACTION_COLUMNS = [
    "model",
    "stage",
    "variant",
    "language",
    "other_language",
    "contrast",
    f"difference_{METRIC}",
    "p_holm",
    *_ESTIMATE,
    "query_pairing",
]
RESOURCE_COLUMNS = [
    "model",
    "stage",
    "variant",
    "low_resource",
    "high_resource",
    "proportions",
    f"slope_difference_{METRIC}",
    *_ESTIMATE,
    "query_pairing",
]
