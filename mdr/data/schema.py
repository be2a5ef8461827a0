"""Typed records shared by readers, samplers, collators and the evaluator.

:class:`~mdr.data.corpus.Passage` lives in :mod:`mdr.data.corpus` (which this module builds on) and
:class:`~mdr.utils.errors.DataError` in :mod:`mdr.utils.errors`; both are re-exported here.
"""

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


@dataclass
class RetrievalSplit:
    """One language's corpus and one split's queries, relevance judgements and shipped negatives.

    Attributes:
        corpus: docid -> passage, a memory-mapped :class:`mdr.data.corpus.Corpus` shared by the language's
            splits (a plain mapping given here, as small tests do, is stored into a temporary Corpus).
        queries: query_id -> query.
        qrels: query_id -> {docid: grade}; grade > 0 means relevant, 0 judged non-relevant.
        shipped_negatives: query_id -> docids listed as negatives by the dataset itself
            (Mr. TyDi ``negative_passages``, MIRACL's grade-0 judgements); empty for sets that ship none.
    """

    corpus: Corpus
    queries: dict[str, Query]
    qrels: Qrels
    shipped_negatives: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.corpus, Corpus):
            if not isinstance(self.corpus, Mapping):
                raise TypeError(
                    f"RetrievalSplit.corpus must be a Corpus or a mapping, got {type(self.corpus).__name__}"
                )
            self.corpus = Corpus.from_records(self.corpus.values())

    def positives(self, query_id: str) -> list[str]:
        """Docids judged relevant for ``query_id``."""
        return [docid for docid, grade in self.qrels.get(query_id, {}).items() if grade > 0]


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
