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

from mdr.utils.config_identity import (
    REPORT_IGNORED,
    UNMINED_IGNORED,
    UNTRAINED_IGNORED,
    canonical_config,
    flatten_config,
    label_of,
    shown_by,
)
from mdr.utils.job_dirs import job_dirname
from mdr.utils.run_record import LanguageResult, RunRecord, read_record

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
    and numbers as a run kept earlier) and conflicts (folders of one config with
    different numbers, none counted; see :func:`drop_duplicates`). Only completed, valid, first-seen runs without a
    conflict are in the results.
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


def metric_at(depth: int) -> str:
    """The MRR a run evaluated at ``depth`` reports: ``mrr@100`` at 100 or more, ``mrr@<depth>`` below."""
    return f"mrr@{min(int(depth), 100)}"


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


def _read_per_query(path: str) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype={"query_id": str})


MEAN_TOLERANCE = 1e-6
"""How far a per-query file's mean of a measure may lie from its metrics.json value, and two copies of one run
may differ, and still agree: per-query files hold 6 decimals, so an honest mean is off by at most 5e-7."""


def _measures(row: dict[str, Any]) -> dict[str, Any]:
    """The measures (``mrr@100``, ``ndcg@10``, ...) of a row, as metrics.json reports them."""
    return {key: value for key, value in row.items() if "@" in key}


def _agree(first: Any, second: Any) -> bool:
    try:
        return bool(abs(float(first) - float(second)) <= MEAN_TOLERANCE)  # NaN never agrees
    except (TypeError, ValueError):
        return False


def mean_disagreements(table: pd.DataFrame, row: dict[str, Any]) -> list[str]:
    """``<measure>: file mean <m>, metrics.json <v>`` for each measure both record whose per-query mean is more
    than :data:`MEAN_TOLERANCE` from the value metrics.json reports; empty when they agree."""
    found = []
    for name, reported in _measures(row).items():
        if name not in table.columns:
            continue
        mean = pd.to_numeric(table[name], errors="coerce").mean()
        if not _agree(mean, reported):
            found.append(f"{name}: file mean {mean:.7f}, metrics.json {reported!r}")
    return found


