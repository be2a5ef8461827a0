"""Aggregate sweep folders: results.csv, the analysis tables, results.md and the plots, written as one set.

python -m mdr.reporting.aggregate outputs/hardneg_sweep/multiruns/<time>
python -m mdr.reporting.aggregate outputs/hardneg_sweep          # the latest multirun under it
python -m mdr.reporting.aggregate DIR [DIR ...] --out OUT        # several sweep folders as one
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import Any

import pandas as pd

from mdr.reporting.analysis import EQUIVALENCE_MARGIN, Analysis, analyse, compare_schedules, sort_results
from mdr.reporting.collect import DEFAULT_VARIANT, cell_means, collect, resolve_sweep_dir
from mdr.reporting.integrity import METRIC, metric_at
from mdr.reporting.plots import plot, plot_answer
from mdr.reporting.pool_diagnostics import report_section as pool_diagnostics_section
from mdr.reporting.report import cell_means_markdown, markdown_report, means_markdown, schedules_markdown
from mdr.reporting.report_set import LAST, MANIFEST, staged_report
from mdr.utils.io import atomic_write_text

__all__ = ["aggregate", "collect", "compare_schedules", "main"]

PARTITION = ["data", "split", "depth"]  # runs on other data, splits or depths are analysed apart
TABLE_FILES = {"cells": "cells.csv", "tests": "significance.csv", "trends": "trends.csv"}  # always written
REPORT_FILES = (  # every file a report set can hold (globs): what a new set replaces in the report folder
    *(LAST, MANIFEST, "results.csv", "duplicates.csv", "schedules.csv", "cells_depth*.csv"),
    *(TABLE_FILES.get(field.name, f"{field.name}.csv") for field in fields(Analysis)),
    *("mrr_vs_proportion*.png", "answer*.png", "delta_vs_proportion*.png"),  # the last: answer.png's predecessor
)
PROBLEM_TITLES = {
    ("failed", "missing"): "Failed and missing jobs",
    ("invalid",): "Invalid runs (not counted)",
    ("conflict",): "Conflicts: folders of one config with different numbers (none counted)",
    ("duplicate",): "Duplicates (counted once)",
}


def _sweep_dirs(sweep_dirs: str | Path | list[str] | list[Path]) -> list[Path]:
    return [resolve_sweep_dir(path) for path in (sweep_dirs if isinstance(sweep_dirs, list) else [sweep_dirs])]


def _partitions(results: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(heading, runs) per (data, split, depth); no heading for a single partition at depth 100."""
    groups = list(results.groupby(PARTITION, sort=True, dropna=False))
    if len(groups) == 1 and metric_at(groups[0][0][2]) == METRIC:
        return [("", groups[0][1])]
    splits = results.split.nunique(dropna=False) > 1
    return [
        (f"## data={data}, {f'split={split}, ' if splits else ''}evaluation depth={depth}", rows)
        for (data, split, depth), rows in groups
    ]


