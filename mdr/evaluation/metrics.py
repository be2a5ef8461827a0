"""MRR@100, Recall@100 and nDCG@10 per query and averaged, as ``trec_eval -c -M 100 -m recip_rank -m recall.100
-m ndcg_cut.10`` gives them (docs/evaluation.md; depth ``d`` < 100: ``mrr@d``, ``recall@d``); TREC run files."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

from mdr.data.schema import DataError, Qrels
from mdr.utils.io import atomic_write_lines

Run = Mapping[str, Mapping[str, float]]
"""query_id -> {docid: score}."""

MIN_DEPTH = 10
"""nDCG@10 needs the top 10."""


def metric_names(depth: int = 100) -> tuple[str, str, str]:
    """The names of the measures a run retrieved to ``depth`` gives (a ValueError below :data:`MIN_DEPTH`)."""
    if depth < MIN_DEPTH:
        raise ValueError(f"evaluation depth {depth} is below {MIN_DEPTH}: nDCG@10 needs the top {MIN_DEPTH}")
    cut = min(int(depth), 100)
    return (f"mrr@{cut}", f"recall@{cut}", "ndcg@10")


def ranked(scores: Mapping[str, float], depth: int = 100) -> list[str]:
    """Docids in trec_eval order (score desc, docid desc), cut at ``depth``."""
    return [docid for docid, _ in sorted(scores.items(), key=lambda item: (item[1], item[0]), reverse=True)][:depth]


def query_metrics(ranking: list[str], judged: Mapping[str, int], depth: int = 100) -> dict[str, float]:
    """The three measures (:func:`metric_names`) for one query given its trec_eval-ordered ranking."""
    mrr_name, recall_name, ndcg_name = metric_names(depth)
    cut = min(int(depth), 100)
    ranking = ranking[:cut]
    relevant = {docid for docid, grade in judged.items() if grade > 0}
    reciprocal_rank = next((1.0 / rank for rank, docid in enumerate(ranking, 1) if docid in relevant), 0.0)
    recall = sum(docid in relevant for docid in ranking) / len(relevant)
    dcg = sum(max(judged.get(docid, 0), 0) / math.log2(rank + 1) for rank, docid in enumerate(ranking[:10], 1))
    ideal_grades = sorted((grade for grade in judged.values() if grade > 0), reverse=True)[:10]
    ideal = sum(grade / math.log2(rank + 1) for rank, grade in enumerate(ideal_grades, 1))
    return {mrr_name: reciprocal_rank, recall_name: recall, ndcg_name: dcg / ideal}


def evaluate_run(run: Run, qrels: Qrels, depth: int = 100) -> dict[str, dict[str, float]]:
    """Per-query measures, named by ``depth``, of every query with a relevant document (absent from ``run``: 0)."""
    metric_names(depth)  # a depth below 10 fails here, before any query
    per_query: dict[str, dict[str, float]] = {}
    for query_id, judged in qrels.items():
        if not any(grade > 0 for grade in judged.values()):
            continue
        per_query[query_id] = query_metrics(ranked(run.get(query_id, {}), depth), judged, depth)
    return per_query


def mean_metrics(per_query: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Averages over queries (the ``-c`` mean when ``per_query`` came from :func:`evaluate_run`)."""
    if not per_query:
        raise ValueError("no judged query to average over")
    names = list(next(iter(per_query.values())))
    return {name: sum(values[name] for values in per_query.values()) / len(per_query) for name in names}


# TREC run files: ``qid Q0 docid rank score tag``.
def write_run(path: str | os.PathLike[str], run: Run, tag: str = "mdr", depth: int = 100) -> Path:
    """Write ``run`` in trec_eval order, ``depth`` lines per query, atomically."""
    lines = []
    for query_id in sorted(run):
        scores = run[query_id]
        for rank, docid in enumerate(ranked(scores, depth), start=1):
            # 9 significant digits round-trip float32 scores, so the file ranks exactly as in memory
            lines.append(f"{query_id} Q0 {docid} {rank} {scores[docid]:.9g} {tag}")
    return atomic_write_lines(path, lines)


def read_run(path: str | os.PathLike[str]) -> dict[str, dict[str, float]]:
    """Read a TREC run file into query_id -> {docid: score}."""
    run: dict[str, dict[str, float]] = {}
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 6:
                raise DataError(f"{path}:{line_number}: expected 'qid Q0 docid rank score tag'")
            run.setdefault(fields[0], {})[fields[2]] = float(fields[4])
    return run
