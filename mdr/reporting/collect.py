"""Read sweep folders into a results frame (a row per completed job and evaluated language) and a problems frame;
which runs count: per-query files that agree with their metrics.json, report cells split by the keys that vary
within them, and copies of one run counted once (or, with different numbers, not at all)."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from mdr.utils import config_identity
from mdr.utils.config_identity import label_of, shown_by
from mdr.utils.job_dirs import job_dirname
from mdr.utils.run_record import RunRecord, lookup, read_record

log = logging.getLogger(__name__)

METRIC = "mrr@100"  # the measure of a report's tables and contrasts
MEAN_TOLERANCE = 1e-6  # per-query files hold 6 decimals: how far their mean (or two copies) may differ and agree
GROUP = ["model", "stage", "language", "variant"]
DEFAULT_VARIANT = "mask=on,denoise=off"
PROBLEM_COLUMNS = ["job", "status", "error", "overrides"]
# negatives.pool of the default miner (conf/negatives/bm25.yaml): BM25 ranks 1-50
DEFAULT_MINER = dict(source="bm25", backend="bm25s", range_min=0, range_max=50, margin=None, tokenizer="default")


def resolve_sweep_dir(path: str | Path) -> Path:
    """``path`` itself if it holds job folders (or a sweep's ``multirun.yaml``), else its latest multirun."""
    root = Path(path)
    if any(root.glob("*/.hydra")) or (root / "multirun.yaml").is_file():
        return root
    candidates = sorted((root / "multiruns").glob("*")) if (root / "multiruns").is_dir() else []
    if not candidates:
        raise FileNotFoundError(f"{root}: no job folders (*/.hydra) and no multiruns/ inside")
    return candidates[-1]


def variant_name(mask: bool | None, denoised: bool, stages: str | None = None, miner: str | None = None) -> str:
    """``mask=on|off|n/a,denoise=on|off`` (``n/a``: nothing trained), ``,p_stages=all`` when p applied to every
    stage, ``,miner=<miner>`` for another miner than the default (:func:`run_miner`)."""
    masking = "n/a" if mask is None else ("on" if mask else "off")
    suffix = ",p_stages=all" if stages == "all" else ""
    suffix += f",miner={miner}" if miner else ""
    return f"mask={masking},denoise={'on' if denoised else 'off'}{suffix}"


def run_miner(record: RunRecord, config: dict[str, Any]) -> str | None:
    """``<source>[/<backend>][[<tokenizer>]][(<encoder>)]:<first>-<last rank>[,margin=<m>]`` of the resolved
    ``negatives.pool`` (e.g. ``bm25:11-60``); None for the default miner, no hard negatives or no config."""
    pool = lookup(config, "negatives.pool")
    if not isinstance(pool, dict) or not record.used_hard_negatives():
        return None
    settings = {key: pool.get(key, default) for key, default in DEFAULT_MINER.items()}
    if settings == DEFAULT_MINER:
        return None
    label = str(settings["source"])
    if settings["source"] in ("bm25", "shipped") and settings["backend"] != DEFAULT_MINER["backend"]:
        label += f"/{settings['backend']}"
    label += f"[{settings['tokenizer']}]" if settings["tokenizer"] != DEFAULT_MINER["tokenizer"] else ""
    label += f"({Path(str(pool['encoder'])).name})" if pool.get("encoder") else ""
    label += f":{int(settings['range_min']) + 1}-{settings['range_max']}"
    return label + (f",margin={settings['margin']}" if settings["margin"] is not None else "")


def comparable_config(source: dict[str, Any] | None, record: RunRecord) -> dict[str, Any] | None:
    """Dotted key -> value of the run folder's config as two runs of one cell and seed are compared: canonical, less
    the keys that cannot change this run's numbers and nulls, ``paths.*`` folders relative."""
    if not source:
        return None
    flat = config_identity.flatten_config(config_identity.canonical_config(source))
    roots = [
        (key, value.rstrip("/")) for key, value in flat.items() if key.startswith("paths.") and isinstance(value, str)
    ]
    roots.sort(key=lambda item: -len(item[1]))
    ignored = list(config_identity.REPORT_IGNORED)
    if not record.trained:
        ignored += config_identity.UNTRAINED_IGNORED
    elif not record.used_hard_negatives() and record.proportion_stages() is None:
        ignored += config_identity.UNMINED_IGNORED
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


def _read_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None


def _run_folder(job: Path) -> dict[str, Any]:
    """The job's ``run_folder.json`` (config and its hash); empty when it has none or it cannot be read."""
    path = job / "run_folder.json"
    try:
        loaded = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError) as error:
        log.warning("%s: unreadable (%s); duplicates of this job are found by cell and seed only", path, error)
        return {}
    return loaded if isinstance(loaded, dict) else {}


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
        log.warning("%s: cannot expand the sweep (%r); jobs without a folder go unnoticed", path, error)
        return None


