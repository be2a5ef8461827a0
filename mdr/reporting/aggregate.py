"""Aggregate a multirun folder: results.csv, cells.csv, significance.csv, trends.csv, results.md and a plot.

    python -m mdr.reporting.aggregate outputs/hardneg_sweep/multiruns/<time>
    python -m mdr.reporting.aggregate outputs/hardneg_sweep          # the latest multirun under it

The steps live in their own modules: :mod:`mdr.reporting.collect` reads the run folders into a results frame
(which jobs completed, failed or are missing; variants), :mod:`mdr.reporting.analysis` computes cells, deltas
against p = 0, trends, variant effects and schedule comparisons, :mod:`mdr.reporting.report` writes the
Markdown and :mod:`mdr.reporting.plots` the plot. This module runs them in order and holds the CLI.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import Any

import pandas as pd

from mdr.reporting.analysis import EQUIVALENCE_MARGIN, analyse, compare_schedules, sort_results
from mdr.reporting.collect import (
    METRIC,
    cell_means,
    collect,
    expected_jobs,
    job_outcome,
    metric_at,
    resolve_sweep_dir,
    run_variant,
)
from mdr.reporting.plots import plot, plot_deltas
from mdr.reporting.pool_diagnostics import report_section as pool_diagnostics_section
from mdr.reporting.report import headline, markdown_report, means_markdown, schedules_markdown
from mdr.utils.io import atomic_write_text

__all__ = ["aggregate", "collect", "compare_schedules", "expected_jobs", "job_outcome", "main", "run_variant"]


PARTITION = ["data", "split", "depth"]
"""Runs on different data, evaluated on different splits or at different depths are analysed apart (each its own
set of tables)."""

TABLE_FILES = {"cells": "cells.csv", "tests": "significance.csv", "trends": "trends.csv"}
"""Analysis tables always written, by :class:`mdr.reporting.analysis.Analysis` field."""


def _sweep_dirs(sweep_dirs: str | Path | list[str] | list[Path]) -> list[Path]:
    given = sweep_dirs if isinstance(sweep_dirs, list) else [sweep_dirs]
    return [resolve_sweep_dir(path) for path in given]


def _partitions(results: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(heading, runs) per (data, split, evaluation depth); a single partition at depth 100 has no heading, and
    the heading names the split only when the runs were evaluated on more than one."""
    groups = list(results.groupby(PARTITION, sort=True, dropna=False))
    if len(groups) == 1 and metric_at(groups[0][0][2]) == METRIC:
        return [("", groups[0][1])]
    splits = results.split.nunique(dropna=False) > 1
    return [
        (f"## data={data}, {f'split={split}, ' if splits else ''}evaluation depth={depth}", rows)
        for (data, split, depth), rows in groups
    ]


