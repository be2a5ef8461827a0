"""Typed records shared by readers, samplers, collators and the evaluator (Passage, Corpus, DataError re-exported)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from mdr.data.corpus import Corpus, Passage
from mdr.utils.errors import DataError

__all__ = ["Corpus", "DataError", "Passage", "Qrels", "Query", "RetrievalSplit", "TrainingExample"]


@dataclass(frozen=True)
class Query:
    """One query."""

    query_id: str
    text: str


Qrels = dict[str, dict[str, int]]
"""query_id -> {docid: relevance grade}."""


class Judged:
    """Anything with ``qrels``: the positives of a query."""

    qrels: Qrels

    def positives(self, query_id: str) -> list[str]:
        """Docids judged relevant (grade > 0) for ``query_id``."""
        return [docid for docid, grade in self.qrels.get(query_id, {}).items() if grade > 0]


@dataclass
class RetrievalSplit(Judged):
    """One language's corpus and one split's queries, relevance judgements and shipped negatives.

    Attributes:
        corpus: docid -> passage, shared by the language's splits (a plain mapping is stored into a Corpus).
        queries: query_id -> query.
        qrels: query_id -> {docid: grade}; grade > 0 means relevant, 0 judged non-relevant.
        shipped_negatives: query_id -> docids listed as negatives by the dataset itself (Mr. TyDi
            ``negative_passages``, MIRACL's grade-0 judgements).
    """

    corpus: Corpus
    queries: dict[str, Query]
    qrels: Qrels
    shipped_negatives: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.corpus, Corpus):
            return
        if not isinstance(self.corpus, Mapping):
            raise TypeError(f"RetrievalSplit.corpus must be a Corpus or a mapping, got {type(self.corpus).__name__}")
        self.corpus = Corpus.from_records(self.corpus.values())


@dataclass(frozen=True)
class TrainingExample:
    """A query with its positive and the k negatives drawn for one epoch.

    Attributes:
        positives: every passage judged relevant to the query (``positive`` among them); the loss keeps
            them out of the query's softmax wherever they appear as another query's passage.
    """

    query_id: str
    query: str
    positive: str
    negatives: tuple[str, ...]
    positives: tuple[str, ...] = ()