def job_outcome(job: Path) -> str:
    """``completed``, ``failed`` or ``missing``: the newest of metrics.json / failed.json decides (ties: failed)."""
    paths = {name: job / f"{name}.json" for name in ("metrics", "failed")}
    times = {name: path.stat().st_mtime_ns for name, path in paths.items() if path.is_file()}
    if not times:
        return "missing"
    return "failed" if times.get("failed", -1) >= times.get("metrics", -1) else "completed"


def collect(sweep_dirs: Path | str | list[Path] | list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(completed runs, problems: failed, missing, invalid, duplicate, conflict) of one sweep folder or several as
    one (jobs named ``<sweep folder>/<job>``)."""
    dirs = [Path(d) for d in sweep_dirs] if isinstance(sweep_dirs, list) else [Path(sweep_dirs)]
    rows: list[dict[str, Any]] = []
    problems: list[dict[str, Any]] = []
    for sweep_dir in dirs:
        _collect_one(sweep_dir, f"{sweep_dir.name}/" if len(dirs) > 1 else "", rows, problems)
    rows, invalid = check_per_query(rows)
    rows, duplicates = drop_duplicates(split_cells(rows))
    rows = [{key: value for key, value in row.items() if not key.startswith("_")} for row in rows]
    return pd.DataFrame(rows), pd.DataFrame(problems + invalid + duplicates, columns=PROBLEM_COLUMNS)


def _collect_one(sweep_dir: Path, prefix: str, rows: list[dict[str, Any]], problems: list[dict[str, Any]]) -> None:
    """Add the completed jobs of one sweep folder to ``rows``, its failed, missing and invalid jobs to ``problems``."""
    seen: set[tuple[str, ...]] = set()
    folders: set[str] = set()
    for job in sorted(p.parent for p in sweep_dir.glob("*/.hydra")):
        name = prefix + job.name
        folders.add(job.name)
        overrides = _read_yaml(job / ".hydra" / "overrides.yaml")
        overrides = [str(item) for item in overrides] if isinstance(overrides, list) else []
        if (job / ".hydra" / "overrides.yaml").is_file():
            seen.add(tuple(sorted(overrides)))
        cell = " ".join(overrides)
        outcome = job_outcome(job)
        if outcome != "completed":
            error = "" if outcome == "missing" else _failure_message(job / "failed.json")
            if outcome == "failed" and (job / "metrics.json").is_file():
                error += " (an older metrics.json in this folder was ignored)"
            problems.append(problem(name, outcome, error, cell))
            continue
        if (job / "failed.json").is_file():
            log.info("%s: failed.json is older than metrics.json; the job counts as completed", job)
        try:
            record = read_record(job / "metrics.json")
            config = _read_yaml(job / "config.yaml")
            config = config if isinstance(config, dict) else {}
            if mismatches := metrics_mismatches(record, overrides, config):
                error = f"{job / 'metrics.json'} does not match the job's own settings ({'; '.join(mismatches)})"
                problems.append(problem(name, "invalid", error + ": not counted", cell))
                continue
            mask, denoised = record.mask(config), record.denoised_negatives(config)
            stages, miner, identity = record.proportion_stages(), run_miner(record, config), _run_folder(job)
            source = identity.get("config") if isinstance(identity.get("config"), dict) else None
            rows += [
                {
                    **{key: getattr(record, key) for key in ("model", "stage", "hard_proportion", "seed")},
                    "language": evaluated.language,
                    "variant": variant_name(mask, denoised, stages, miner),
                    **{key: value for key, value in evaluated.metrics.items() if "@" in key},  # mrr@10 at depth 10
                    "low_resource": evaluated.low_resource,
                    "num_queries": evaluated.num_queries,
                    "mask_false_negatives": mask,
                    "denoised": denoised,
                    "proportion_applies_to": stages,
                    "miner": miner,
                    "data": record.data or "n/a",
                    "split": record.split,
                    "depth": record.evaluation_depth(evaluated),
                    "config_hash": str(identity["config_hash"]) if identity.get("config_hash") else None,
                    "job": name,
                    "per_query_file": str(per_query_path(job, evaluated.per_query_file)),
                    "_config": comparable_config(source or config, record),  # what drop_duplicates compares
                    "_metrics_file": str(job / "metrics.json"),  # named when the per-query file disagrees
                }
                for evaluated in record.evaluated(config)
            ]
        except (OSError, ValueError, KeyError, TypeError) as error:
            problems.append(problem(name, "failed", f"unreadable result: {error}", cell))
    jobs = expected_jobs(sweep_dir) or []
    plan = _read_yaml(sweep_dir / "multirun.yaml") if jobs else None  # the override keys left out of folder names
    exclude = [str(key) for key in lookup(plan or {}, "hydra.job.config.override_dirname.exclude_keys") or []]
    for overrides in jobs:
        # there when a folder has its overrides or its folder name (a rerun may spell a value otherwise, 0 / 0.0)
        if tuple(sorted(overrides)) not in seen and job_dirname(overrides, exclude) not in folders:
            problems.append(problem(prefix, "missing", "no job folder (never started)", " ".join(overrides)))


def per_query_path(job: Path, named: str) -> Path:
    """The per-query file metrics.json names, or its gzipped copy (``<name>.gz``, as exported)."""
    for path in (job / named, job / f"{named}.gz"):
        if path.is_file():
            return path
    raise FileNotFoundError(f"{job / named} (named by metrics.json) does not exist")


def cell_means(rows: pd.DataFrame, depth: int) -> pd.DataFrame:
    """Mean, std and n over seeds of every measure of ``rows`` (one evaluation depth), per cell."""
    cut = min(int(depth), 100)
    measures = [name for name in (f"mrr@{cut}", f"recall@{cut}", "ndcg@10") if name in rows]
    grouped = rows.groupby([*GROUP, "hard_proportion"], sort=False, dropna=False)[measures]
    table = grouped.agg(["mean", "std"])
    table.columns = [f"{stat}_{name}" for name, stat in table.columns]
    table["n"] = grouped.size()
    return table.reset_index().assign(depth=int(depth))


CHECKED = {  # config.yaml key -> the metrics.json field it must agree with
    "negatives.hard_proportion": "hard_proportion",
    "seed": "seed",
    "model.name": "model",
    "stage.name": "stage",
    "data.name": "data",
    "evaluation.depth": "depth",
    "language.code": "language",
}
OVERRIDDEN = ("negatives.hard_proportion", "seed", "evaluation.depth")  # override keys compared with metrics.json


def _same(expected: Any, recorded: Any) -> bool:
    try:
        return bool(np.isclose(float(expected), float(recorded)))
    except (TypeError, ValueError):
        return str(expected) == str(recorded)


def _parsed(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text else text
    except yaml.YAMLError:
        return text


def metrics_mismatches(record: RunRecord, overrides: list[str], config: dict[str, Any]) -> list[str]:
    """Where metrics.json contradicts the job's overrides or config.yaml in a :data:`CHECKED` field (where both
    record it; language for one evaluated language, p where negatives were drawn)."""
    recorded = {field: getattr(record, field) for field in CHECKED.values()}
    recorded["depth"] = record.evaluation_depth()
    if record.per_language:
        recorded["language"] = None
    if record.num_negatives == 0 or not record.trained:
        recorded["hard_proportion"] = None
    found: list[str] = []
    for item in overrides:
        key, separator, text = item.lstrip("+~").partition("=")
        field = CHECKED[key] if key in OVERRIDDEN else None
        if separator and field and recorded[field] is not None and not _same(_parsed(text), recorded[field]):
            found.append(f"override {key}={text} but metrics.json {field}={recorded[field]!r}")
    for key, field in CHECKED.items():
        value = lookup(config, key)
        if value is not None and recorded[field] is not None and not _same(value, recorded[field]):
            found.append(f"config.yaml {key}={value!r} but metrics.json {field}={recorded[field]!r}")
    return found


def _failure_message(path: Path) -> str:
    try:
        return str(json.loads(path.read_text(encoding="utf-8")).get("error", ""))
    except (OSError, ValueError) as error:
        return f"unreadable failed.json ({error})"


def metric_at(depth: int) -> str:
    """The MRR a run evaluated at ``depth`` reports: ``mrr@100`` at 100 or more, ``mrr@<depth>`` below."""
    return f"mrr@{min(int(depth), 100)}"


def problem(job: str, status: str, error: str, overrides: str = "") -> dict[str, str]:
    """A row of the problems frame."""
    return {"job": job, "status": status, "error": error, "overrides": overrides}


def _measures(row: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in row.items() if "@" in key}


def _agree(first: Any, second: Any) -> bool:
    try:
        return bool(abs(float(first) - float(second)) <= MEAN_TOLERANCE)  # NaN never agrees
    except (TypeError, ValueError):
        return False


def _query_ids(row: dict[str, Any]) -> frozenset[str] | str:
    """The query ids of a sound per-query file, else what is wrong with it."""
    try:
        table = pd.read_csv(row["per_query_file"], sep="\t", dtype={"query_id": str})
    except (OSError, ValueError) as error:
        return f"unreadable ({type(error).__name__}: {error})"
    metric = metric_at(row["depth"])
    missing = [column for column in ("query_id", metric) if column not in table.columns]
    if missing:
        return f"lacks column(s) {missing} (has {list(table.columns)})"
    repeated = table.query_id[table.query_id.duplicated()].unique()
    if len(repeated):
        return f"{len(repeated)} query id(s) appear more than once, e.g. {list(repeated[:3])}"
    empty = table[metric].isna() | table.query_id.isna()
    if empty.any():
        return f"{int(empty.sum())} row(s) without a query id or {metric} score"
    if row.get("num_queries") is not None and len(table) != int(row["num_queries"]):
        return f"{len(table)} queries, but metrics.json reports num_queries={row['num_queries']}"
    means = {name: pd.to_numeric(table[name], errors="coerce").mean() for name in _measures(row) if name in table}
    disagreements = [
        f"{name}: file mean {mean:.7f}, metrics.json {row[name]!r}"
        for name, mean in means.items()
        if not _agree(mean, row[name])
    ]
    if disagreements:
        return f"its means disagree with {row.get('_metrics_file', 'metrics.json')} ({'; '.join(disagreements)})"
    return frozenset(table.query_id)


def check_per_query(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(rows whose per-query file is sound, an ``invalid`` problem per other row): sound as :func:`_query_ids` says,
    with the query set most runs of its (data, language, split) share (ties: the first seen)."""
    invalid: list[dict[str, Any]] = []
    query_sets: dict[int, frozenset[str]] = {}
    groups: dict[tuple[Any, ...], list[int]] = {}
    for index, row in enumerate(rows):
        found = _query_ids(row)
        if isinstance(found, str):
            invalid.append(problem(row["job"], "invalid", f"{row['per_query_file']}: {found}: not counted"))
            continue
        query_sets[index] = found
        groups.setdefault((row["data"], row["language"], row.get("split")), []).append(index)
    for members in groups.values():
        reference = Counter(query_sets[index] for index in members).most_common(1)[0][0]  # ties: the first seen
        for index in members:
            queries, row = query_sets[index], rows[index]
            if queries != reference:
                del query_sets[index]
                reason = (
                    f"its query set differs from the other runs of {row['language']} ({len(reference - queries)} of "
                    f"their {len(reference)} queries missing, {len(queries - reference)} not theirs)"
                )
                invalid.append(problem(row["job"], "invalid", f"{row['per_query_file']}: {reason}: not counted"))
    return [row for index, row in enumerate(rows) if index in query_sets], invalid


