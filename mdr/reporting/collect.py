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

import numpy as np
import pandas as pd
import yaml

from mdr.reporting.integrity import check_per_query, drop_duplicates, split_cells
from mdr.utils.config_identity import (
    REPORT_IGNORED,
    UNMINED_IGNORED,
    UNTRAINED_IGNORED,
    canonical_config,
    flatten_config,
)
from mdr.utils.job_dirs import job_dirname
from mdr.utils.run_record import LanguageResult, RunRecord, read_record

log = logging.getLogger(__name__)

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


def variant_name(
    mask: bool | None, denoised: bool, proportion_stages: str | None = None, miner: str | None = None
) -> str:
    """``mask=on|off|n/a,denoise=on|off`` (``n/a``: the run trained nothing), plus ``,p_stages=all`` when p
    applied to every stage of a multi-stage schedule and ``,miner=<miner>`` when its hard negatives came from
    another miner than the default (:func:`run_miner`)."""
    masking = "n/a" if mask is None else ("on" if mask else "off")
    suffix = ",p_stages=all" if proportion_stages == "all" else ""
    suffix += f",miner={miner}" if miner else ""
    return f"mask={masking},denoise={'on' if denoised else 'off'}{suffix}"


DEFAULT_MINER = {
    "source": "bm25",
    "backend": "bm25s",
    "range_min": 0,
    "range_max": 50,
    "margin": None,
    "tokenizer": "default",
}
"""``negatives.pool`` of the default miner (conf/negatives/bm25.yaml): BM25 (bm25s, mdr's words and bigrams), ranks
1-50, no margin."""


def run_miner(record: RunRecord, config: dict[str, Any]) -> str | None:
    """How a run's hard negatives were mined, as a short label, when that is not the default miner; None for
    the default miner, for a run that used no hard negatives (p = 0, zero-shot) and for a run whose
    ``config.yaml`` does not say.

    The label is ``<source>[/<backend>][[<tokenizer>]][(<encoder>)]:<first>-<last rank>[,margin=<m>]`` from the
    resolved ``negatives.pool`` (e.g. ``bm25:11-60`` for ``range_min=10 range_max=60``, ``dense(me5_small):4-50`` for
    ``negatives=dense``, ``bm25[thai_words]:1-50`` for ``negatives=bm25_thai_words``).
    """
    pool = _lookup(config, "negatives.pool")
    if not isinstance(pool, dict) or not record.used_hard_negatives():
        return None
    settings = {key: pool.get(key, default) for key, default in DEFAULT_MINER.items()}
    if settings == DEFAULT_MINER:
        return None
    label = str(settings["source"])
    if settings["source"] in ("bm25", "shipped") and settings["backend"] != DEFAULT_MINER["backend"]:
        label += f"/{settings['backend']}"
    if settings["tokenizer"] != DEFAULT_MINER["tokenizer"]:
        label += f"[{settings['tokenizer']}]"
    if pool.get("encoder"):
        label += f"({Path(str(pool['encoder'])).name})"
    label += f":{int(settings['range_min']) + 1}-{settings['range_max']}"
    if settings["margin"] is not None:
        label += f",margin={settings['margin']}"
    return label


LANGUAGES_DIR = Path(__file__).resolve().parents[2] / "conf" / "language"
"""The language configs (``conf/language/<code>.yaml``), each with ``low_resource``."""


def low_resource(evaluated: LanguageResult, config: dict[str, Any]) -> bool | None:
    """Whether an evaluated language is low-resource: metrics.json's ``low_resource``, else (runs before it was
    recorded) the job's ``config.yaml`` language when that is the language evaluated, else
    ``conf/language/<code>.yaml``; None when none says (the low- vs high-resource contrast leaves it out)."""
    if evaluated.low_resource is not None:
        return bool(evaluated.low_resource)
    code = str(evaluated.language)
    language = config.get("language")
    if isinstance(language, dict) and str(language.get("code")) == code and language.get("low_resource") is not None:
        return bool(language["low_resource"])
    recorded = _read_yaml(LANGUAGES_DIR / f"{code}.yaml").get("low_resource")
    return None if recorded is None else bool(recorded)


