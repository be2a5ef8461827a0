"""Denoised hard negatives (NV-Retriever's TopK-PercPos, docs/negatives.md): keep the candidates a teacher scores at
most ``positive - |positive| * relative_margin`` (``positive``: the query's lowest-scored judged positive)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mdr.data.schema import RetrievalSplit
from mdr.evaluation.evaluator import encode_texts
from mdr.mining.pools import RawPools, fingerprint, load_verified, save_pools, settings_hash
from mdr.models.bi_encoder import BiEncoder
from mdr.models.precision import autocast_dtype
from mdr.utils.cache import cache_lock, digests_dir, folder_digest
from mdr.utils.logging import get_logger
from mdr.utils.ranks import cuda_device

log = get_logger(__name__)

SCORES_VERSION = 1
"""Bumped whenever the teacher-score computation changes, so old caches are not reused."""

TeacherLoader = Callable[[], tuple[BiEncoder, Any, str]]
"""Returns (teacher encoder, its tokenizer, its folder or hub id)."""


@dataclass(frozen=True)
class DenoiseSettings:
    """``negatives.denoise``: ``teacher`` is a model group (``conf/model/<name>.yaml``) or an encoder folder."""

    enabled: bool = False
    teacher: str = "me5_small"
    relative_margin: float = 0.05
    batch_size: int = 64


@dataclass
class DenoiseStats:
    """What denoising did to a run's pools (in metrics.json): ``emptied`` pools get random negatives, queries
    ``without_positive`` are kept as they were."""

    teacher: str
    relative_margin: float
    queries: int = 0
    candidates: int = 0
    dropped: int = 0
    queries_with_drops: int = 0
    emptied: int = 0
    without_positive: int = 0
    from_cache: bool = False
    cache_file: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)


class NegativePools(dict[str, list[str]]):
    """Hard-negative docid pools per training query, plus ``denoise``: what denoising dropped (None: off)."""

    def __init__(self, pools: Mapping[str, list[str]] | None = None, denoise: DenoiseStats | None = None) -> None:
        super().__init__(pools or {})
        self.denoise = denoise


def teacher_identity(encoder: BiEncoder, name_or_path: str, cache_dir: str | Path | None = None) -> str:
    """The teacher for the scores' cache key: a folder's content digest (not its path) or a hub id, plus settings."""
    root = Path(name_or_path)
    memo = digests_dir(cache_dir) if cache_dir else None
    what = f"folder:{folder_digest(root, memo)}" if root.is_dir() else name_or_path
    settings = json.dumps(asdict(encoder.settings), sort_keys=True)
    return f"{what}#{settings}"


def scores_cache_path(
    cache_dir: str | Path, language: str, split: RetrievalSplit, pools: Mapping[str, Sequence[str]], identity: str
) -> Path:
    """``<cache_dir>/pools/<language>-teacher-<hash>.jsonl`` for these data, pools and teacher."""
    digest = hashlib.sha256()
    for query_id in sorted(pools):
        digest.update(f"{query_id}\t{' '.join(pools[query_id])}\n".encode())
    what = {"data": fingerprint(split), "pools": digest.hexdigest()[:16], "teacher": identity}
    key = settings_hash({**what, "version": SCORES_VERSION})
    return Path(cache_dir) / "pools" / f"{language}-teacher-{key}.jsonl"


default_device = cuda_device  # this process's CUDA device (LOCAL_RANK, SLURM_LOCALID) where there is one, else cpu


def teacher_scores(
    pools: Mapping[str, Sequence[str]],
    split: RetrievalSplit,
    encoder: BiEncoder,
    tokenizer: Any,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> RawPools:
    """Teacher dot products of each query's candidates and, as ``positive_scores``, its lowest-scoring positive."""
    settings = encoder.settings
    encoder.eval()
    encoder.to(device)
    query_ids = sorted(query_id for query_id, docids in pools.items() if docids)
    positives = {query_id: split.positives(query_id) for query_id in query_ids}
    docids = sorted({d for q in query_ids for d in pools[q]} | {d for q in query_ids for d in positives[q]})
    row = {docid: index for index, docid in enumerate(docids)}
    dtype = autocast_dtype(device)

    def encode(encode_fn: Callable, texts: list[str], max_length: int) -> np.ndarray:
        return encode_texts(encode_fn, tokenizer, texts, max_length, batch_size, device, dtype)

    texts = split.corpus.texts([split.corpus.row(docid) for docid in docids], settings.passage_prefix)
    passage_vectors = encode(encoder.encode_passages, texts, settings.passage_max_length)  # (passages, dim)
    texts = [settings.query_prefix + split.queries[query_id].text for query_id in query_ids]
    query_vectors = encode(encoder.encode_queries, texts, settings.query_max_length)  # (queries, dim)
    scored = RawPools({})
    for index, query_id in enumerate(query_ids):
        candidates = list(pools[query_id])
        scores = passage_vectors[[row[d] for d in candidates]] @ query_vectors[index]  # (candidates,)
        scored.candidates[query_id] = list(zip(candidates, scores.astype(float).tolist()))
        if positives[query_id]:
            positive = passage_vectors[[row[d] for d in positives[query_id]]] @ query_vectors[index]  # (positives,)
            scored.positive_scores[query_id] = float(positive.min())
    return scored