def _cell_key(row: dict[str, Any]) -> tuple[Any, ...]:
    proportion = row.get("hard_proportion")
    p = None if proportion is None or pd.isna(proportion) else round(float(proportion), 9)
    named = (row.get(key) for key in ("model", "stage", "language", "variant"))
    return (*named, p, row.get("depth"), row.get("data"), row.get("split"))


def splitting_keys(rows: list[dict[str, Any]]) -> list[str]:
    """The config keys no cell column shows whose value varies among the runs of one cell (seeds apart)."""
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


def split_cells(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` with each :func:`splitting_keys` key its config holds added to its variant (``,k=8``)."""
    keys = splitting_keys(rows)
    if keys:
        log.info("report cells split by %s (varying within a cell)", ", ".join(keys))
    result = []
    for row in rows:
        config = row.get("_config") or {}
        values = [(label_of(key), config[key]) for key in keys if config.get(key) is not None]
        parts = [f"{label}={value:g}" if isinstance(value, float) else f"{label}={value}" for label, value in values]
        result.append({**row, "variant": ",".join([row["variant"], *parts])} if parts else row)
    return result


def _differences(earlier: dict[str, Any], later: dict[str, Any]) -> list[str]:
    """``key=<earlier> (<earlier job>) vs <later>`` per key two rows' configs differ in (none if one is unknown)."""
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
    """The measures (and ``num_queries``) two rows both report that differ by more than :data:`MEAN_TOLERANCE`."""
    found = [
        name
        for name, value in _measures(first).items()
        if name in second and not (pd.isna(value) and pd.isna(second[name])) and not _agree(value, second[name])
    ]
    return found + ["num_queries"] if first.get("num_queries") != second.get("num_queries") else found


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


REASONS = {  # how a copy was found: (the duplicate's reason, the conflict's)
    "hash": ("the same config (run_folder.json config hash)", "same run_folder.json config hash"),
    "unknown": (
        "the same cell and seed (a config.yaml to compare is missing)",
        "same cell and seed, a config.yaml to compare missing",
    ),
    "cell": (
        "the same cell and seed from a config that differs in no key that changes results",
        "same cell and seed, configs that differ in no key that changes results",
    ),
}


def _invalid(row: dict[str, Any], earlier: dict[str, Any], differences: list[str]) -> dict[str, str]:
    shown = "; ".join(differences[:6]) + (f"; ... and {len(differences) - 6} more" if len(differences) > 6 else "")
    return problem(
        row["job"],
        "invalid",
        f"{row['language']}: the same cell and seed as {earlier['job']} from a config that differs in "
        f"{len(differences)} key(s) ({shown}): not counted. A key that varies within a cell splits it (its value "
        "joins the variant) unless a cell column shows it, as here, so these runs cannot share a table: aggregate "
        "each setting's sweep folders on their own (python -m mdr.reporting.aggregate DIR --out OUT)",
    )


def drop_duplicates(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(rows counted once, a problem per row left out). A row copying a row kept before it (the same config hash, or
    the same cell and seed from configs that agree on every key that changes its numbers) is a ``duplicate`` with the
    same numbers, else a ``conflict`` (none counted); the same cell and seed from another config is ``invalid``."""
    kept: list[dict[str, Any]] = []
    left_out: dict[int, dict[str, str]] = {}  # id(row) -> its invalid problem
    copies: dict[int, list[tuple[dict[str, Any], str]]] = {}  # id(kept row) -> (later copy, how it was found)
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
        elif same_config is None and (differences := _differences(earlier, row)):
            left_out[id(row)] = _invalid(row, earlier, differences)
        else:
            unknown = earlier.get("_config") is None or row.get("_config") is None
            how = "hash" if same_config is not None else "unknown" if unknown else "cell"
            copies.setdefault(id(earlier), []).append((row, how))
    head_of = {id(row): (first, how) for first in kept for row, how in copies.get(id(first), [])}
    conflicts: dict[int, str] = {}  # id(kept row) -> the error of its conflict
    for first in kept:
        group = copies.get(id(first), [])
        if any(number_differences(first, row) for row, _ in group):
            conflicts[id(first)] = _conflict([first, *(row for row, _ in group)], [REASONS[how][1] for _, how in group])
    problems: list[dict[str, Any]] = []
    for row in rows:  # in the order read
        head, how = head_of.get(id(row), (row, ""))
        if id(row) in left_out:
            problems.append(left_out[id(row)])
        elif id(head) in conflicts:
            problems.append(problem(row["job"], "conflict", conflicts[id(head)]))
        elif head is not row:
            values = f"{METRIC} {head.get(METRIC, np.nan):.4f} kept, {row.get(METRIC, np.nan):.4f} left out"
            error = (
                f"{row['language']}: {REASONS[how][0]} as {head['job']}: counted once, from {head['job']} ({values})"
            )
            problems.append(problem(row["job"], "duplicate", error))
    if problems:
        log.warning("runs left out or counted once (see the report): %s", dict(Counter(p["status"] for p in problems)))
    return [row for row in kept if id(row) not in conflicts], problems
