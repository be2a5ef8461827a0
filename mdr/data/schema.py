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
    """One language's corpus and one split's queries, relevance judgements and shipped negatives."""

    corpus: Corpus  # shared by the language's splits (a plain mapping given here is stored into a Corpus)
    queries: dict[str, Query]
    qrels: Qrels  # grade > 0: relevant, 0: judged non-relevant
    shipped_negatives: dict[str, list[str]] = field(default_factory=dict)  # the dataset's own negatives

    def __post_init__(self) -> None:
        if isinstance(self.corpus, Corpus):
            return
        if not isinstance(self.corpus, Mapping):
            raise TypeError(f"RetrievalSplit.corpus must be a Corpus or a mapping, got {type(self.corpus).__name__}")
        self.corpus = Corpus.from_records(self.corpus.values())


@dataclass(frozen=True)
class TrainingExample:
    """A query with its positive and the k negatives drawn for one epoch."""

    query_id: str
    query: str
    positive: str
    negatives: tuple[str, ...]
    positives: tuple[str, ...] = ()  # all judged relevant: the loss masks them wherever they appear
