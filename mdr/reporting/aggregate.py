"""Aggregate a multirun folder: results.csv, cells.csv, significance.csv, trends.csv, results.md and a plot.

    python -m mdr.reporting.aggregate outputs/hardneg_sweep/multiruns/<time>
    python -m mdr.reporting.aggregate outputs/hardneg_sweep          # the latest multirun under it

A job's outcome is its newest record: ``metrics.json`` (completed) or ``failed.json`` (failed), by file
modification time, so a stale metrics.json older than a later failure counts as failed; a job folder with
neither (killed, still running) and a job the sweep asked for that never made a folder (from the sweep's
``multirun.yaml``) are missing. Failed and missing jobs are listed; the other jobs' results are kept.

A job evaluated on several languages (``evaluation.languages``: metrics.json ``per_language``) gives one row per
evaluation language; ``language`` is the language evaluated. Cells are (model, stage, language, variant,
hard_proportion), where the variant says how the run was trained beyond p (``mask=on|off`` for
``loss.mask_false_negatives``, ``denoise=on|off`` for denoised hard negatives, and ``p_stages=all`` when a
multi-stage schedule applied p to every stage, ``stage.proportion_applies_to``), so only like is compared with
like. Each proportion is compared with p = 0 of the same variant
(else of the same masking without denoising, which p = 0 never uses, else of the default variant; the table
says which), with the seed-aware two-level bootstrap of :mod:`mdr.reporting.significance`; Holm's
adjustment runs within each (model, stage, language, variant). A trend (least-squares slope of MRR@100 in
p) and a one-line verdict summarise each; non-default variants are also compared with the default variant
at the same p. When the sweep holds several stage schedules, a table compares them per (model, language),
each against ``target_only`` (else the first schedule) with the same bootstrap, Holm within (model, language).
"""

from __future__ import annotations

import argparse
import json
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from mdr.reporting.significance import Cell, Estimate, bootstrap_contrast, holm, slope_weights, verdict
from mdr.utils.io import atomic_write_text

log = logging.getLogger(__name__)

METRIC = "mrr@100"
METRIC_COLUMNS = ["mrr@100", "recall@100", "ndcg@10"]
GROUP = ["model", "stage", "language", "variant"]
KEYS = [*GROUP, "hard_proportion", "seed"]
DEFAULT_VARIANT = "mask=on,denoise=off"
ALPHA = 0.05
PROBLEM_COLUMNS = ["job", "status", "error", "overrides"]


def resolve_sweep_dir(path: str | Path) -> Path:
    """``path`` itself if it holds job folders (or a sweep's ``multirun.yaml``), else its latest multirun."""
    root = Path(path)
    if any(root.glob("*/.hydra")) or (root / "multirun.yaml").is_file():
        return root
    candidates = sorted((root / "multiruns").glob("*")) if (root / "multiruns").is_dir() else []
    if not candidates:
        raise FileNotFoundError(f"{root}: no job folders (*/.hydra) and no multiruns/ inside")
    return candidates[-1]


def variant_name(mask: bool | None, denoised: bool, proportion_stages: str | None = None) -> str:
    """``mask=on|off|n/a,denoise=on|off`` (``n/a``: the run trained nothing), plus ``,p_stages=all`` when p
    applied to every stage of a multi-stage schedule."""
    masking = "n/a" if mask is None else ("on" if mask else "off")
    suffix = ",p_stages=all" if proportion_stages == "all" else ""
    return f"mask={masking},denoise={'on' if denoised else 'off'}{suffix}"


def proportion_stages(metrics: dict[str, Any]) -> str | None:
    """``stage.proportion_applies_to`` of a run whose schedule trained more than one stage, else None."""
    schedule = metrics.get("schedule")
    if not isinstance(schedule, dict) or len(schedule.get("stages") or []) < 2:
        return None
    return str(metrics.get("proportion_applies_to") or schedule.get("proportion_applies_to") or "last")