def _with_partition(frame: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(**{key: rows[key].iloc[0] for key in PARTITION})


def _problem_sections(problems: pd.DataFrame) -> list[str]:
    sections: list[str] = []
    titles = {
        ("failed", "missing"): "Failed and missing jobs",
        ("invalid",): "Invalid runs (not counted)",
        ("duplicate",): "Duplicates (counted once)",
    }
    for statuses, title in titles.items():
        rows = problems[problems.status.isin(statuses)]
        if not rows.empty:
            sections += [f"### {title}", "", rows.to_markdown(index=False), ""]
    return sections


def aggregate(
    sweep_dirs: str | Path | list[str] | list[Path],
    equivalence_margin: float = EQUIVALENCE_MARGIN,
    out: str | Path | None = None,
    wandb: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the tables and plot of one sweep folder (into it) or of several analysed as one (into ``out``).

    Args:
        sweep_dirs: a sweep folder, or a list of them: their runs form one results frame, in which a cell and
            seed found in two folders is a duplicate (counted once), or an invalid run where the two configs
            differ in a key that changes results (:func:`mdr.reporting.collect.drop_duplicates`).
        out: where the files go; default the sweep folder (required for several).
        wandb: ``wandb.init`` settings (:func:`mdr.reporting.wandb_summary.summary_settings`): log the tables and
            plots to a summary run of the sweep's W&B group as well; None: no W&B.

    Returns:
        Counts (completed, failed, missing, invalid, duplicates), ``table`` (results.md), ``plot``, ``headline``
        (results.md's table of cell means), ``verdicts``.
    """
    roots = _sweep_dirs(sweep_dirs)
    if out is None and len(roots) > 1:
        raise ValueError(f"{len(roots)} sweep folders: say where the combined report goes (--out)")
    target = Path(out) if out is not None else roots[0]
    target.mkdir(parents=True, exist_ok=True)
    results, problems = collect(roots if len(roots) > 1 else roots[0])
    counts = {status: int((problems.status == status).sum()) for status in ("failed", "missing", "invalid")}
    summary: dict[str, Any] = {
        "sweep_dir": str(roots[0]) if len(roots) == 1 else [str(root) for root in roots],
        "completed": len(results),
        **counts,
        "duplicates": int((problems.status == "duplicate").sum()),
    }
    line = f"{summary['completed']} completed, {summary['failed']} failed, {summary['missing']} missing."
    if summary["invalid"] or summary["duplicates"]:
        line += f" {summary['invalid']} invalid (not counted), {summary['duplicates']} duplicate(s) (counted once)."
    summary["status"] = line
    sections = [f"# Results: {', '.join(str(root) for root in roots)}", "", line, ""]
    tables: dict[str, pd.DataFrame] = {}
    plots: list[Path] = []
    headlines: list[str] = []
    if not results.empty:
        results = sort_results(results)
        atomic_write_text(target / "results.csv", results.drop(columns=["per_query_file"]).to_csv(index=False))
        parts: dict[str, list[pd.DataFrame]] = {}
        partitions = _partitions(results)
        for index, (heading, rows) in enumerate(partitions):
            depth = int(rows.depth.iloc[0])
            if metric_at(depth) != METRIC:  # measured at another depth: the analysis is of MRR@100, so means only
                means = cell_means(rows, depth)
                atomic_write_text(target / f"cells_depth{depth}.csv", means.to_csv(index=False))
                sections += [heading, "", means_markdown(means, depth), ""]
                continue
            analysis = analyse(rows, equivalence_margin=equivalence_margin)
            for field in fields(analysis):  # every table of the analysis, with the partition's data and depth
                parts.setdefault(field.name, []).append(_with_partition(getattr(analysis, field.name), rows))
            report = markdown_report(analysis)
            headlines.append("\n".join(filter(None, [heading, headline(report)])))
            sections += [heading, ""] if heading else []
            sections += [report, ""]
            if rows.stage.nunique() > 1:  # several stage schedules: compare them per language
                comparison = _with_partition(compare_schedules(rows, equivalence_margin=equivalence_margin), rows)
                parts.setdefault("schedules", []).append(comparison)
                sections += [schedules_markdown(comparison), ""]
            name = "mrr_vs_proportion.png" if len(partitions) == 1 else f"mrr_vs_proportion_{index + 1}.png"
            plots.append(plot(analysis.cells, target / name))
            deltas = plot_deltas(analysis.tests, target / name.replace("mrr_vs", "delta_vs"), equivalence_margin)
            plots += [deltas] if deltas else []
        tables = {field: pd.concat(frames, ignore_index=True) for field, frames in parts.items()}
        for field, frame in tables.items():  # cells, significance, trends always; the others when not empty
            if field in TABLE_FILES or not frame.empty:
                atomic_write_text(target / TABLE_FILES.get(field, f"{field}.csv"), frame.to_csv(index=False))
        if plots:
            summary["plot"] = str(plots[0])
            summary["plots"] = [str(path) for path in plots]
        if "trends" in tables:
            summary["verdicts"] = tables["trends"].verdict.tolist()
    duplicates = problems[problems.status == "duplicate"]
    if not duplicates.empty:
        atomic_write_text(target / "duplicates.csv", duplicates.to_csv(index=False))
    sections += pool_diagnostics_section(target)  # when python -m mdr.pool_diagnostics wrote into the report folder
    sections += _problem_sections(problems)
    atomic_write_text(target / "results.md", "\n".join(sections))
    summary["table"] = str(target / "results.md")
    summary["headline"] = "\n\n".join(headlines)
    if wandb is not None:
        from mdr.reporting.wandb_summary import publish_summary

        summary["wandb"] = publish_summary(wandb, tables, plots, summary)
    return summary


def exit_status(summary: dict[str, Any]) -> int:
    """1 when a job failed, is missing or is invalid, else 0 (duplicates are counted once, not an error)."""
    return 1 if summary["failed"] or summary["missing"] or summary.get("invalid") else 0


def main(argv: list[str] | None = None) -> int:
    """CLI: aggregate, print the Markdown report; exit 1 if any job failed, is missing or is invalid."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", nargs="+", help="sweep folder(s); several are analysed as one")
    parser.add_argument("--out", help="where the report goes (default: the sweep folder; required for several)")
    parser.add_argument(
        "--equivalence-margin",
        type=float,
        default=EQUIVALENCE_MARGIN,
        help="TOST margin in MRR@100 units: verdicts say 'no effect larger than' it where TOST holds "
        "(hydra.callbacks.aggregate.equivalence_margin in a multirun; default %(default)s)",
    )
    parser.add_argument(
        "--wandb",
        action="store_true",
        help="also log the tables and plot to a summary run of the sweep's W&B group (settings from the first "
        "sweep's multirun.yaml logger.wandb; offline unless it says otherwise)",
    )
    args = parser.parse_args(argv)
    if len(args.sweep_dir) > 1 and not args.out:
        parser.error(f"{len(args.sweep_dir)} sweep folders: --out is required")
    wandb = None
    if args.wandb:
        from mdr.reporting.wandb_summary import settings_from_sweep

        wandb = settings_from_sweep(_sweep_dirs(args.sweep_dir)[0], args.out)
    summary = aggregate(
        args.sweep_dir if len(args.sweep_dir) > 1 else args.sweep_dir[0], args.equivalence_margin, args.out, wandb
    )
    print(Path(summary["table"]).read_text(encoding="utf-8"))
    return exit_status(summary)


if __name__ == "__main__":
    raise SystemExit(main())