def aggregate(
    sweep_dirs: str | Path | list[str] | list[Path],
    equivalence_margin: float = EQUIVALENCE_MARGIN,
    out: str | Path | None = None,
    wandb: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write one sweep folder's report set (into it) or several's as one (into ``out``), logged to W&B with ``wandb``
    settings; returns the job counts, ``status``, ``table``, ``plots``, ``headline`` and ``verdicts``."""
    roots = _sweep_dirs(sweep_dirs)
    if out is None and len(roots) > 1:
        raise ValueError(f"{len(roots)} sweep folders: say where the combined report goes (--out)")
    target = Path(out) if out is not None else roots[0]
    results, problems = collect(roots if len(roots) > 1 else roots[0])
    counts = {status: int((problems.status == status).sum()) for status in ("failed", "missing", "invalid")}
    summary: dict[str, Any] = {
        "sweep_dir": str(roots[0]) if len(roots) == 1 else [str(root) for root in roots],
        "completed": len(results),
        **counts,
        **{f"{status}s": int((problems.status == status).sum()) for status in ("conflict", "duplicate")},
    }
    status = f"{summary['completed']} completed, {summary['failed']} failed, {summary['missing']} missing."
    if summary["invalid"] or summary["duplicates"]:
        status += f" {summary['invalid']} invalid (not counted), {summary['duplicates']} duplicate(s) (counted once)."
    status += f" {summary['conflicts']} run(s) in conflict (not counted)." if summary["conflicts"] else ""
    summary["status"] = status
    sources = [str(root) for root in roots]
    heading = [f"# Results: {', '.join(sources)}", "", status, ""]
    with staged_report(target, sources, REPORT_FILES) as staging:
        tables, plots, headlines = _write_report(results, problems, heading, staging, equivalence_margin, target)
    plots = [target / path.name for path in plots]  # where the set now is
    if plots:
        summary["plot"], summary["plots"] = str(plots[0]), [str(path) for path in plots]
    if "trends" in tables:
        summary["verdicts"] = tables["trends"].verdict.tolist()
    summary["table"] = str(target / LAST)
    summary["headline"] = "\n\n".join(headlines)
    if wandb is not None:
        from mdr.reporting.wandb_summary import publish_summary

        summary["wandb"] = publish_summary(wandb, tables, plots, summary)
    return summary


def _write_report(
    results: pd.DataFrame, problems: pd.DataFrame, heading: list[str], folder: Path, margin: float, report_dir: Path
) -> tuple[dict[str, pd.DataFrame], list[Path], list[str]]:
    """Write the report into ``folder`` (``report_dir``'s staging folder); returns (tables, plots, headlines)."""
    sections = list(heading)
    parts: dict[str, list[pd.DataFrame]] = {}
    plots: list[Path] = []
    headlines: list[str] = []
    if not results.empty:
        results = sort_results(results)
        atomic_write_text(folder / "results.csv", results.drop(columns=["per_query_file"]).to_csv(index=False))
        partitions = _partitions(results)
        for index, (heading, rows) in enumerate(partitions):
            depth = int(rows.depth.iloc[0])
            partition = {key: rows[key].iloc[0] for key in PARTITION}
            if metric_at(depth) != METRIC:  # measured at another depth: the analysis is of MRR@100, so means only
                means = cell_means(rows, depth)
                atomic_write_text(folder / f"cells_depth{depth}.csv", means.to_csv(index=False))
                sections += [heading, "", means_markdown(means, depth), ""]
                continue
            analysis = analyse(rows, equivalence_margin=margin)
            for field in fields(analysis):  # every table of the analysis, with the partition's data and depth
                parts.setdefault(field.name, []).append(getattr(analysis, field.name).assign(**partition))
            headlines.append("\n".join(filter(None, [heading, cell_means_markdown(analysis)])))
            sections += [*([heading, ""] if heading else []), markdown_report(analysis), ""]
            if rows.stage.nunique() > 1:  # several stage schedules: compare them per language
                comparison = compare_schedules(rows, equivalence_margin=margin).assign(**partition)
                parts.setdefault("schedules", []).append(comparison)
                sections += [schedules_markdown(comparison), ""]
            name = "mrr_vs_proportion.png" if len(partitions) == 1 else f"mrr_vs_proportion_{index + 1}.png"
            means = plot(analysis.cells, folder / name)
            answer_path = folder / name.replace("mrr_vs_proportion", "answer")
            answer = plot_answer(analysis.tests, analysis.trends, answer_path, margin)
            plots = [path for path in (answer, *plots, means) if path]  # the answer first: README's, W&B's first
    tables = {field: pd.concat(frames, ignore_index=True) for field, frames in parts.items()}
    for field, frame in tables.items():  # cells, significance, trends always; the others when not empty
        if field in TABLE_FILES or not frame.empty:
            atomic_write_text(folder / TABLE_FILES.get(field, f"{field}.csv"), frame.to_csv(index=False))
    if not (duplicates := problems[problems.status == "duplicate"]).empty:
        atomic_write_text(folder / "duplicates.csv", duplicates.to_csv(index=False))
    sections += pool_diagnostics_section(report_dir, tables.get("tests"), DEFAULT_VARIANT)
    for statuses, title in PROBLEM_TITLES.items():
        rows = problems[problems.status.isin(statuses)]
        sections += [f"### {title}", "", rows.to_markdown(index=False), ""] if not rows.empty else []
    atomic_write_text(folder / LAST, "\n".join(sections))
    return tables, plots, headlines


def exit_status(summary: dict[str, Any]) -> int:
    """1 when a job failed, is missing, is invalid or in a conflict, else 0 (duplicates are counted once)."""
    return 1 if summary["failed"] or summary["missing"] or summary.get("invalid") or summary.get("conflicts") else 0


def main(argv: list[str] | None = None) -> int:
    """CLI: aggregate, print the Markdown report; exit 1 if any job failed, is missing, invalid or in a conflict."""
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
    summary = aggregate(args.sweep_dir, args.equivalence_margin, args.out, wandb)
    print(Path(summary["table"]).read_text(encoding="utf-8"))
    return exit_status(summary)


if __name__ == "__main__":
    raise SystemExit(main())
