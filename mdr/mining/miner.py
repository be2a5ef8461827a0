"""Pick, cache and filter the hard-negative pool a run asks for (BM25 via bm25s or pyserini, dense, shipped)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from mdr.data.schema import RetrievalSplit
from mdr.mining.pools import RawPools, cache_path, cached, filter_pools, from_rankings
from mdr.utils.logging import get_logger

log = get_logger(__name__)

EncoderLoader = Callable[[str], tuple[Any, Any]]


@dataclass(frozen=True)
class PoolSettings:
    """``negatives.pool``: where candidates come from and which of them may be sampled (docs/negatives.md)."""

    source: Literal["bm25", "dense", "shipped"] = "bm25"  # shipped: the data set's own negatives
    backend: Literal["bm25s", "pyserini"] = "bm25s"  # bm25s: mdr's tokens, on-disk index; pyserini: Lucene, Java 21+
    depth: int = 100  # candidates retrieved per query
    range_min: int = 0  # sample only ranks in [range_min, range_max) of the positive-free ranking
    range_max: int | None = 50
    margin: float | None = None  # drop candidates scoring above (positive score - margin); None: no margin filter
    encoder: str | None = None  # dense: the encoder folder (train.py's encoder/, a model folder) or hub id
    threads: int | None = None  # bm25 threads (None: the CPUs this process may use, at most 8); not in the key
    tokenizer: str = "default"  # bm25s: default (words, bigrams of unspaced scripts) or thai_words (PyThaiNLP)


def mine(
    settings: PoolSettings,
    split: RetrievalSplit,
    language: str,
    analyzer: str,
    cache_dir: str | Path,
    load_encoder: EncoderLoader,
    device: str | None = None,
    *,
    key: Mapping[str, Any],
) -> RawPools:
    """The unfiltered pool for ``settings``, cached under ``key`` (:func:`mdr.training.pool_key`); a dense miner
    encodes on ``device`` (None: this process's CUDA device, else CPU)."""
    if settings.source == "shipped":
        if not split.shipped_negatives:
            raise ValueError("negatives.pool.source=shipped but the data set ships no negative_passages")
        rankings = {q: [(d, 0.0) for d in docs] for q, docs in split.shipped_negatives.items()}
        return from_rankings(split, rankings, settings.depth)
    if settings.source not in ("bm25", "dense"):
        raise ValueError(f"negatives.pool.source={settings.source!r}: expected bm25, dense or shipped")
    if settings.source == "bm25" and settings.backend != "bm25s":
        if settings.tokenizer != "default":
            raise ValueError(
                f"negatives.pool.tokenizer={settings.tokenizer!r} is for backend=bm25s (pyserini uses its analyzer)"
            )
        if settings.backend != "pyserini":
            raise ValueError(f"negatives.pool.backend={settings.backend!r}: expected bm25s or pyserini")
    if settings.source == "dense" and not settings.encoder:
        raise ValueError("negatives.pool.source=dense needs negatives.pool.encoder (an encoder folder or model)")

    def run() -> RawPools:
        if settings.source == "dense":
            from mdr.mining.dense import dense_pools

            encoder, tokenizer = load_encoder(settings.encoder)  # type: ignore[arg-type]
            return dense_pools(
                encoder, tokenizer, split, settings.depth, device=device, work_dir=Path(cache_dir) / "tmp"
            )
        if settings.backend == "pyserini":
            from mdr.mining.lucene import pyserini_pools

            return pyserini_pools(split, analyzer, settings.depth, threads=settings.threads)
        from mdr.mining.bm25 import bm25s_pools

        return bm25s_pools(
            split, settings.depth, cache_dir=cache_dir, threads=settings.threads, tokenizer=settings.tokenizer
        )

    return cached(cache_path(cache_dir, split, language, key), run)


def hard_negative_pools(
    settings: PoolSettings, *args: Any, key: Mapping[str, Any], **kwargs: Any
) -> dict[str, list[str]]:
    """Docid pools after the false-negative controls (their skip counts are logged); ``args``: :func:`mine`'s."""
    raw = mine(settings, *args, key=key, **kwargs)
    pools, stats = filter_pools(raw, settings.range_min, settings.range_max, settings.margin)
    log.debug("pool settings %s: %s", asdict(settings), asdict(stats))  # the counts: mdr.mining.pools at INFO
    return pools
