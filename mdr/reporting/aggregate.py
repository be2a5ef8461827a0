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
from pathlib import Path
from typing import Any

from mdr.reporting.analysis import analyse, compare_schedules, sort_results
from mdr.reporting.collect import collect, expected_jobs, job_outcome, resolve_sweep_dir, run_variant
from mdr.reporting.plots import plot
from mdr.reporting.report import markdown_report, schedules_markdown
from mdr.utils.io import atomic_write_text

__all__ = ["aggregate", "collect", "compare_schedules", "expected_jobs", "job_outcome", "main", "run_variant"]


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
