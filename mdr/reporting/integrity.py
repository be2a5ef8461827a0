"""Which runs of a sweep count: per-query files that agree with their metrics.json, report cells split by the
keys that vary within them, and copies of one run counted once (or, with different numbers, not at all)."""

from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from mdr.utils.config_identity import label_of, shown_by

log = logging.getLogger(__name__)

METRIC = "mrr@100"  # the measure of a report's tables and contrasts
MEAN_TOLERANCE = 1e-6  # per-query files hold 6 decimals: how far their mean (or two copies) may differ and agree


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