def check_per_query(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(rows whose per-query file is sound, an ``invalid`` problem per other row, naming its file).

    A file is sound when it reads as a table with ``query_id`` and every metric column, holds each query once
    and no missing score, has the ``num_queries`` rows its metrics.json reports, the mean of each measure within
    :data:`MEAN_TOLERANCE` of the value metrics.json reports (:func:`mean_disagreements`), and scores the same
    queries as the other runs evaluated on that (data, language, split): the query set most of them share. A run
    with a bad file would otherwise enter the analysis with NaN scores, a different query set, or per-query scores
    (the deltas) that contradict its metrics.json (the cell means).
    """
    invalid: list[dict[str, Any]] = []
    query_sets: dict[int, frozenset[str]] = {}
    refused: set[int] = set()

    def refuse(index: int, reason: str) -> None:
        row = rows[index]
        refused.add(index)
        error = f"{row['per_query_file']}: {reason}: not counted"
        invalid.append({"job": row["job"], "status": "invalid", "error": error, "overrides": ""})

    for index, row in enumerate(rows):
        path = row["per_query_file"]
        try:
            table = _read_per_query(path)
        except (OSError, ValueError) as error:
            refuse(index, f"unreadable ({type(error).__name__}: {error})")
            continue
        missing = [column for column in ("query_id", metric_at(row["depth"])) if column not in table.columns]
        if missing:
            refuse(index, f"lacks column(s) {missing} (has {list(table.columns)})")
            continue
        repeated = table.query_id[table.query_id.duplicated()].unique()
        if len(repeated):
            refuse(index, f"{len(repeated)} query id(s) appear more than once, e.g. {list(repeated[:3])}")
            continue
        empty = table[metric_at(row["depth"])].isna() | table.query_id.isna()
        if empty.any():
            refuse(index, f"{int(empty.sum())} row(s) without a query id or {metric_at(row['depth'])} score")
            continue
        if row.get("num_queries") is not None and len(table) != int(row["num_queries"]):
            refuse(index, f"{len(table)} queries, but metrics.json reports num_queries={row['num_queries']}")
            continue
        disagreements = mean_disagreements(table, row)
        if disagreements:
            metrics_file = row.get("_metrics_file", "metrics.json")
            refuse(index, f"its means disagree with {metrics_file} ({'; '.join(disagreements)})")
            continue
        query_sets[index] = frozenset(table.query_id)
    groups: dict[tuple[Any, Any], list[int]] = {}
    for index in query_sets:
        row = rows[index]
        groups.setdefault((row["data"], row["language"], row.get("split")), []).append(index)
    for members in groups.values():
        counts: dict[frozenset[str], int] = {}
        for index in members:
            counts[query_sets[index]] = counts.get(query_sets[index], 0) + 1
        reference = max(counts, key=lambda s: counts[s])  # ties: the first seen
        for index in members:
            queries = query_sets[index]
            if queries != reference:
                refuse(
                    index,
                    f"its query set differs from the other runs of {rows[index]['language']} "
                    f"({len(reference - queries)} of their {len(reference)} queries missing, "
                    f"{len(queries - reference)} not theirs)",
                )
    sound = [row for index, row in enumerate(rows) if index in query_sets and index not in refused]
    return sound, invalid


def _cell_key(row: dict[str, Any]) -> tuple[Any, ...]:
    proportion = row.get("hard_proportion")
    p = None if proportion is None or pd.isna(proportion) else round(float(proportion), 9)
    named = (row.get(key) for key in ("model", "stage", "language", "variant"))
    return (*named, p, row.get("depth"), row.get("data"), row.get("split"))


def splitting_keys(rows: list[dict[str, Any]]) -> list[str]:
    """The result-relevant config keys no cell column shows whose value varies among the runs of one cell
    (:func:`comparable_config`; seeds apart), e.g. ``negatives.num_negatives`` in a sweep over k."""
    configs: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("_config") is not None:
            configs.setdefault(_cell_key(row), []).append(row["_config"])
    varying: set[str] = set()
    for members in configs.values():
        for key in set().union(*members) - varying:
            values = {json.dumps(config.get(key), sort_keys=True, default=str) for config in members}
            if len(values) > 1 and shown_by(key) is None:
                varying.add(key)
    return sorted(varying)


def _shown_value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def split_cells(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` with every :func:`splitting_keys` key its config holds added to its variant (``,k=8``,
    ``,lr=2e-05``): a sweep over such a key gets one report cell per value."""
    keys = splitting_keys(rows)
    if keys:
        log.info("report cells split by %s (varying within a cell)", ", ".join(keys))
    result = []
    for row in rows:
        config = row.get("_config") or {}
        parts = [f"{label_of(key)}={_shown_value(config[key])}" for key in keys if config.get(key) is not None]
        result.append({**row, "variant": ",".join([row["variant"], *parts])} if parts else row)
    return result


def _differences(earlier: dict[str, Any], later: dict[str, Any]) -> list[str]:
    """``key=<earlier> (<earlier job>) vs <later>`` for every compared key whose value differs between two rows'
    configs (:func:`comparable_config`); empty when they agree or either config is unknown."""
    first, second = earlier.get("_config"), later.get("_config")
    if first is None or second is None:
        return []
    absent = "<absent>"
    return [
        f"{key}={first.get(key, absent)!r} ({earlier['job']}) vs {second.get(key, absent)!r}"
        for key in sorted(set(first) | set(second))
        if first.get(key, absent) != second.get(key, absent)
    ]


def number_differences(first: dict[str, Any], second: dict[str, Any]) -> list[str]:
    """The measures (and ``num_queries``) two rows both report that differ (by more than :data:`MEAN_TOLERANCE`);
    empty when their numbers are the same."""
    found = [
        name
        for name, value in _measures(first).items()
        if name in second and not (pd.isna(value) and pd.isna(second[name])) and not _agree(value, second[name])
    ]
    if first.get("num_queries") != second.get("num_queries"):
        found.append("num_queries")
    return found


def _conflict(members: list[dict[str, Any]], reasons: list[str]) -> str:
    """The error of every row of a conflict: each folder with the numbers that differ between them."""
    differing = list(dict.fromkeys(name for row in members[1:] for name in number_differences(members[0], row)))

    def shown(row: dict[str, Any]) -> str:
        values = ((name, row.get(name)) for name in differing)
        return ", ".join(f"{name} {v:.7f}" if isinstance(v, float) else f"{name} {v!r}" for name, v in values)

    listing = "; ".join(f"{row['job']} ({shown(row)})" for row in members)
    return (
        f"{members[0]['language']}: one config ({'; '.join(dict.fromkeys(reasons))}) in {len(members)} folders "
        f"with different numbers: {listing}: none counted, since which is right cannot be told; remove the wrong "
        "folder(s)"
    )


def drop_duplicates(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(rows counted once, a problem per row left out: ``duplicate``, ``conflict`` or ``invalid``).

    A row is a copy of a row kept before it (sweep folders in the order given, job folders by name) when both jobs
    have the same config hash (``run_folder.json``: one config run twice, e.g. ``p=0`` and ``p=0.0``, or a folder
    copied under another name) or the same cell and seed (model, stage, language, variant, p, depth, data, split,
    seed) from configs that agree on every key that can change the row's numbers (:func:`comparable_config`:
    e.g. another ``paths.data_dir``, or no ``run_folder.json``). Copies with the same numbers (every measure both
    report within :data:`MEAN_TOLERANCE`, the same ``num_queries``) are duplicates: the first is kept, the
    problem row names it and both MRR@100 values. Copies whose numbers differ are a ``conflict``: which is right
    cannot be told, so none of them is counted, and each one's problem row names every folder and the numbers
    that differ. Keys that vary within a cell have split it beforehand
    (:func:`split_cells`); the same cell and seed from a config that still differs (in a key a cell column shows,
    e.g. the job's own language where another job evaluated it too) is ``invalid`` (not counted), its error naming
    the keys and both values.
    """
    kept: list[dict[str, Any]] = []
    invalid: dict[int, dict[str, Any]] = {}
    copies: dict[int, list[tuple[dict[str, Any], str, str]]] = {}  # id(kept row) -> (later row, why, short why)
    by_hash: dict[tuple[str, Any], dict[str, Any]] = {}
    by_cell: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        cell = (*_cell_key(row), row.get("seed"))
        same_config = by_hash.get((row["config_hash"], row["language"])) if row.get("config_hash") else None
        earlier = same_config or by_cell.get(cell)
        if earlier is None:
            kept.append(row)
            by_cell[cell] = row
            if row.get("config_hash"):
                by_hash[(row["config_hash"], row["language"])] = row
            continue
        differences = [] if same_config is not None else _differences(earlier, row)
        if differences:
            shown = "; ".join(differences[:6]) + (
                f"; ... and {len(differences) - 6} more" if len(differences) > 6 else ""
            )
            invalid[id(row)] = {
                "job": row["job"],
                "status": "invalid",
                "error": f"{row['language']}: the same cell and seed as {earlier['job']} from a config that "
                f"differs in {len(differences)} key(s) ({shown}): not counted. A key that varies within a cell "
                "splits it (its value joins the variant) unless a cell column shows it, as here, so these runs "
                "cannot share a table: aggregate each setting's sweep folders on their own "
                "(python -m mdr.reporting.aggregate DIR --out OUT)",
                "overrides": "",
            }
            continue
        if same_config is not None:
            reason, short = "the same config (run_folder.json config hash)", "same run_folder.json config hash"
        elif earlier.get("_config") is None or row.get("_config") is None:
            reason = "the same cell and seed (a config.yaml to compare is missing)"
            short = "same cell and seed, a config.yaml to compare missing"
        else:
            reason = "the same cell and seed from a config that differs in no key that changes results"
            short = "same cell and seed, configs that differ in no key that changes results"
        copies.setdefault(id(earlier), []).append((row, reason, short))
    head_of: dict[int, dict[str, Any]] = {}  # id(copy) -> the kept row it copies
    conflicts: dict[int, str] = {}  # id(kept row) -> the error of its conflict
    for first in kept:
        group = copies.get(id(first), [])
        head_of.update({id(row): first for row, _, _ in group})
        if any(number_differences(first, row) for row, _, _ in group):
            conflicts[id(first)] = _conflict([first, *(row for row, _, _ in group)], [short for *_, short in group])
    problems: list[dict[str, Any]] = []
    for row in rows:  # in the order read
        head = head_of.get(id(row), row)
        if id(row) in invalid:
            problems.append(invalid[id(row)])
        elif id(head) in conflicts:
            problems.append({"job": row["job"], "status": "conflict", "error": conflicts[id(head)], "overrides": ""})
        elif head is not row:
            reason = next(why for copy, why, _ in copies[id(head)] if copy is row)
            problems.append(
                {
                    "job": row["job"],
                    "status": "duplicate",
                    "error": f"{row['language']}: {reason} as {head['job']}: counted once, from {head['job']} "
                    f"({METRIC} {head.get(METRIC, float('nan')):.4f} kept, {row.get(METRIC, float('nan')):.4f} "
                    "left out)",
                    "overrides": "",
                }
            )
    kept = [row for row in kept if id(row) not in conflicts]
    counts = {status: sum(problem["status"] == status for problem in problems) for status in STATUSES_LEFT_OUT}
    if counts["duplicate"]:
        log.warning("%d duplicate run(s) counted once: see the duplicates list", counts["duplicate"])
    if counts["conflict"]:
        log.warning(
            "%d run(s) in %d conflict(s) not counted: folders of one config with different numbers, see the "
            "conflicts list",
            counts["conflict"],
            len(conflicts),
        )
    if counts["invalid"]:
        log.warning(
            "%d run(s) of a cell and seed kept from another config not counted: see the invalid runs",
            counts["invalid"],
        )
    return kept, problems


STATUSES_LEFT_OUT = ("duplicate", "conflict", "invalid")
"""The problems :func:`drop_duplicates` reports."""


def _failure_message(path: Path) -> str:
    try:
        return str(json.loads(path.read_text(encoding="utf-8")).get("error", ""))
    except (OSError, ValueError) as error:
        return f"unreadable failed.json ({error})"
