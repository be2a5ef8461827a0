"""Hard-negative pools: mined once per (data, miner settings), cached on disk, filtered when a run uses them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mdr.data.schema import DataError, RetrievalSplit
from mdr.utils.cache import cache_lock, check_file_manifest, write_file_manifest
from mdr.utils.io import atomic_write_lines
from mdr.utils.logging import get_logger

log = get_logger(__name__)

Candidates = list[tuple[str, float]]


@dataclass
class RawPools:
    """A miner's output before filtering."""

    candidates: dict[str, Candidates]  # query_id -> ranked (docid, score), best first, positives removed
    # query_id -> the best positive's score under the same retriever where known (BM25: if it retrieved it)
    positive_scores: dict[str, float] = field(default_factory=dict)


def fingerprint(split: RetrievalSplit) -> str:
    """A short hash of the corpus, the queries and the qrels (the positives a pool leaves out)."""
    digest = hashlib.sha256(split.corpus.fingerprint().encode())
    for query_id in sorted(split.queries):
        digest.update(f"q\t{query_id}\t{split.queries[query_id].text}\n".encode())
    for query_id in sorted(split.qrels):
        for docid, grade in sorted(split.qrels[query_id].items()):
            digest.update(f"r\t{query_id}\t{docid}\t{grade}\n".encode())
    return digest.hexdigest()[:16]


def settings_hash(settings: Mapping[str, object]) -> str:
    """16 hex digits of the SHA-256 of ``settings`` as sorted JSON."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cache_path(cache_dir: str | Path, split: RetrievalSplit, language: str, settings: Mapping[str, object]) -> Path:
    """``<cache_dir>/pools/<language>-<source>-<hash>.jsonl`` for these data and miner settings."""
    key = settings_hash({"data": fingerprint(split), "language": language, **settings})
    return Path(cache_dir) / "pools" / f"{language}-{settings.get('source', 'pool')}-{key}.jsonl"


def save_pools(path: Path, pools: RawPools) -> None:
    """One JSON line per query (``query_id``, ``candidates``, ``positive_score``), then ``<path>.manifest.json``."""
    records = (
        {"query_id": q, "candidates": c, "positive_score": pools.positive_scores.get(q)}
        for q, c in sorted(pools.candidates.items())
    )
    atomic_write_lines(path, (json.dumps(record, ensure_ascii=False) for record in records))
    write_file_manifest(path, records=len(pools.candidates))


def load_pools(path: Path) -> RawPools:
    """Read a pool file written by :func:`save_pools` (a malformed line raises DataError naming it)."""
    pools = RawPools({})
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            try:
                record = json.loads(line)
                pools.candidates[record["query_id"]] = [(str(d), float(s)) for d, s in record["candidates"]]
                if record.get("positive_score") is not None:
                    pools.positive_scores[record["query_id"]] = float(record["positive_score"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                raise DataError(f"{path}:{line_number}: malformed pool line ({error})") from error
    return pools


def load_verified(path: Path) -> tuple[RawPools | None, str | None]:
    """(pools, None) when ``path`` holds exactly what :func:`save_pools` wrote, else (None, why not)."""
    problem, recorded = check_file_manifest(path, "full")
    if problem is not None:
        return None, problem
    try:
        pools = load_pools(path)
    except (DataError, OSError, UnicodeDecodeError) as error:
        return None, str(error)
    if len(pools.candidates) != recorded.get("records"):
        return None, f"{path}: {len(pools.candidates)} queries read, {recorded.get('records')} were written"
    return pools, None


def cached(path: Path, mine: Callable[[], RawPools]) -> RawPools:
    """The pool at ``path``, or ``mine()`` saved there (under a lock; a bad pool file is logged and mined again)."""
    with cache_lock(path.with_name(path.name + ".lock")):
        if path.is_file():
            pools, problem = load_verified(path)
            if pools is not None:
                log.info("reusing hard-negative pool %s", path)
                return pools
            log.warning("hard-negative pool %s cannot be reused (%s): mining it again", path, problem)
        pools = mine()
        save_pools(path, pools)
    log.info("mined hard-negative pool for %d queries -> %s", len(pools.candidates), path)
    return pools


def retrieval_depth(split: RetrievalSplit, depth: int) -> int:
    """How deep to retrieve so that ``depth`` candidates remain once any query's positives are removed."""
    return depth + max((len(split.positives(q)) for q in split.queries), default=0)


def rank_run(run: Mapping[str, Mapping[str, float]]) -> dict[str, Candidates]:
    """A run's documents per query as (docid, score), best first, ties by docid."""
    return {q: sorted(docs.items(), key=lambda item: (-item[1], item[0])) for q, docs in run.items()}


def from_rankings(split: RetrievalSplit, rankings: Mapping[str, Sequence[tuple[str, float]]], depth: int) -> RawPools:
    """Pools from full rankings: positives removed (their best score kept), cut at ``depth``."""
    pools = RawPools({})
    for query_id in split.queries:
        positives = set(split.positives(query_id))
        ranking = rankings.get(query_id, [])
        pools.candidates[query_id] = [(d, s) for d, s in ranking if d not in positives][:depth]
        if positive_scores := [s for d, s in ranking if d in positives]:
            pools.positive_scores[query_id] = max(positive_scores)
    return pools


@dataclass
class FilterStats:
    """Candidates removed by the false-negative controls."""

    queries: int = 0
    kept: int = 0
    skipped_top: int = 0
    skipped_margin: int = 0
    empty: int = 0


def filter_pools(
    pools: RawPools, range_min: int = 0, range_max: int | None = None, margin: float | None = None
) -> tuple[dict[str, list[str]], FilterStats]:
    """Docid pools of the candidates ranked in ``[range_min, range_max)`` (None: to the end) and, with ``margin``,
    scoring at most ``positive_score - margin`` (queries with no positive score are not margin-filtered)."""
    if range_min < 0 or (range_max is not None and range_max <= range_min):
        raise ValueError(f"negatives.pool range must satisfy 0 <= range_min < range_max, got {range_min}, {range_max}")
    stats = FilterStats()
    filtered: dict[str, list[str]] = {}
    for query_id, candidates in pools.candidates.items():
        window = candidates[range_min:range_max]
        stats.skipped_top += min(range_min, len(candidates))
        if margin is not None and query_id in pools.positive_scores:
            ceiling = pools.positive_scores[query_id] - margin
            kept = [docid for docid, score in window if score <= ceiling]
            stats.skipped_margin += len(window) - len(kept)
        else:
            kept = [docid for docid, _ in window]
        filtered[query_id] = kept
        stats.queries += 1
        stats.kept += len(kept)
        stats.empty += not kept
    log.info(
        f"hard-negative pools: {stats.queries} queries, {stats.kept} candidates kept, {stats.skipped_top} skipped as "
        f"top-ranked, {stats.skipped_margin} by margin, {stats.empty} empty"
    )
    return filtered, stats