def comparable_config(job: Path, record: RunRecord, config: dict[str, Any]) -> dict[str, Any] | None:
    """Dotted key -> value of the job's config as two runs of one cell and seed are compared.

    The run folder's identity (``run_folder.json``'s config, else ``config.yaml``, canonicalised again:
    ``1`` and ``1.0`` are one value, keys at their neutral default and policy keys such as ``run.*``,
    ``logger.*`` and ``hydra`` left out) less :data:`REPORT_IGNORED`, :data:`UNTRAINED_IGNORED` for a run that
    trained nothing and :data:`UNMINED_IGNORED` for a one-stage run without hard negatives; a key set to null
    (or an empty section) counts as absent. None when the job has neither file.
    """
    source: Any = None
    identity = job / "run_folder.json"
    if identity.is_file():
        try:
            source = json.loads(identity.read_text(encoding="utf-8")).get("config")
        except (OSError, ValueError, AttributeError):
            source = None
    if not isinstance(source, dict) or not source:
        source = config
    if not source:
        return None
    flat = flatten_config(canonical_config(source))
    roots = sorted(
        (
            (key, value.rstrip("/"))
            for key, value in flat.items()
            if key.startswith("paths.") and isinstance(value, str)
        ),
        key=lambda item: -len(item[1]),
    )
    ignored = list(REPORT_IGNORED)
    if not record.trained:
        ignored += UNTRAINED_IGNORED
    elif not record.used_hard_negatives() and record.proportion_stages() is None:
        ignored += UNMINED_IGNORED
    compared: dict[str, Any] = {}
    for key, value in flat.items():
        if value is None or value == {} or any(key == prefix or key.startswith(prefix + ".") for prefix in ignored):
            continue
        for name, root in roots:
            if root and isinstance(value, str) and (value == root or value.startswith(root + "/")):
                value = "${" + name + "}" + value[len(root) :]
                break
        compared[key] = value
    return compared


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


def run_variant(record: RunRecord, config: dict[str, Any]) -> tuple[bool | None, bool]:
    """(masked in-batch false negatives?, denoised hard negatives?) of one run.

    As the record says, else as the run's resolved ``config.yaml`` says. A trained run that records no masking
    predates the option, whose absence meant no masking; a run that trained nothing has mask None.
    """
    mask = None
    if record.trained:
        recorded = record.recorded_mask()
        configured = _lookup(config, "loss.mask_false_negatives")
        mask = recorded if recorded is not None else (bool(configured) if configured is not None else False)
    denoised = record.recorded_denoised()
    if denoised is None:
        hard = record.trained and int(record.train.get("num_hard") or 0) > 0  # type: ignore[union-attr]
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


def job_dirname_exclusions(sweep_dir: Path) -> list[str]:
    """The override keys left out of the sweep's job folder names (``hydra.job.config.override_dirname``)."""
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return []
    from omegaconf import OmegaConf

    keys = OmegaConf.select(OmegaConf.load(path), "hydra.job.config.override_dirname.exclude_keys", default=None)
    return [str(key) for key in keys] if keys is not None else []


def job_outcome(job: Path) -> str:
    """``completed``, ``failed`` or ``missing``: the newest of metrics.json / failed.json decides (ties: failed)."""
    records = {name: job / f"{name}.json" for name in ("metrics", "failed")}
    times = {name: path.stat().st_mtime_ns for name, path in records.items() if path.is_file()}
    if not times:
        return "missing"
    if "failed" in times and times["failed"] >= times.get("metrics", -1):
        return "failed"
    return "completed"