def evaluations(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry (language, low_resource, num_queries, metrics, per_query_file) per language a job evaluated.

    metrics.json's ``per_language`` sections (``evaluation.languages``), else its top-level fields.
    """
    sections = metrics.get("per_language")
    if isinstance(sections, dict) and sections:
        return [{"language": code, **section} for code, section in sections.items()]
    names = ("low_resource", "num_queries", "metrics", "per_query_file")
    return [{"language": metrics.get("language"), **{name: metrics.get(name) for name in names}}]


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    return loaded if isinstance(loaded, dict) else {}


def _lookup(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def run_variant(metrics: dict[str, Any], config: dict[str, Any]) -> tuple[bool | None, bool]:
    """(masked in-batch false negatives?, denoised hard negatives?) of one run.

    From metrics.json (``loss.mask_false_negatives`` or the training summary's, ``denoised`` or
    ``denoise``), else from the run's resolved ``config.yaml``. A trained run that records no masking
    predates the option, whose absence meant no masking; a run that trained nothing has mask None.
    """
    train = metrics.get("train")
    if not isinstance(train, dict):
        mask = None
    else:
        candidates = [_lookup(metrics, "loss.mask_false_negatives"), train.get("mask_false_negatives")]
        candidates.append(_lookup(config, "loss.mask_false_negatives"))
        mask = next((bool(value) for value in candidates if value is not None), False)
    if "denoised" in metrics:
        denoised = bool(metrics["denoised"])
    elif "denoise" in metrics:
        denoised = bool(metrics["denoise"])
    elif isinstance(train, dict) and "denoise" in train:
        denoised = bool(train["denoise"])
    else:
        hard = isinstance(train, dict) and int(train.get("num_hard") or 0) > 0
        denoised = hard and bool(_lookup(config, "negatives.denoise.enabled"))
    return mask, denoised


def _job_overrides(job: Path) -> list[str] | None:
    path = job / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [str(item) for item in loaded] if isinstance(loaded, list) else []


def expected_jobs(sweep_dir: Path) -> list[list[str]] | None:
    """Each job's overrides as the basic sweeper expands ``multirun.yaml``; None when that cannot be known."""
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return None
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from omegaconf import OmegaConf

        config = OmegaConf.load(path)
        sweeper = config.hydra.sweeper
        if not str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
            log.warning("%s: sweeper %s: cannot tell which jobs it launched", path, sweeper.get("_target_"))
            return None
        params = [f"{key}={value}" for key, value in (sweeper.get("params") or {}).items()]
        arguments = params + [str(item) for item in config.hydra.overrides.task]
        overrides = OverridesParser.create().parse_overrides(arguments)
        return [list(job) for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]
    except Exception as error:  # an exotic sweep (e.g. a glob over config groups): say so, judge by folders
        log.warning(
            "%s: cannot expand the sweep (%s: %s); jobs without a folder go unnoticed",
            path,
            type(error).__name__,
            error,
        )
        return None


def job_outcome(job: Path) -> str:
    """``completed``, ``failed`` or ``missing``: the newest of metrics.json / failed.json decides (ties: failed)."""
    records = {name: job / f"{name}.json" for name in ("metrics", "failed")}
    times = {name: path.stat().st_mtime_ns for name, path in records.items() if path.is_file()}
    if not times:
        return "missing"
    if "failed" in times and times["failed"] >= times.get("metrics", -1):
        return "failed"
    return "completed"


def collect(sweep_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(completed runs, failed or missing jobs) under ``sweep_dir``."""
    rows: list[dict[str, Any]] = []
    problems: list[dict[str, Any]] = []
    seen: set[tuple[str, ...]] = set()
    for job in sorted(p.parent for p in sweep_dir.glob("*/.hydra")):
        overrides = _job_overrides(job)
        if overrides is not None:
            seen.add(tuple(sorted(overrides)))
        cell = " ".join(overrides or [])
        outcome = job_outcome(job)
        if outcome == "missing":
            problems.append({"job": job.name, "status": "missing", "error": "", "overrides": cell})
            continue
        if outcome == "failed":
            error = _failure_message(job / "failed.json")
            if (job / "metrics.json").is_file():
                error += " (an older metrics.json in this folder was ignored)"
            problems.append({"job": job.name, "status": "failed", "error": error, "overrides": cell})
            continue
        if (job / "failed.json").is_file():
            log.info("%s: failed.json is older than metrics.json; the job counts as completed", job)
        try:
            metrics = json.loads((job / "metrics.json").read_text(encoding="utf-8"))
            mask, denoised = run_variant(metrics, _read_yaml(job / "config.yaml"))
            stages = proportion_stages(metrics)
            found = []
            for evaluated in evaluations(metrics):  # a row per (job, evaluation language)
                per_query = job / evaluated["per_query_file"]
                if not per_query.is_file():
                    raise FileNotFoundError(f"{per_query} (named by metrics.json) does not exist")
                scores = evaluated["metrics"]
                found.append(
                    {
                        **{key: metrics.get(key) for key in ("model", "stage", "hard_proportion", "seed")},
                        "language": evaluated["language"],
                        "variant": variant_name(mask, denoised, stages),
                        **{name: scores[name] for name in METRIC_COLUMNS if name in scores},
                        "low_resource": evaluated.get("low_resource"),
                        "num_queries": evaluated["num_queries"],
                        "mask_false_negatives": mask,
                        "denoised": denoised,
                        "proportion_applies_to": stages,
                        "job": job.name,
                        "per_query_file": str(per_query),
                    }
                )
            rows += found
        except (OSError, ValueError, KeyError, TypeError) as error:
            problems.append(
                {"job": job.name, "status": "failed", "error": f"unreadable result: {error}", "overrides": cell}
            )
    expected = expected_jobs(sweep_dir)
    for overrides in expected or []:
        if tuple(sorted(overrides)) not in seen:
            problems.append(
                {
                    "job": "",
                    "status": "missing",
                    "error": "no job folder (never started)",
                    "overrides": " ".join(overrides),
                }
            )
    return pd.DataFrame(rows), pd.DataFrame(problems, columns=PROBLEM_COLUMNS)


def _failure_message(path: Path) -> str:
    try:
        return str(json.loads(path.read_text(encoding="utf-8")).get("error", ""))
    except (OSError, ValueError) as error:
        return f"unreadable failed.json ({error})"


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


def _interval(row: pd.Series, name: str) -> str:
    return f"{row[name]:+.4f} [{row.ci_low:+.4f}, {row.ci_high:+.4f}]"


def _p(value: float) -> str:
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def markdown_report(analysis: Analysis) -> str:
    """Tables: MRR@100 per cell, deltas against p = 0, trends and verdicts, variant effects."""
    cells, tests = analysis.cells, analysis.tests
    lines: list[str] = []
    for (model, stage), block in cells.groupby(["model", "stage"], sort=False):
        proportions = sorted(block.hard_proportion.unique())
        lines += [
            f"### MRR@100, model={model}, stage={stage}",
            "",
            "| language | variant | "
            + " | ".join(f"p={p:g}" if not pd.isna(p) else "p=n/a" for p in proportions)
            + " |",
            "|---|---|" + "---:|" * len(proportions),
        ]
        for (language, variant), rows in block.groupby(["language", "variant"], sort=False):
            texts = []
            for proportion in proportions:
                hit = rows[same_proportion(rows.hard_proportion, proportion)]
                if hit.empty:
                    texts.append("–")
                    continue
                row = hit.iloc[0]
                spread = f" ± {row['std']:.4f}" if row.n > 1 else ""
                test = tests[
                    (tests.model == model)
                    & (tests.stage == stage)
                    & (tests.language == language)
                    & (tests.variant == variant)
                    & same_proportion(tests.hard_proportion, proportion)
                ]
                mark = "*" if not test.empty and test.p_holm.iloc[0] < ALPHA else ""
                texts.append(f"{row['mean']:.4f}{spread}{mark} (n={row.n})")
            low = " (low-resource)" if rows.low_resource.iloc[0] else ""
            lines.append(f"| {language}{low} | {variant} | " + " | ".join(texts) + " |")
        lines.append("")
    lines += [
        "Mean ± std over seeds (n = seeds). `*`: different from p=0 at Holm-adjusted p < 0.05 (two-level "
        "bootstrap over training seeds and test queries; Holm within each model, stage, language and variant).",
        "",
    ]
    if not tests.empty:
        lines += [
            "### MRR@100 against p=0 (95% intervals: two-level bootstrap over seeds and queries)",
            "",
            "| model | stage | language | variant | p=0 from | p | Δ MRR@100 [95% interval] | p-value | p (Holm) "
            "| seeds | queries | note |",
            "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for _, row in tests.iterrows():
            baseline = "same" if row.baseline_variant == row.variant else row.baseline_variant
            lines.append(
                f"| {row.model} | {row.stage} | {row.language} | {row.variant} | {baseline} | "
                f"{row.hard_proportion:g} | {_interval(row, f'delta_{METRIC}')} | {_p(row.p_value)} | "
                f"{_p(row.p_holm)} | {row.seeds} | {row.queries} | {row.note} |"
            )
        lines.append("")
    if not analysis.trends.empty:
        lines += [
            "### Trend (least-squares slope of MRR@100 in p, 95% interval) and verdict",
            "",
            "| model | stage | language | variant | proportions | slope [95% interval] | p-value | verdict |",
            "|---|---|---|---|---|---:|---:|---|",
        ]
        for _, row in analysis.trends.iterrows():
            lines.append(
                f"| {row.model} | {row.stage} | {row.language} | {row.variant} | {row.proportions} | "
                f"{_interval(row, 'slope')} | {_p(row.p_value)} | {row.verdict} |"
            )
        lines += [
            "",
            "Verdict: *help* (*hurt*) when the slope's interval lies above (below) 0 or some proportion differs "
            "from p=0 upward (downward) at Holm-adjusted p < 0.05, and nothing points the other way; *mixed* "
            "when signals disagree; else *no detectable effect* at the seeds run.",
            "",
        ]
    if not analysis.variant_effects.empty:
        lines += [
            f"### Variants against {DEFAULT_VARIANT} at the same p",
            "",
            "| model | stage | language | variant | p | Δ MRR@100 [95% interval] | p-value | p (Holm) | seeds | note |",
            "|---|---|---|---|---:|---:|---:|---:|---:|---|",
        ]
        for _, row in analysis.variant_effects.iterrows():
            lines.append(
                f"| {row.model} | {row.stage} | {row.language} | {row.variant} | {row.hard_proportion:g} | "
                f"{_interval(row, f'delta_{METRIC}')} | {_p(row.p_value)} | {_p(row.p_holm)} | {row.seeds} | "
                f"{row.note} |"
            )
        lines.append("")
    return "\n".join(lines)


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


def schedules_markdown(comparison: pd.DataFrame) -> str:
    """The schedule comparison: mean ± std per language and schedule, then each difference from the reference."""
    lines: list[str] = []
    for model, block in comparison.groupby("model", sort=False):
        schedules = list(dict.fromkeys(block.schedule))
        lines += [
            f"### MRR@100 by stage schedule, model={model}",
            "",
            "| language | " + " | ".join(schedules) + " |",
            "|---|" + "---:|" * len(schedules),
        ]
        for language, rows in block.groupby("language", sort=False):
            texts = []
            for schedule in schedules:
                hit = rows[rows.schedule == schedule]
                if hit.empty:
                    texts.append("–")
                    continue
                row = hit.iloc[0]
                spread = f" ± {row['std']:.4f}" if row.n > 1 else ""
                mark = "*" if "p_holm" in row and not pd.isna(row.p_holm) and row.p_holm < ALPHA else ""
                texts.append(f"{row['mean']:.4f}{spread}{mark} (n={row.n})")
            low = " (low-resource)" if rows.low_resource.iloc[0] else ""
            lines.append(f"| {language}{low} | " + " | ".join(texts) + " |")
        lines.append("")
    tested = comparison[comparison.schedule != comparison.reference] if "p_value" in comparison else comparison[:0]
    lines += [
        "Mean ± std over seeds (n = seeds). `*`: different from the reference schedule at Holm-adjusted p < 0.05 "
        "(two-level bootstrap over training seeds and test queries; Holm within each model and language).",
        "",
    ]
    if not tested.empty:
        lines += [
            "| model | language | schedule | against | Δ MRR@100 [95% interval] | p-value | p (Holm) | seeds "
            "| queries |",
            "|---|---|---|---|---:|---:|---:|---:|---:|",
        ]
        for _, row in tested.iterrows():
            lines.append(
                f"| {row.model} | {row.language} | {row.schedule} | {row.reference} | "
                f"{_interval(row, f'delta_{METRIC}')} | {_p(row.p_value)} | {_p(row.p_holm)} | {int(row.seeds)} | "
                f"{int(row.queries)} |"
            )
        lines.append("")
    return "\n".join(lines)


def plot(cells: pd.DataFrame, path: Path) -> Path:
    """MRR@100 vs hard-negative proportion, one line per (language, variant), 95% bootstrap intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = list(cells.groupby(["model", "stage"], sort=False))
    figure, axes = plt.subplots(1, len(blocks), figsize=(5.5 * len(blocks), 4), squeeze=False)
    for axis, ((model, stage), block) in zip(axes[0], blocks):
        lines = list(block.groupby(["language", "variant"], sort=False))
        several_variants = block.variant.nunique() > 1
        for index, ((language, variant), rows) in enumerate(lines):
            rows = rows.sort_values("hard_proportion")
            dodge = 0.008 * (index - (len(lines) - 1) / 2)  # keep overlapping intervals apart
            errors = np.vstack([rows["mean"] - rows.ci_low, rows.ci_high - rows["mean"]]).clip(min=0)
            label = f"{language} {variant}" if several_variants else language
            axis.errorbar(rows.hard_proportion + dodge, rows["mean"], yerr=errors, marker="o", capsize=3, label=label)
        axis.set(title=f"{model} / {stage}", xlabel="proportion of mined hard negatives", ylabel="MRR@100")
        axis.grid(alpha=0.3)
        axis.legend(title="language", fontsize="small")
    figure.suptitle(
        "mean over seeds; bars: 95% interval of each mean (bootstrap over seeds and queries);\n"
        "differences against p=0 are paired by query and seed, hence tighter: see results.md",
        fontsize="small",
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    figure.savefig(tmp, dpi=120)
    plt.close(figure)
    tmp.replace(path)
    return path


def aggregate(sweep_dir: str | Path, trials: int = 10_000) -> dict[str, Any]:
    """Write the sweep's tables and plot into its folder; return counts and paths."""
    root = resolve_sweep_dir(sweep_dir)
    results, problems = collect(root)
    summary: dict[str, Any] = {
        "sweep_dir": str(root),
        "completed": len(results),
        "failed": int((problems.status == "failed").sum()),
        "missing": int((problems.status == "missing").sum()),
    }
    sections = [
        f"# Results: {root}",
        "",
        f"{summary['completed']} completed, {summary['failed']} failed, {summary['missing']} missing.",
        "",
    ]
    if not results.empty:
        results = sort_results(results)
        analysis = analyse(results, trials)
        atomic_write_text(root / "results.csv", results.drop(columns=["per_query_file"]).to_csv(index=False))
        atomic_write_text(root / "cells.csv", analysis.cells.to_csv(index=False))
        atomic_write_text(root / "significance.csv", analysis.tests.to_csv(index=False))
        atomic_write_text(root / "trends.csv", analysis.trends.to_csv(index=False))
        if not analysis.variant_effects.empty:
            atomic_write_text(root / "variant_effects.csv", analysis.variant_effects.to_csv(index=False))
        sections += [markdown_report(analysis), ""]
        if results.stage.nunique() > 1:  # several stage schedules: compare them per language
            comparison = compare_schedules(results, trials)
            atomic_write_text(root / "schedules.csv", comparison.to_csv(index=False))
            sections += [schedules_markdown(comparison), ""]
        summary["plot"] = str(plot(analysis.cells, root / "mrr_vs_proportion.png"))
        summary["verdicts"] = analysis.trends.verdict.tolist()
    if not problems.empty:
        sections += ["### Failed and missing jobs", "", problems.to_markdown(index=False), ""]
    atomic_write_text(root / "results.md", "\n".join(sections))
    summary["table"] = str(root / "results.md")
    return summary


def main(argv: list[str] | None = None) -> int:
    """CLI: aggregate, print the Markdown report; exit 1 if any job failed or is missing."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir")
    parser.add_argument("--trials", type=int, default=10_000, help="bootstrap replicates")
    args = parser.parse_args(argv)
    summary = aggregate(args.sweep_dir, args.trials)
    print(Path(summary["table"]).read_text(encoding="utf-8"))
    return 1 if summary["failed"] or summary["missing"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
