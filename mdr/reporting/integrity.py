"""Which runs of a sweep count: per-query files that agree with their metrics.json, report cells split by the
keys that vary within them, and copies of one run counted once (or, with different numbers, not at all)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pandas as pd

from mdr.utils.config_identity import label_of, shown_by

log = logging.getLogger(__name__)

METRIC = "mrr@100"
"""The measure a report's tables and contrasts are of (at depth 100)."""


def metric_at(depth: int) -> str:
    """The MRR a run evaluated at ``depth`` reports: ``mrr@100`` at 100 or more, ``mrr@<depth>`` below."""
    return f"mrr@{min(int(depth), 100)}"


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