def collect(sweep_dirs: Path | str | list[Path] | list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(completed runs, problems) of one sweep folder or several analysed as one.

    ``problems`` lists, one row each, jobs that failed, are missing, are invalid (metrics.json disagrees with the
    job's own overrides or config, a per-query file is bad or disagrees with its metrics.json: the error names the
    file, or the job ran the cell and seed of a run kept earlier from another config), duplicates (the same config
    and numbers as a run kept earlier) and conflicts (folders of one config with different numbers, none counted;
    see :func:`mdr.reporting.integrity.drop_duplicates`). Only completed, valid, first-seen runs without a conflict
    are in the results.
    """
    dirs = [Path(d) for d in sweep_dirs] if isinstance(sweep_dirs, list) else [Path(sweep_dirs)]
    qualify = len(dirs) > 1  # several sweep folders: a job is named <sweep folder>/<job folder>
    rows: list[dict[str, Any]] = []
    problems: list[dict[str, Any]] = []
    for sweep_dir in dirs:
        found, trouble = _collect_one(sweep_dir, f"{sweep_dir.name}/" if qualify else "")
        rows += found
        problems += trouble
    rows, invalid = check_per_query(rows)
    rows = split_cells(rows)
    rows, duplicates = drop_duplicates(rows)
    problems += invalid + duplicates
    rows = [{key: value for key, value in row.items() if not key.startswith("_")} for row in rows]
    return pd.DataFrame(rows), pd.DataFrame(problems, columns=PROBLEM_COLUMNS)


def _collect_one(sweep_dir: Path, prefix: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(rows of completed jobs, failed / missing / invalid jobs) of one sweep folder."""
    rows: list[dict[str, Any]] = []
    problems: list[dict[str, Any]] = []
    seen: set[tuple[str, ...]] = set()
    folders: set[str] = set()
    for job in sorted(p.parent for p in sweep_dir.glob("*/.hydra")):
        name = prefix + job.name
        folders.add(job.name)
        overrides = _job_overrides(job)
        if overrides is not None:
            seen.add(tuple(sorted(overrides)))
        cell = " ".join(overrides or [])
        outcome = job_outcome(job)
        if outcome == "missing":
            problems.append({"job": name, "status": "missing", "error": "", "overrides": cell})
            continue
        if outcome == "failed":
            error = _failure_message(job / "failed.json")
            if (job / "metrics.json").is_file():
                error += " (an older metrics.json in this folder was ignored)"
            problems.append({"job": name, "status": "failed", "error": error, "overrides": cell})
            continue
        if (job / "failed.json").is_file():
            log.info("%s: failed.json is older than metrics.json; the job counts as completed", job)
        try:
            record = read_record(job / "metrics.json")
            config = _read_yaml(job / "config.yaml")
            mismatches = metrics_mismatches(record, overrides or [], config)
            if mismatches:
                problems.append(
                    {
                        "job": name,
                        "status": "invalid",
                        "error": f"{job / 'metrics.json'} does not match the job's own settings ("
                        + "; ".join(mismatches)
                        + "): not counted",
                        "overrides": cell,
                    }
                )
                continue
            mask, denoised = run_variant(record, config)
            stages = record.proportion_stages()
            miner = run_miner(record, config)
            compared = comparable_config(job, record, config)
            found = []
            for evaluated in record.evaluated():  # a row per (job, evaluation language)
                per_query = per_query_path(job, evaluated.per_query_file)
                scores = evaluated.metrics
                found.append(
                    {
                        **{key: getattr(record, key) for key in ("model", "stage", "hard_proportion", "seed")},
                        "language": evaluated.language,
                        "variant": variant_name(mask, denoised, stages, miner),
                        **{name: scores[name] for name in scores if "@" in name},  # mrr@10 at depth 10
                        "low_resource": low_resource(evaluated, config),
                        "num_queries": evaluated.num_queries,
                        "mask_false_negatives": mask,
                        "denoised": denoised,
                        "proportion_applies_to": stages,
                        "miner": miner,
                        "data": record.data or "n/a",
                        "split": record.split,
                        "depth": record.evaluation_depth(evaluated),
                        "config_hash": _config_hash(job),
                        "job": name,
                        "per_query_file": str(per_query),
                        "_config": compared,  # what drop_duplicates compares; not a results column
                        "_metrics_file": str(job / "metrics.json"),  # named when the per-query file disagrees
                    }
                )
            rows += found
        except (OSError, ValueError, KeyError, TypeError) as error:
            problems.append(
                {"job": name, "status": "failed", "error": f"unreadable result: {error}", "overrides": cell}
            )
    exclude = job_dirname_exclusions(sweep_dir)
    for overrides in expected_jobs(sweep_dir) or []:
        # a job is there when a folder has its overrides, or its folder name: a rerun may spell a value otherwise
        # (0 / 0.0) or add a key left out of folder names (run.*, trainer), and a finished folder keeps the first
        # command's .hydra files
        if tuple(sorted(overrides)) not in seen and job_dirname(overrides, exclude) not in folders:
            problems.append(
                {
                    "job": prefix,
                    "status": "missing",
                    "error": "no job folder (never started)",
                    "overrides": " ".join(overrides),
                }
            )
    return rows, problems


def per_query_path(job: Path, named: str) -> Path:
    """The per-query file metrics.json names, or its gzipped copy (``<name>.gz``, as exported)."""
    path = job / named
    if path.is_file():
        return path
    packed = path.with_name(path.name + ".gz")
    if packed.is_file():
        return packed
    raise FileNotFoundError(f"{path} (named by metrics.json) does not exist")


def cell_means(rows: pd.DataFrame, depth: int) -> pd.DataFrame:
    """Mean, std and n over seeds of every measure of ``rows`` (one evaluation depth), per cell."""
    cut = min(int(depth), 100)
    measures = [name for name in (f"mrr@{cut}", f"recall@{cut}", "ndcg@10") if name in rows]
    cells = [*GROUP, "hard_proportion"]
    grouped = rows.groupby(cells, sort=False, dropna=False)[measures]
    table = grouped.agg(["mean", "std"])
    table.columns = [f"{stat}_{name}" for name, stat in table.columns]
    table["n"] = grouped.size()
    return table.reset_index().assign(depth=int(depth))


def _config_hash(job: Path) -> str | None:
    """The run folder's config hash (``run_folder.json``, :mod:`mdr.run_folder`), None without a readable one."""
    path = job / "run_folder.json"
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("config_hash")
    except (OSError, ValueError) as error:
        log.warning("%s: unreadable (%s); duplicates of this job are found by cell and seed only", path, error)
        return None
    return str(value) if value else None


_OVERRIDE_FIELDS = {  # override key -> metrics.json field it sets (config groups: compared through config.yaml)
    "negatives.hard_proportion": "hard_proportion",
    "seed": "seed",
    "evaluation.depth": "depth",
}
_CONFIG_FIELDS = {  # resolved config key (config.yaml) -> metrics.json field
    "negatives.hard_proportion": "hard_proportion",
    "seed": "seed",
    "model.name": "model",
    "stage.name": "stage",
    "data.name": "data",
    "evaluation.depth": "depth",
}


def _same(expected: Any, recorded: Any) -> bool:
    try:
        return bool(np.isclose(float(expected), float(recorded)))
    except (TypeError, ValueError):
        return str(expected) == str(recorded)


def metrics_mismatches(record: RunRecord, overrides: list[str], config: dict[str, Any]) -> list[str]:
    """Where metrics.json contradicts the job's own overrides (``.hydra/overrides.yaml``) or resolved
    ``config.yaml``, e.g. a metrics.json copied from another cell's folder; empty when they agree.

    Only the fields that define a cell are compared: p, seed and depth with the overrides; these and model,
    stage, data and (for a single-language evaluation) language with config.yaml. A field that metrics.json or
    config.yaml does not record is not compared, except the depth: none recorded means 100.
    """
    recorded = {field: getattr(record, field) for field in set(_CONFIG_FIELDS.values())}
    recorded["depth"] = record.evaluation_depth()  # not recorded: 100, so a run at another depth is caught
    if not record.per_language:
        recorded["language"] = record.language
    if record.num_negatives == 0 or not record.trained:
        recorded["hard_proportion"] = None  # no negatives drawn or nothing trained: p may be recorded as what ran
    found: list[str] = []
    for item in overrides:
        key, separator, text = item.lstrip("+~").partition("=")
        field = _OVERRIDE_FIELDS.get(key)
        if not separator or field is None or recorded.get(field) is None:
            continue
        try:
            value = yaml.safe_load(text) if text else text
        except yaml.YAMLError:
            value = text
        if not _same(value, recorded[field]):
            found.append(f"override {key}={text} but metrics.json {field}={recorded[field]!r}")
    for key, field in [*_CONFIG_FIELDS.items(), ("language.code", "language")]:
        value = _lookup(config, key)
        if value is None or recorded.get(field) is None:
            continue
        if not _same(value, recorded[field]):
            found.append(f"config.yaml {key}={value!r} but metrics.json {field}={recorded[field]!r}")
    return found


def _failure_message(path: Path) -> str:
    try:
        return str(json.loads(path.read_text(encoding="utf-8")).get("error", ""))
    except (OSError, ValueError) as error:
        return f"unreadable failed.json ({error})"
