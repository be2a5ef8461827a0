"""The stored, memory-mapped corpus: Mapping behaviour, row access, lookups, atomic and shared building."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

import mdr.data.corpus as corpus_module
from mdr.data.collator import passage_text
from mdr.data.corpus import Corpus
from mdr.data.schema import DataError, Passage, Query, RetrievalSplit


def _records(count: int = 10) -> list[dict]:
    return [
        {"docid": f"doc-{i}", "title": f"Titel {i}" if i % 3 else "", "text": f"maandishi {i} ñ 日本 {'x' * i}"}
        for i in range(count)
    ]


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three rows per Arrow record batch, so every path crosses batch boundaries."""
    monkeypatch.setattr(corpus_module, "BATCH_ROWS", 3)


def test_mapping_and_row_access(small_batches: None) -> None:
    records = _records(10)
    corpus = Corpus.from_records(records)
    assert len(corpus) == 10 and list(corpus) == [r["docid"] for r in records]
    for row, record in enumerate(records):
        passage = Passage(record["docid"], record["text"], record["title"])
        assert corpus[record["docid"]] == passage and corpus.passage(row) == passage
        assert corpus.row(record["docid"]) == row and corpus.docid(row) == record["docid"]
    assert "doc-3" in corpus and "doc-10" not in corpus and 3 not in corpus
    with pytest.raises(KeyError):
        corpus["doc-10"]
    with pytest.raises(IndexError):
        corpus.docid(10)
    assert dict(corpus.items()) == {r["docid"]: corpus[r["docid"]] for r in records}
    assert list(corpus.values()) == [corpus.passage(row) for row in range(10)]
    assert dict(corpus) == dict(corpus.items())


def test_texts_and_batches_match_the_collator(small_batches: None) -> None:
    corpus = Corpus.from_records(_records(10))
    expected = [passage_text(corpus.passage(row)) for row in range(10)]
    assert corpus.texts(range(10)) == expected
    assert corpus.texts([4, 0], prefix="passage: ") == [passage_text(corpus.passage(r), "passage: ") for r in (4, 0)]
    batches = list(corpus.iter_batches(4))
    assert [start for start, _, _ in batches] == [0, 4, 8]
    assert [d for _, docids, _ in batches for d in docids] == list(corpus)
    assert [t for _, _, texts in batches for t in texts] == expected


def test_fingerprint_is_content_and_order(tmp_path: Path) -> None:
    records = _records(5)
    first, again = Corpus.from_records(records), Corpus.from_records(records, cache_dir=tmp_path)
    assert first.fingerprint() == again.fingerprint() and first == again
    changed = [dict(r) for r in records]
    changed[2]["title"] = "other"
    assert Corpus.from_records(changed).fingerprint() != first.fingerprint()
    assert Corpus.from_records(records[::-1]).fingerprint() != first.fingerprint()
    # field boundaries are part of the hash: moving text into the title is a different corpus
    split_a = Corpus.from_records([{"docid": "a", "title": "x y", "text": "z"}])
    split_b = Corpus.from_records([{"docid": "a", "title": "x", "text": "y z"}])
    assert split_a.fingerprint() != split_b.fingerprint()
    # equal content under one cache folder is stored once
    assert Corpus.from_records(records, cache_dir=tmp_path).folder == again.folder


def test_lookup_survives_hash_collisions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corpus_module, "docid_key", lambda docid: 7)  # every docid collides
    corpus = Corpus.from_records(_records(6))
    assert [corpus.row(f"doc-{i}") for i in range(6)] == list(range(6))
    assert "doc-6" not in corpus


def test_bad_records_are_errors_and_leave_no_temporary_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(DataError, match=r"records:3: duplicate docid 'doc-1' \(first at records:2\)"):
        Corpus.from_records([*_records(2), {"docid": "doc-1", "text": "again"}])
    with pytest.raises(DataError, match="corpus is empty"):
        Corpus.from_records([])
    with pytest.raises(DataError, match="record 2: docid and text are required"):
        Corpus.from_records([{"docid": "a", "text": "t"}, {"docid": "b", "text": None}])
    assert list(tmp_path.iterdir()) == []


def test_pickles_as_its_folder() -> None:
    corpus = Corpus.from_records(_records(4))
    copy = pickle.loads(pickle.dumps(corpus))
    assert copy.folder == corpus.folder and list(copy.items()) == list(corpus.items())


def test_split_stores_a_plain_mapping() -> None:
    split = RetrievalSplit({"a": Passage("a", "text a")}, {"q": Query("q", "query")}, {"q": {"a": 1}})
    assert isinstance(split.corpus, Corpus) and split.corpus["a"].text == "text a"


def _rows(count: int, marker: Path | None = None, delay: float = 0.0, fail_at: int | None = None):  # noqa: ANN202
    def rows():  # noqa: ANN202
        if marker is not None:
            with marker.open("a") as handle:
                handle.write(f"{os.getpid()}\n")
        for i in range(count):
            if fail_at == i:
                raise RuntimeError("killed mid-build")
            if delay:
                time.sleep(delay)
            yield f"d{i}", "", f"text {i}", 0, i + 1

    return rows


def test_build_cached_reuses_and_rebuilds_on_change(tmp_path: Path) -> None:
    source = tmp_path / "corpus.jsonl"
    source.write_text("one\n")
    marker = tmp_path / "built"
    first = Corpus.build_cached(_rows(5, marker), [source], "test", tmp_path / "cache")
    again = Corpus.build_cached(_rows(5, marker), [source], "test", tmp_path / "cache")
    assert again.folder == first.folder and marker.read_text().count("\n") == 1
    assert first.folder.parent == tmp_path / "cache" / "corpora"
    assert isinstance(first._hashes, np.memmap)  # opened memory-mapped, not read into the heap
    source.write_text("changed\n")
    changed = Corpus.build_cached(_rows(6, marker), [source], "test", tmp_path / "cache")
    assert changed.folder != first.folder and len(changed) == 6 and marker.read_text().count("\n") == 2


def test_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    source = tmp_path / "corpus.jsonl"
    source.write_text("x\n")
    with pytest.raises(RuntimeError, match="killed mid-build"):
        Corpus.build_cached(_rows(50, fail_at=20), [source], "test", tmp_path / "cache")
    leftovers = [p.name for p in (tmp_path / "cache" / "corpora").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []
    stale = tmp_path / "cache" / "corpora" / f"{corpus_module.source_key([source], 'test')}.tmp-999999"
    stale.mkdir()  # what a SIGKILLed builder leaves
    corpus = Corpus.build_cached(_rows(50), [source], "test", tmp_path / "cache")
    assert len(corpus) == 50 and not stale.exists()


def _build_in_child(source: str, cache: str, marker: str, out: str) -> None:
    corpus = Corpus.build_cached(_rows(40, Path(marker), delay=0.01), [Path(source)], "test", cache)
    Path(out).write_text(f"{corpus.folder}\n{len(corpus)}\n")


def test_concurrent_builders_build_once(tmp_path: Path) -> None:
    source, marker = tmp_path / "corpus.jsonl", tmp_path / "built"
    source.write_text("x\n")
    context = multiprocessing.get_context("fork")
    children = [
        context.Process(target=_build_in_child, args=(str(source), str(tmp_path / "c"), str(marker), str(tmp_path / n)))
        for n in ("a", "b")
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=120)
        assert child.exitcode == 0
    assert marker.read_text().count("\n") == 1  # the second process waited on the lock and reused the result
    assert (tmp_path / "a").read_text() == (tmp_path / "b").read_text()
