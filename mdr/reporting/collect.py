"""Read a sweep folder's run folders into a results frame: one row per (completed job, evaluation language).

A job's outcome is its newest record: ``metrics.json`` (completed) or ``failed.json`` (failed), by file
modification time, so a stale metrics.json older than a later failure counts as failed; a job folder with
neither (killed, still running) and a job the sweep asked for that never made a folder (from the sweep's
``multirun.yaml``) are missing. Failed and missing jobs are listed; the other jobs' results are kept.

A job evaluated on several languages (``evaluation.languages``: metrics.json ``per_language``) gives one row per
evaluation language; ``language`` is the language evaluated. The variant says how the run was trained beyond p
(``mask=on|off`` for ``loss.mask_false_negatives``, ``denoise=on|off`` for denoised hard negatives, and
``p_stages=all`` when a multi-stage schedule applied p to every stage, ``stage.proportion_applies_to``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

log = logging.getLogger(__name__)

METRIC = "mrr@100"
METRIC_COLUMNS = ["mrr@100", "recall@100", "ndcg@10"]
GROUP = ["model", "stage", "language", "variant"]
KEYS = [*GROUP, "hard_proportion", "seed"]
DEFAULT_VARIANT = "mask=on,denoise=off"
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
