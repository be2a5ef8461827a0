"""Readers: the local layout, the published Mr. TyDi / MIRACL / MS MARCO layouts (local folders, gzip included),
the offline error, and a clear file:line error (or a counted skip) for every kind of bad input."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import pytest
from published_layouts import passages, write_gz_jsonl, write_miracl, write_mrtydi, write_msmarco

from mdr.data.corpus import Corpus
from mdr.data.readers import LocalReader, MiraclReader, MrTydiReader
from mdr.data.schema import DataError

from conftest import XQUAD_SENT


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def test_local_reader_reads_xquad_sent(cache: Path) -> None:
    reader = LocalReader(XQUAD_SENT / "th", "th", cache)
    train, test = reader.load("train"), reader.load("test")
    assert len(train.queries) == 555 and len(test.queries) == 635
    assert train.corpus is test.corpus and isinstance(train.corpus, Corpus) and len(train.corpus) == 852
    assert train.corpus.folder.parent == cache / "corpora"
    query_id = next(iter(test.queries))
    positives = test.positives(query_id)
    assert positives and all(docid in test.corpus for docid in positives)
    # a second reader (another process, another rank) maps the stored corpus instead of parsing it again
    assert LocalReader(XQUAD_SENT / "th", "th", cache).corpus().folder == train.corpus.folder


def _copy_language(tmp_path: Path) -> Path:
    root = tmp_path / "xx"
    for name in ("corpus.jsonl", "queries/train.jsonl", "qrels/train.txt"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text((XQUAD_SENT / "th" / name).read_text(encoding="utf-8"), encoding="utf-8")
    return root


def _load(root: Path, cache: Path, split: str = "train"):  # noqa: ANN202
    return LocalReader(root, "xx", cache).load(split)


def _edit_line(path: Path, index: int, text: str) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[index] = text
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_malformed_jsonl_names_file_and_line(tmp_path: Path, cache: Path) -> None:
    root = _copy_language(tmp_path)
    _edit_line(root / "queries/train.jsonl", 6, '{"query_id": "broken", "query": ')
    with pytest.raises(DataError, match=r"queries/train\.jsonl:7: malformed JSON"):
        _load(root, cache)


def test_missing_key_names_file_and_line(tmp_path: Path, cache: Path) -> None:
    root = _copy_language(tmp_path)
    with (root / "corpus.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"docid": "x"}) + "\n")
    with pytest.raises(DataError, match=r"corpus\.jsonl:853: missing key\(s\) \['text'\]"):
        _load(root, cache)


def test_qrels_with_unknown_docid_names_line(tmp_path: Path, cache: Path) -> None:
    root = _copy_language(tmp_path)
    first_query = (root / "qrels/train.txt").read_text().split()[0]
    with (root / "qrels/train.txt").open("a") as handle:
        handle.write(f"{first_query} 0 no_such_doc 1\n")
    with pytest.raises(DataError, match=r"qrels/train\.txt:556: docid 'no_such_doc' is not in the corpus"):
        _load(root, cache)


def test_missing_qrels_and_empty_corpus_and_unknown_language(tmp_path: Path, cache: Path) -> None:
    root = _copy_language(tmp_path)
    with pytest.raises(DataError, match=r"qrels/test\.txt: qrels file not found|queries/test\.jsonl: file not found"):
        _load(root, cache, "test")
    (root / "corpus.jsonl").write_text("\n")
    with pytest.raises(DataError, match="corpus is empty"):
        _load(root, cache)
    with pytest.raises(DataError, match="language 'zz' has no data"):
        LocalReader(tmp_path / "zz", "zz", cache).load("train")


# ---- issue 10 item 2: bad input is an error naming file:line, or a counted and logged skip -------------------


def test_qrels_naming_a_query_not_in_the_queries_file(tmp_path: Path, cache: Path) -> None:
    root = _copy_language(tmp_path)
    docid = (root / "qrels/train.txt").read_text().split()[2]
    with (root / "qrels/train.txt").open("a") as handle:
        handle.write(f"no_such_query 0 {docid} 1\n")
    with pytest.raises(DataError, match=r"qrels/train\.txt:556: query id 'no_such_query' is not in .*train\.jsonl"):
        _load(root, cache)


def test_duplicate_query_ids(tmp_path: Path, cache: Path) -> None:
    root = _copy_language(tmp_path)
    first = json.loads((root / "queries/train.jsonl").read_text(encoding="utf-8").splitlines()[0])
    with (root / "queries/train.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"query_id": first["query_id"], "query": "another text"}) + "\n")
    with pytest.raises(
        DataError, match=rf"train\.jsonl:556: duplicate query_id '{first['query_id']}' \(first at line 1\)"
    ):
        _load(root, cache)


def test_duplicate_qrels_lines(tmp_path: Path, cache: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _copy_language(tmp_path)
    qrels = root / "qrels/train.txt"
    query_id, _, docid, _ = qrels.read_text().splitlines()[0].split()
    with qrels.open("a") as handle:
        handle.write(f"{query_id} 0 {docid} 1\n")  # the same judgement again: harmless, skipped and counted
    with caplog.at_level(logging.WARNING):
        split = _load(root, cache)
    assert split.qrels[query_id] == {docid: 1}
    assert "1 repeated qrels lines (same query, docid and grade) skipped (first at" in caplog.text
    with qrels.open("a") as handle:
        handle.write(f"{query_id} 0 {docid} 0\n")  # a conflicting grade: which one is meant is unknown
    with pytest.raises(
        DataError, match=rf"train\.txt:557: query '{query_id}' docid '{docid}' graded 0 here and 1 at line 1"
    ):
        _load(root, cache)


def test_utf8_bom_is_accepted(tmp_path: Path, cache: Path) -> None:
    root = _copy_language(tmp_path)
    for name in ("qrels/train.txt", "queries/train.jsonl", "corpus.jsonl"):
        (root / name).write_bytes(b"\xef\xbb\xbf" + (root / name).read_bytes())
    split = _load(root, cache)
    first_query = (XQUAD_SENT / "th/qrels/train.txt").read_text().split()[0]
    assert first_query in split.qrels and first_query in split.queries and len(split.queries) == 555
    assert all(not q.startswith("\ufeff") for q in split.qrels) and len(split.corpus) == 852


@pytest.mark.parametrize(
    ("name", "line", "record", "message"),
    [
        ("corpus.jsonl", 3, {"docid": "th_x", "title": "", "text": None}, r"corpus\.jsonl:3: text is null"),
        ("corpus.jsonl", 3, {"docid": None, "text": "t"}, r"corpus\.jsonl:3: docid is null"),
        ("queries/train.jsonl", 5, {"query_id": "q", "query": None}, r"train\.jsonl:5: query is null"),
        ("queries/train.jsonl", 5, {"query_id": "q", "query": "  "}, r"train\.jsonl:5: empty query text"),
        ("queries/train.jsonl", 5, {"query_id": None, "query": "x"}, r"train\.jsonl:5: query_id is null"),
    ],
)
def test_null_and_empty_fields(tmp_path: Path, cache: Path, name: str, line: int, record: dict, message: str) -> None:
    root = _copy_language(tmp_path)
    _edit_line(root / name, line - 1, json.dumps(record))
    with pytest.raises(DataError, match=message):
        _load(root, cache)


def test_null_title_reads_as_no_title(tmp_path: Path, cache: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _copy_language(tmp_path)
    first = json.loads((root / "corpus.jsonl").read_text(encoding="utf-8").splitlines()[0])
    _edit_line(root / "corpus.jsonl", 0, json.dumps({**first, "title": None}))
    with caplog.at_level(logging.WARNING):
        split = _load(root, cache)
    assert split.corpus[first["docid"]].title == "" and "1 null titles read as no title" in caplog.text


@pytest.mark.parametrize("gz", [False, True])
def test_non_utf8_bytes_name_file_and_line(tmp_path: Path, cache: Path, gz: bool) -> None:
    lines = [json.dumps(p) for p in passages()]
    data = ("\n".join(lines[:4]) + "\n").encode() + b'{"docid": "bad", "text": "caf\xe9"}\n'
    if gz:
        queries, corpus_repo = write_mrtydi(tmp_path)
        (corpus_repo / "mrtydi-v1.1-swahili/corpus.jsonl.gz").write_bytes(gzip.compress(data))
        reader = MrTydiReader(str(queries), str(corpus_repo), "swahili", language="sw", cache_dir=cache)
        where = r"corpus\.jsonl\.gz:5"
    else:
        root = _copy_language(tmp_path)
        (root / "corpus.jsonl").write_bytes(data)
        reader = LocalReader(root, "xx", cache)
        where = r"corpus\.jsonl:5"
    with pytest.raises(DataError, match=where + r": not valid UTF-8 \(byte 0xe9 at column 30\)"):
        reader.load("train")


def test_duplicate_docid_names_both_lines(tmp_path: Path, cache: Path) -> None:
    root = _copy_language(tmp_path)
    first = (root / "corpus.jsonl").read_text(encoding="utf-8").splitlines()[0]
    with (root / "corpus.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(first + "\n")
    with pytest.raises(
        DataError, match=r"corpus\.jsonl:853: duplicate docid 'th_a00_p00_s00' \(first at .*corpus\.jsonl:1\)"
    ):
        _load(root, cache)


# ---- Mr. TyDi ---------------------------------------------------------------------------------------------


def _mrtydi(tmp_path: Path, cache: Path) -> MrTydiReader:
    queries, corpus_repo = write_mrtydi(tmp_path)
    return MrTydiReader(str(queries), str(corpus_repo), "swahili", language="sw", cache_dir=cache)


def test_mrtydi_published_layout(tmp_path: Path, cache: Path) -> None:
    reader = _mrtydi(tmp_path, cache)
    train, test = reader.load("train"), reader.load("test")
    assert train.corpus is test.corpus and len(train.corpus) == 12
    assert train.corpus["100#0"].title == "Nairobi"
    assert len(train.queries) == 5 and train.qrels["1"] == {"100#0": 1}
    assert train.shipped_negatives["1"] == ["101#0", "102#0"]
    assert set(test.queries) == {"30", "31", "32"} and test.positives("30") == ["105#0"]
    assert test.shipped_negatives == {} and reader.load("dev").queries["20"].text.startswith("Kiswahili")


def test_mrtydi_null_passage_lists_and_unknown_negatives(
    tmp_path: Path, cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    queries, corpus_repo = write_mrtydi(tmp_path)
    rows = [
        {"query_id": "1", "query": "swali", "positive_passages": [{"docid": "100#0"}], "negative_passages": None},
        {"query_id": "2", "query": "swali 2", "positive_passages": None, "negative_passages": None},
        {"query_id": "3", "query": "swali 3", "positive_passages": [{"docid": "101#0"}],
         "negative_passages": [{"docid": "102#0"}, {"docid": "999#9"}]},
    ]  # fmt: skip
    write_gz_jsonl(queries / "mrtydi-v1.1-swahili/train.jsonl.gz", rows)
    reader = MrTydiReader(str(queries), str(corpus_repo), "swahili", language="sw", cache_dir=cache)
    with caplog.at_level(logging.WARNING):
        split = reader.load("train")
    assert split.qrels == {"1": {"100#0": 1}, "3": {"101#0": 1}} and set(split.queries) == {"1", "2", "3"}
    assert split.shipped_negatives == {"3": ["102#0"]}
    assert "1 shipped negatives not in the corpus dropped (first at" in caplog.text


def test_mrtydi_bad_rows(tmp_path: Path, cache: Path) -> None:
    queries, corpus_repo = write_mrtydi(tmp_path)
    path = queries / "mrtydi-v1.1-swahili/train.jsonl.gz"
    good = {"query_id": "1", "query": "q", "positive_passages": [{"docid": "100#0"}], "negative_passages": []}
    cases = [
        ([good, {**good, "query": "other"}], r"train\.jsonl\.gz:2: duplicate query_id '1' \(first at line 1\)"),
        ([good, {**good, "query_id": "2", "positive_passages": [{"docid": "b"}]}],
         r"train\.jsonl\.gz:2: query '2' has positive docid 'b' not in the corpus"),
        ([{**good, "query": None}], r"train\.jsonl\.gz:1: query is null"),
        ([{**good, "query": ""}], r"train\.jsonl\.gz:1: empty query text"),
        ([{**good, "positive_passages": ["100#0"]}], r"train\.jsonl\.gz:1: positive_passages holds '100#0'"),
    ]  # fmt: skip
    for rows, message in cases:
        write_gz_jsonl(path, rows)
        with pytest.raises(DataError, match=message):
            MrTydiReader(str(queries), str(corpus_repo), "swahili", language="sw", cache_dir=cache).load("train")


def test_language_without_config() -> None:
    with pytest.raises(DataError, match="language 'hi' has no config in castorini/mr-tydi"):
        MrTydiReader("castorini/mr-tydi", "castorini/mr-tydi-corpus", None, language="hi")


def test_missing_local_folder_names_the_download(tmp_path: Path, cache: Path) -> None:
    reader = MrTydiReader(str(tmp_path / "nowhere"), str(tmp_path / "c"), "swahili", "abc123", language="sw")
    with pytest.raises(DataError) as caught:
        reader.load("test")
    message = str(caught.value)
    assert f"data.queries_repo={tmp_path / 'nowhere'}: no such folder" in message
    assert (
        f"hf download castorini/mr-tydi --repo-type dataset --revision abc123 "
        f"--include 'mrtydi-v1.1-swahili/*.jsonl.gz' --local-dir {tmp_path / 'nowhere'}"
    ) in message


def test_hub_id_offline_names_the_download(cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    reader = MrTydiReader("castorini/mr-tydi", "castorini/mr-tydi-corpus", "swahili", "abc123", cache_dir=cache)
    with pytest.raises(DataError) as caught:
        reader.load("test")
    message = str(caught.value)
    assert "data.queries_repo=castorini/mr-tydi (revision abc123)" in message and "HF_HUB_OFFLINE=1" in message
    local = cache.resolve() / "datasets" / "castorini" / "mr-tydi"
    assert (
        f"hf download castorini/mr-tydi --repo-type dataset --revision abc123 "
        f"--include 'mrtydi-v1.1-swahili/*.jsonl.gz' --local-dir {local}"
    ) in message
    assert f"pass data.queries_repo={local}" in message


def test_missing_file_in_local_folder(tmp_path: Path, cache: Path) -> None:
    queries, corpus_repo = write_mrtydi(tmp_path)
    reader = MrTydiReader(str(queries), str(corpus_repo), "telugu", language="te", cache_dir=cache)
    with pytest.raises(DataError) as caught:
        reader.load("test")
    assert "mrtydi-v1.1-telugu/test.jsonl.gz: file not found (data.queries_repo=" in str(caught.value)
    assert "hf download castorini/mr-tydi --repo-type dataset --include 'mrtydi-v1.1-telugu/*.jsonl.gz'" in str(
        caught.value
    )


# ---- MIRACL and MS MARCO ----------------------------------------------------------------------------------


def test_miracl_published_layout(tmp_path: Path, cache: Path) -> None:
    queries, corpus_repo = write_miracl(tmp_path, shards=11)  # docs-10 must come after docs-9, not after docs-1
    reader = MiraclReader(str(queries), str(corpus_repo), "sw", split_names={"test": "dev"}, cache_dir=cache)
    test = reader.load("test")
    assert list(test.corpus)[-1] == passages()[10]["docid"] and len(test.corpus) == 12
    assert set(test.queries) == {"40", "41", "42"} and test.queries["40"].text == "Kiswahili ni lugha ya aina gani?"
    assert test.qrels["40"] == {"105#0": 1, "106#0": 0}  # grade 0 kept as a judged non-relevant passage
    assert test.positives("40") == ["105#0"] and test.shipped_negatives["40"] == ["106#0"]
    assert set(reader.load("train").queries) == {"1", "2", "3", "4", "5"}


def test_miracl_bad_files(tmp_path: Path, cache: Path) -> None:
    queries, corpus_repo = write_miracl(tmp_path)
    topics = queries / "miracl-v1.0-sw/topics/topics.miracl-v1.0-sw-dev.tsv"
    qrels = queries / "miracl-v1.0-sw/qrels/qrels.miracl-v1.0-sw-dev.tsv"
    good_topics, good_qrels = topics.read_text(), qrels.read_text()

    def load():  # noqa: ANN202
        return MiraclReader(str(queries), str(corpus_repo), "sw", split_names={"test": "dev"}, cache_dir=cache).load(
            "test"
        )

    topics.write_text(good_topics + "40\tduplicate\n")
    with pytest.raises(DataError, match=r"dev\.tsv:4: duplicate query id '40' \(first at line 1\)"):
        load()
    topics.write_text(good_topics + "43\t  \n")
    with pytest.raises(DataError, match=r"topics\.miracl-v1\.0-sw-dev\.tsv:4: empty query text"):
        load()
    topics.write_text(good_topics)
    qrels.write_text(good_qrels + "99\tQ0\t100#0\t1\n")
    with pytest.raises(DataError, match=r"qrels\.miracl-v1\.0-sw-dev\.tsv:7: query id '99' is not in .*topics"):
        load()
    qrels.write_bytes(b"\xef\xbb\xbf" + good_qrels.encode())
    assert load().qrels["40"]["105#0"] == 1  # BOM accepted: the first query id is '40', not '\ufeff40'
    (corpus_repo / "miracl-corpus-v1.0-sw/docs-1.jsonl.gz").unlink()
    with pytest.raises(DataError, match=r"corpus shards \['docs-1\.jsonl\.gz'\] missing"):
        load()


def test_msmarco_layout(tmp_path: Path, cache: Path) -> None:
    queries, corpus_repo = write_msmarco(tmp_path)
    reader = MrTydiReader(
        str(queries), str(corpus_repo), None, queries_file="{split}.jsonl.gz", corpus_file="corpus.jsonl.gz",
        language="en", cache_dir=cache, published=["Tevatron/msmarco-passage", "Tevatron/msmarco-passage-corpus"],
    )  # fmt: skip
    train = reader.load("train")
    assert len(train.queries) == 8 and train.qrels["1000"] == {"0": 1} and train.shipped_negatives["1000"] == ["1", "2"]
    assert len(train.corpus) == 12 and train.corpus["3"].title == "-"


# ---- end to end through the configs -----------------------------------------------------------------------


@pytest.mark.parametrize("data", ["mrtydi", "miracl"])
def test_evaluate_on_a_local_copy_of_the_published_files(make_cfg, tmp_path: Path, data: str) -> None:  # noqa: ANN001
    from mdr.pipeline import evaluate
    from mdr.validation import build_spec

    queries, corpus_repo = write_mrtydi(tmp_path) if data == "mrtydi" else write_miracl(tmp_path)
    cfg = make_cfg(
        f"data={data}", "language=sw", f"data.queries_repo={queries}", f"data.corpus_repo={corpus_repo}",
        "evaluation.batch_size=8", config_name="evaluate",
    )  # fmt: skip
    result = evaluate(build_spec(cfg))
    assert result["data"] == data and result["num_queries"] == 3 and 0.0 <= result["metrics"]["mrr@100"] <= 1.0
    run = (Path(cfg.paths.output_dir) / "runs" / "sw.trec").read_text().splitlines()
    assert {line.split()[0] for line in run} == ({"30", "31", "32"} if data == "mrtydi" else {"40", "41", "42"})
