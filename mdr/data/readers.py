"""Readers that turn a language's retrieval data into a :class:`RetrievalSplit`.

Two sources sit behind one interface (``reader.load(split) -> RetrievalSplit``):

* :class:`LocalReader`: the on-disk layout ``corpus.jsonl``, ``queries/{split}.jsonl``,
  ``qrels/{split}.txt`` (TREC ``qid 0 docid grade``), as in ``shared/data/xquad/xquad-sent/<lang>``.
* :class:`HubReader`: Mr. TyDi / MIRACL as published on the Hugging Face hub (rows with
  ``query_id, query, positive_passages, negative_passages`` plus a ``docid, title, text`` corpus),
  loaded through ``datasets.load_dataset``; the same call works on a local folder in hub layout.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from mdr.data.schema import DataError, Passage, Qrels, Query, RetrievalSplit
from mdr.utils.logging import get_logger

log = get_logger(__name__)


class RetrievalReader(Protocol):
    """Anything that loads one split of one language."""

    def load(self, split: str) -> RetrievalSplit:
        """Return corpus, queries, qrels (and shipped negatives) for ``split``."""
        ...


def iter_jsonl(path: Path, required: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    """Yield the JSON objects of ``path``, one per non-blank line.

    Raises:
        DataError: naming ``path:line`` for a line that is not a JSON object or lacks a required key.
    """
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{line_number}: malformed JSON ({error.msg})") from error
            if not isinstance(record, dict):
                raise DataError(f"{path}:{line_number}: expected a JSON object, got {type(record).__name__}")
            missing = [key for key in required if key not in record]
            if missing:
                raise DataError(f"{path}:{line_number}: missing key(s) {missing}")
            yield record


def read_corpus(path: Path) -> dict[str, Passage]:
    """Read ``{"docid", "text", ["title"]}`` lines; duplicate docids and an empty corpus are errors."""
    corpus: dict[str, Passage] = {}
    for record in iter_jsonl(path, ("docid", "text")):
        docid = str(record["docid"])
        if docid in corpus:
            raise DataError(f"{path}: duplicate docid {docid!r}")
        corpus[docid] = Passage(docid=docid, text=str(record["text"]), title=str(record.get("title") or ""))
    if not corpus:
        raise DataError(f"{path}: corpus is empty")
    return corpus


def read_queries(path: Path) -> dict[str, Query]:
    """Read ``{"query_id", "query"}`` lines."""
    return {
        str(record["query_id"]): Query(str(record["query_id"]), str(record["query"]))
        for record in iter_jsonl(path, ("query_id", "query"))
    }


def read_qrels(path: Path, corpus: dict[str, Passage]) -> Qrels:
    """Read TREC qrels ``qid iteration docid grade``.

    Raises:
        DataError: naming ``path:line`` for a malformed line or a docid that is not in the corpus.
    """
    if not path.is_file():
        raise DataError(f"{path}: qrels file not found")
    qrels: Qrels = {}
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 4:
                raise DataError(f"{path}:{line_number}: expected 'qid iteration docid grade', got {line.strip()!r}")
            query_id, _, docid, grade = fields
            try:
                value = int(grade)
            except ValueError as error:
                raise DataError(f"{path}:{line_number}: relevance grade {grade!r} is not an integer") from error
            if docid not in corpus:
                raise DataError(f"{path}:{line_number}: docid {docid!r} is not in the corpus")
            qrels.setdefault(query_id, {})[docid] = value
    return qrels


class LocalReader:
    """Reads the local layout: ``root/corpus.jsonl``, ``root/queries/{split}.jsonl``, ``root/qrels/{split}.txt``.

    Args:
        root: the language's folder.
        language: ISO code, only used in error messages.
    """

    def __init__(self, root: str | Path, language: str = "") -> None:
        self.root = Path(root)
        self.language = language
        self._corpus: dict[str, Passage] | None = None

    def load(self, split: str) -> RetrievalSplit:
        """Load ``split`` (e.g. ``train`` or ``test``); the corpus is read once per reader."""
        if not self.root.is_dir():
            raise DataError(f"language {self.language!r} has no data: {self.root} does not exist")
        if self._corpus is None:
            self._corpus = read_corpus(self.root / "corpus.jsonl")
        queries = read_queries(self.root / "queries" / f"{split}.jsonl")
        qrels = read_qrels(self.root / "qrels" / f"{split}.txt", self._corpus)
        return RetrievalSplit(corpus=self._corpus, queries=queries, qrels=qrels)


def _hub_passages(value: Any, where: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or any(not isinstance(p, dict) or "docid" not in p for p in value):
        raise DataError(f"{where}: expected a list of {{docid, title, text}} passages")
    return value


class HubReader:
    """Reads Mr. TyDi or MIRACL through ``datasets.load_dataset``.

    Args:
        queries_dataset: e.g. ``castorini/mr-tydi`` or ``miracl/miracl`` (or a local folder in that layout).
        corpus_dataset: e.g. ``castorini/mr-tydi-corpus`` or ``miracl/miracl-corpus``.
        config: the dataset config for the language (Mr. TyDi: ``swahili``; MIRACL: ``sw``).
        split_names: maps mdr split names to the dataset's (MIRACL has ``dev``, not ``test``).
        corpus_split: the corpus dataset's split.
        use_corpus_dataset: when false, the corpus is the union of the passages in the query rows
            (enough for tests and for a quick look, not for a real evaluation).
        language: ISO code, only used in error messages.
    """

    def __init__(
        self,
        queries_dataset: str,
        corpus_dataset: str,
        config: str | None,
        split_names: dict[str, str] | None = None,
        corpus_split: str = "train",
        use_corpus_dataset: bool = True,
        language: str = "",
        revision: str | None = None,
    ) -> None:
        if not config:
            raise DataError(f"language {language!r} has no config in {queries_dataset}")
        self.queries_dataset = queries_dataset
        self.corpus_dataset = corpus_dataset
        self.config = config
        self.split_names = dict(split_names or {})
        self.corpus_split = corpus_split
        self.use_corpus_dataset = use_corpus_dataset
        self.language = language
        self.revision = revision
        self._corpus: dict[str, Passage] | None = None

    def _load(self, name: str, split: str) -> Any:
        import datasets

        try:
            return datasets.load_dataset(name, self.config, split=split, revision=self.revision)
        except (FileNotFoundError, ValueError) as error:
            raise DataError(f"{name} (config {self.config!r}, split {split!r}): {error}") from error

    def _load_corpus(self) -> dict[str, Passage]:
        corpus: dict[str, Passage] = {}
        where = f"{self.corpus_dataset}[{self.config}/{self.corpus_split}]"
        for index, row in enumerate(self._load(self.corpus_dataset, self.corpus_split)):
            if "docid" not in row or "text" not in row:
                raise DataError(f"{where} row {index}: missing docid/text")
            corpus[str(row["docid"])] = Passage(str(row["docid"]), str(row["text"]), str(row.get("title") or ""))
        if not corpus:
            raise DataError(f"{where}: corpus is empty")
        return corpus

    def load(self, split: str) -> RetrievalSplit:
        """Load ``split``; positives and shipped negatives come from the query rows."""
        hub_split = self.split_names.get(split, split)
        where = f"{self.queries_dataset}[{self.config}/{hub_split}]"
        rows = self._load(self.queries_dataset, hub_split)
        queries: dict[str, Query] = {}
        qrels: Qrels = {}
        negatives: dict[str, list[str]] = {}
        row_passages: dict[str, Passage] = {}
        for index, row in enumerate(rows):
            if "query_id" not in row or "query" not in row:
                raise DataError(f"{where} row {index}: missing query_id/query")
            query_id = str(row["query_id"])
            queries[query_id] = Query(query_id, str(row["query"]))
            positives = _hub_passages(row.get("positive_passages"), f"{where} row {index} positive_passages")
            shipped = _hub_passages(row.get("negative_passages"), f"{where} row {index} negative_passages")
            for passage in positives + shipped:
                row_passages.setdefault(
                    str(passage["docid"]),
                    Passage(str(passage["docid"]), str(passage.get("text", "")), str(passage.get("title") or "")),
                )
            if positives:
                qrels[query_id] = {str(p["docid"]): 1 for p in positives}
            if shipped:
                negatives[query_id] = [str(p["docid"]) for p in shipped]
        if self._corpus is None:
            self._corpus = self._load_corpus() if self.use_corpus_dataset else {}
        if not self.use_corpus_dataset:
            for docid, passage in row_passages.items():
                self._corpus.setdefault(docid, passage)
        for query_id, judged in qrels.items():
            unknown = [docid for docid in judged if docid not in self._corpus]
            if unknown:
                raise DataError(f"{where}: query {query_id!r} has positive docid(s) {unknown} not in the corpus")
        for query_id, docids in negatives.items():
            negatives[query_id] = [docid for docid in docids if docid in self._corpus]
        return RetrievalSplit(corpus=self._corpus, queries=queries, qrels=qrels, shipped_negatives=negatives)