def apply_relative_margin(
    pools: Mapping[str, Sequence[str]], scores: RawPools, relative_margin: float, teacher: str = ""
) -> tuple[dict[str, list[str]], DenoiseStats]:
    """Keep the candidates scoring at most ``positive - |positive| * relative_margin``; count what goes."""
    stats = DenoiseStats(teacher=teacher, relative_margin=float(relative_margin))
    kept_pools: dict[str, list[str]] = {}
    for query_id, docids in pools.items():
        stats.queries += 1
        stats.candidates += len(docids)
        positive = scores.positive_scores.get(query_id)
        if not docids or positive is None:
            stats.without_positive += bool(docids)
            kept_pools[query_id] = list(docids)
            continue
        ceiling = positive - abs(positive) * relative_margin
        teacher_score = dict(scores.candidates[query_id])
        kept = [docid for docid in docids if teacher_score[docid] <= ceiling]
        dropped = len(docids) - len(kept)
        stats.dropped += dropped
        stats.queries_with_drops += dropped > 0
        stats.emptied += not kept
        kept_pools[query_id] = kept
    return kept_pools, stats


def _missing_scores(pools: Mapping[str, Sequence[str]], split: RetrievalSplit, scores: RawPools) -> str | None:
    """Why ``scores`` do not cover ``pools`` (a query or candidate without a teacher score), or None."""
    for query_id in sorted(pools):
        docids = pools[query_id]
        if not docids:
            continue
        scored = dict(scores.candidates.get(query_id, ()))
        missing = [docid for docid in docids if docid not in scored]
        if missing:
            return f"query {query_id!r}: {len(missing)} of {len(docids)} candidates have no teacher score"
        if split.positives(query_id) and query_id not in scores.positive_scores:
            return f"query {query_id!r} has judged positives but no positive score"
    return None


def cached_teacher_scores(
    pools: Mapping[str, Sequence[str]],
    split: RetrievalSplit,
    language: str,
    encoder: BiEncoder,
    tokenizer: Any,
    name_or_path: str,
    cache_dir: str | Path,
    batch_size: int = 64,
    device: str | None = None,
) -> tuple[RawPools, Path, bool]:
    """(:func:`teacher_scores` of ``pools``, their cache file, whether cached); a bad cache file is scored again."""
    identity = teacher_identity(encoder, name_or_path, cache_dir)
    path = scores_cache_path(cache_dir, language, split, pools, identity)
    with cache_lock(path.with_name(path.name + ".lock")):
        if path.is_file():
            scores, problem = load_verified(path)
            problem = problem or _missing_scores(pools, split, scores)  # type: ignore[arg-type]
            if problem is None:
                return scores, path, True  # type: ignore[return-value]
            log.warning("teacher scores %s cannot be reused (%s): scoring again", path, problem)
        scores = teacher_scores(pools, split, encoder, tokenizer, batch_size, device or default_device())
        save_pools(path, scores)
    return scores, path, False


def denoise_pools(
    pools: Mapping[str, list[str]],
    split: RetrievalSplit,
    language: str,
    settings: DenoiseSettings,
    load_teacher: TeacherLoader,
    cache_dir: str | Path,
    device: str | None = None,
) -> NegativePools:
    """Drop likely false negatives from ``pools`` (the module's rule); ``.denoise`` of the result says how many."""
    encoder, tokenizer, name_or_path = load_teacher()
    scores, path, from_cache = cached_teacher_scores(
        pools, split, language, encoder, tokenizer, name_or_path, cache_dir, settings.batch_size, device
    )
    kept, stats = apply_relative_margin(pools, scores, settings.relative_margin, str(name_or_path))
    stats.from_cache, stats.cache_file = from_cache, str(path)
    share = 100 * stats.dropped / stats.candidates if stats.candidates else 0.0
    log.info(
        f"denoised hard negatives with {stats.teacher} (relative_margin {settings.relative_margin:g}"
        f"{', cached scores' if from_cache else ''}): dropped {stats.dropped} of {stats.candidates} candidates "
        f"({share:.1f}%) in {stats.queries_with_drops} of {stats.queries} queries; {stats.emptied} pools left empty; "
        f"{stats.without_positive} queries without a judged positive kept as they were"
    )
    return NegativePools(kept, stats)
