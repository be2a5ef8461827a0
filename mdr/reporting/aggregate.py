"""Aggregate sweep folders: results.csv, the analysis tables, results.md and the plots, written as one set (a
reader sees the old set or the new one complete: staged, then moved in with a manifest, results.md last).

python -m mdr.reporting.aggregate outputs/hardneg_sweep/multiruns/<time>
python -m mdr.reporting.aggregate outputs/hardneg_sweep          # the latest multirun under it
python -m mdr.reporting.aggregate DIR [DIR ...] --out OUT        # several sweep folders as one
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from mdr.reporting.analysis import EQUIVALENCE_MARGIN, Analysis, analyse, compare_schedules, sort_results
from mdr.reporting.collect import DEFAULT_VARIANT, METRIC, cell_means, collect, metric_at, resolve_sweep_dir
from mdr.reporting.plots import plot, plot_answer
from mdr.reporting.pool_diagnostics import report_section as pool_diagnostics_section
from mdr.reporting.report import cell_means_markdown, markdown_report, means_markdown, schedules_markdown
from mdr.utils.cache import file_sha256
from mdr.utils.io import atomic_write_json, atomic_write_text

__all__ = ["aggregate", "collect", "compare_schedules", "main"]

log = logging.getLogger(__name__)

LAST = "results.md"  # moved into place last: its presence says the set beside it is complete
MANIFEST = "report_manifest.json"  # each file of the set with its SHA-256, and the sweep folders it came from
STAGING_PREFIX = ".report-staging-"
HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)
TABLE_NAMES = {"tests": "significance"}  # W&B keys (under ``tables/``) of tables not named as such
TIMEOUT_S = 30  # seconds W&B may take to start or to finish the summary run
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


def manifest(staging: Path, sources: list[str]) -> dict[str, Any]:
    """The manifest of the files staged in ``staging`` (all but the manifest itself)."""
    files = {path.name: file_sha256(path) for path in sorted(staging.iterdir()) if path.name != MANIFEST}
    about = f"one report set, written by python -m mdr.reporting.aggregate; {LAST} is moved into place last"
    return {"about": about, "files": files, "sources": sources}


def old_set(target: Path, patterns: Iterable[str]) -> set[str]:
    """Names of ``target``'s report set files: those its manifest lists and every file matching ``patterns``."""
    names = {path.name for pattern in patterns for path in target.glob(pattern) if path.is_file()}
    listed = target / MANIFEST
    try:
        files = json.loads(listed.read_text(encoding="utf-8")).get("files") or {} if listed.is_file() else {}
    except (OSError, ValueError, AttributeError) as error:
        log.warning("%s: unreadable (%s); the old report's files are found by name", listed, error)
        files = {}
    return names | {name for name in files if isinstance(name, str) and Path(name).name == name}


@contextlib.contextmanager
def signals_held(signums: Iterable[signal.Signals] = HELD_SIGNALS) -> Iterator[None]:
    """Hold back ``signums`` during the block and deliver them (once each) after it; other threads hold nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {signum: signal.getsignal(signum) for signum in signums}
    for signum in previous:
        signal.signal(signum, lambda number, frame: received.append(number))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        for signum in dict.fromkeys(received):
            signal.raise_signal(signum)


def commit(staging: Path, target: Path, sources: list[str], patterns: Iterable[str]) -> list[str]:
    """Move the set in ``staging`` into ``target`` in place of the set there; returns its files in the order moved."""
    atomic_write_json(staging / MANIFEST, manifest(staging, sources))
    names = sorted(path.name for path in staging.iterdir())
    order = [name for name in names if name not in (MANIFEST, LAST)] + [MANIFEST] + ([LAST] if LAST in names else [])
    stale = old_set(target, patterns) - set(names)
    with signals_held():
        for name in [LAST, MANIFEST, *sorted(stale)]:
            (target / name).unlink(missing_ok=True)
        for name in order:
            os.replace(staging / name, target / name)
        descriptor = os.open(target, os.O_RDONLY)
        try:
            os.fsync(descriptor)  # the renames, on disk
        finally:
            os.close(descriptor)
    staging.rmdir()
    return order


@contextlib.contextmanager
def staged_report(target: Path, sources: list[str], patterns: Iterable[str]) -> Iterator[Path]:
    """A staging folder whose report set replaces ``target``'s when the block ends without an error (:func:`commit`)."""
    target.mkdir(parents=True, exist_ok=True)
    for folder in sorted(target.glob(f"{STAGING_PREFIX}*")):
        if folder.is_dir():
            log.warning("%s: left by an interrupted aggregate; removed", folder)
            shutil.rmtree(folder, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=target))
    try:
        yield staging
        commit(staging, target, sources, patterns)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


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


