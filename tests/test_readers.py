"""Readers: the local layout, the hub schema (on a local folder), and clear errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mdr.data.readers import HubReader, LocalReader
from mdr.data.schema import DataError

from conftest import XQUAD_SENT


def test_local_reader_reads_xquad_sent() -> None:
    reader = LocalReader(XQUAD_SENT / "th", "th")
    train, test = reader.load("train"), reader.load("test")
    assert len(train.queries) == 555 and len(test.queries) == 635
    assert train.corpus is test.corpus and len(train.corpus) == 852
    query_id = next(iter(test.queries))
    positives = test.positives(query_id)
    assert positives and all(docid in test.corpus for docid in positives)


def _copy_language(tmp_path: Path) -> Path:
    root = tmp_path / "xx"
    for name in ("corpus.jsonl", "queries/train.jsonl", "qrels/train.txt"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text((XQUAD_SENT / "th" / name).read_text(encoding="utf-8"), encoding="utf-8")
    return root


def test_malformed_jsonl_names_file_and_line(tmp_path: Path) -> None:
    root = _copy_language(tmp_path)
    lines = (root / "queries/train.jsonl").read_text(encoding="utf-8").splitlines()
    lines[6] = '{"query_id": "broken", "query": '
    (root / "queries/train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"queries/train\.jsonl:7: malformed JSON"):
        LocalReader(root, "xx").load("train")


def test_missing_key_names_file_and_line(tmp_path: Path) -> None:
    root = _copy_language(tmp_path)
    with (root / "corpus.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"docid": "x"}) + "\n")
    with pytest.raises(DataError, match=r"corpus\.jsonl:853: missing key\(s\) \['text'\]"):
        LocalReader(root, "xx").load("train")


def test_qrels_with_unknown_docid_names_line(tmp_path: Path) -> None:
    root = _copy_language(tmp_path)
    with (root / "qrels/train.txt").open("a") as handle:
        handle.write("q1 0 no_such_doc 1\n")
    with pytest.raises(DataError, match=r"qrels/train\.txt:556: docid 'no_such_doc' is not in the corpus"):
        LocalReader(root, "xx").load("train")


def test_missing_qrels_and_empty_corpus_and_unknown_language(tmp_path: Path) -> None:
    root = _copy_language(tmp_path)
    with pytest.raises(DataError, match=r"qrels/test\.txt: qrels file not found|queries/test\.jsonl: file not found"):
        LocalReader(root, "xx").load("test")
    (root / "corpus.jsonl").write_text("\n")
    with pytest.raises(DataError, match="corpus is empty"):
        LocalReader(root, "xx").load("train")
    with pytest.raises(DataError, match="language 'zz' has no data"):
        LocalReader(tmp_path / "zz", "zz").load("train")


def _write_hub_folder(root: Path, corpus: list[dict], rows: dict[str, list[dict]]) -> None:
    """A local dataset repo laid out like castorini/mr-tydi(-corpus), with configs declared in README.md."""
    queries, documents = root / "mr-tydi", root / "mr-tydi-corpus"
    for split, split_rows in rows.items():
        path = queries / "swahili" / f"{split}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in split_rows))
    (documents / "swahili").mkdir(parents=True, exist_ok=True)
    (documents / "swahili" / "corpus.jsonl").write_text("".join(json.dumps(p) + "\n" for p in corpus))
    splits = "\n".join(f"      - split: {s}\n        path: swahili/{s}.jsonl" for s in rows)
    card = "---\nconfigs:\n  - config_name: swahili\n    data_files:\n{}\n---\n"
    (queries / "README.md").write_text(card.format(splits))
    (documents / "README.md").write_text(card.format("      - split: train\n        path: swahili/corpus.jsonl"))


def test_hub_reader_on_mrtydi_schema(tmp_path: Path) -> None:
    corpus = [{"docid": f"d{i}#0", "title": f"T{i}", "text": f"passage {i}"} for i in range(6)]
    train_rows = [
        {"query_id": "1", "query": "swali moja", "positive_passages": [corpus[0]], "negative_passages": corpus[2:4]},
        {"query_id": "2", "query": "swali mbili", "positive_passages": [corpus[1]], "negative_passages": []},
    ]
    test_rows = [{"query_id": "3", "query": "swali tatu", "positive_passages": [corpus[5]], "negative_passages": []}]
    _write_hub_folder(tmp_path, corpus, {"train": train_rows, "test": test_rows})
    reader = HubReader(str(tmp_path / "mr-tydi"), str(tmp_path / "mr-tydi-corpus"), "swahili", language="sw")
    train = reader.load("train")
    assert set(train.corpus) == {p["docid"] for p in corpus}
    assert train.corpus["d0#0"].title == "T0"
    assert train.qrels == {"1": {"d0#0": 1}, "2": {"d1#0": 1}}
    assert train.shipped_negatives == {"1": ["d2#0", "d3#0"]}
    test = reader.load("test")
    assert test.positives("3") == ["d5#0"] and test.shipped_negatives == {}


def test_hub_reader_rejects_positive_outside_corpus(tmp_path: Path) -> None:
    corpus = [{"docid": "a", "title": "", "text": "x"}]
    rows = [
        {
            "query_id": "1",
            "query": "q",
            "positive_passages": [{"docid": "b", "title": "", "text": "y"}],
            "negative_passages": [],
        }
    ]
    _write_hub_folder(tmp_path, corpus, {"train": rows})
    reader = HubReader(str(tmp_path / "mr-tydi"), str(tmp_path / "mr-tydi-corpus"), "swahili", language="sw")
    with pytest.raises(DataError, match=r"query '1' has positive docid\(s\) \['b'\] not in the corpus"):
        reader.load("train")


def test_hub_reader_language_without_config() -> None:
    with pytest.raises(DataError, match="language 'hi' has no config in castorini/mr-tydi"):
        HubReader("castorini/mr-tydi", "castorini/mr-tydi-corpus", None, language="hi")