def summary_settings(wandb_cfg: Mapping[str, Any], sweep_dir: Path, out: Path) -> dict[str, Any]:
    """``wandb.init`` arguments of the summary run in the sweep's group (``logger.wandb.group``, else the sweep
    folder's name), its id from project and group so that aggregating again updates it."""
    project = wandb_cfg.get("project") or "mdr"
    group = wandb_cfg.get("group") or Path(sweep_dir).name
    return {
        "id": "summary-" + hashlib.sha1(f"{project}/{group}".encode()).hexdigest()[:12],
        "resume": "allow",
        "project": project,
        "entity": wandb_cfg.get("entity"),
        "group": group,
        "mode": wandb_cfg.get("mode") or "offline",
        "name": "summary",
        "job_type": "aggregate",
        "dir": str(out),
    }


def settings_from_sweep(sweep_dir: Path, out: str | Path | None = None) -> dict[str, Any]:
    """:func:`summary_settings` from the sweep's ``multirun.yaml`` (``logger.wandb``), defaults if it has none."""
    path = Path(sweep_dir) / "multirun.yaml"
    loaded = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    wandb_cfg = ((loaded or {}).get("logger") or {}).get("wandb") or {}
    return summary_settings(wandb_cfg, Path(sweep_dir), Path(out) if out is not None else Path(sweep_dir))


def _table_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with text columns as str or None (W&B Tables refuse a column that mixes types)."""
    texts = [column for column in frame.columns if frame[column].dtype == object]
    return frame.assign(
        **{column: [None if v is None or v != v else str(v) for v in frame[column]] for column in texts}
    )


def publish_summary(
    settings: dict[str, Any], tables: dict[str, pd.DataFrame], plots: list[Path], summary: dict[str, Any]
) -> str | None:
    """Log ``tables`` and ``plots`` to a summary run; its folder, None when W&B is disabled or failed (a warning)."""
    if settings.get("mode") == "disabled":
        return None
    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        import wandb

        if wandb.run is not None:  # a job's run left open: it must not swallow the summary
            wandb.finish()
        Path(settings["dir"]).mkdir(parents=True, exist_ok=True)
        run = wandb.init(
            **settings,
            config={key: summary[key] for key in ("sweep_dir", "completed", "failed", "missing") if key in summary},
            settings=wandb.Settings(
                init_timeout=TIMEOUT_S, finish_timeout=TIMEOUT_S, silent=True, x_disable_stats=True
            ),
        )
        payload: dict[str, Any] = {
            f"tables/{TABLE_NAMES.get(name, name)}": wandb.Table(dataframe=_table_frame(frame))
            for name, frame in tables.items()
            if not frame.empty
        }
        payload.update({f"plots/{path.stem}": wandb.Image(str(path)) for path in plots})
        run.log(payload)
        counts = ("completed", "failed", "missing", "invalid", "conflicts", "duplicates")
        run.summary.update({key: summary[key] for key in counts if key in summary})
        folder = str(Path(run.dir).parent)
        run.finish()
    except Exception as error:  # noqa: BLE001 - the report is written; W&B is a copy of it
        log.warning("W&B summary run not written (%s: %s); the report files are complete", type(error).__name__, error)
        return None
    log.info("W&B summary run (group %s, %s): %s", settings["group"], settings["mode"], folder)
    return folder


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
        wandb = settings_from_sweep(_sweep_dirs(args.sweep_dir)[0], args.out)
    summary = aggregate(args.sweep_dir, args.equivalence_margin, args.out, wandb)
    print(Path(summary["table"]).read_text(encoding="utf-8"))
    return exit_status(summary)


if __name__ == "__main__":
    raise SystemExit(main())
