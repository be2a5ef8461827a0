"""Several training splits trained on as one, ids namespaced ``<part>/<id>``, each part on its own corpus and pools."""

from __future__ import annotations

import bisect
import functools
import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from mdr.data.schema import Corpus, DataError, Judged, Passage, Qrels, Query, RetrievalSplit

SEPARATOR = "/"


def namespaced(part: str, identifier: str) -> str:
    """``<part>/<identifier>``."""
    return f"{part}{SEPARATOR}{identifier}"


class NamespacedCorpus(Mapping[str, Passage]):
    """One part's corpus seen with namespaced docids (and ``docid(row)``, what the sampler draws from)."""

    def __init__(self, part: str, corpus: Corpus) -> None:
        self.part, self.base, self.prefix = part, corpus, namespaced(part, "")

    def __len__(self) -> int:
        return len(self.base)

    def __iter__(self) -> Iterator[str]:
        return (self.prefix + docid for docid in self.base)

    def __getitem__(self, docid: str) -> Passage:
        if not isinstance(docid, str) or not docid.startswith(self.prefix):
            raise KeyError(docid)
        passage = self.base[docid[len(self.prefix) :]]
        return Passage(docid, passage.text, passage.title)

    def docid(self, row: int) -> str:
        """The namespaced docid at ``row`` of the part's corpus."""
        return self.prefix + self.base.docid(row)


class UnionCorpus(Mapping[str, Passage]):
    """Namespaced docid -> passage over every part's corpus; rows are the parts' rows one part after another."""

    def __init__(self, parts: Sequence[NamespacedCorpus]) -> None:
        self.parts = {corpus.part: corpus for corpus in parts}
        self._order = list(parts)
        self._starts = [0, *itertools.accumulate(len(corpus) for corpus in parts)]
        self._len = self._starts.pop()

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[str]:
        return itertools.chain.from_iterable(self._order)

    def __getitem__(self, docid: str) -> Passage:
        part, separator, _ = docid.partition(SEPARATOR)
        if not separator or part not in self.parts:
            raise KeyError(docid)
        return self.parts[part][docid]

    def docid(self, row: int) -> str:
        """The namespaced docid at union row ``row``."""
        if not 0 <= row < self._len:
            raise IndexError(f"row {row} outside a corpus of {self._len} passages")
        index = bisect.bisect_right(self._starts, row) - 1
        return self._order[index].docid(row - self._starts[index])


@dataclass
class PartSplit(Judged):
    """One part as the sampler sees it: namespaced queries, qrels and corpus (the :class:`RetrievalSplit` API)."""

    corpus: NamespacedCorpus
    queries: dict[str, Query]
    qrels: Qrels
    shipped_negatives: dict[str, list[str]] = field(default_factory=dict)


def _namespace_split(part: str, split: RetrievalSplit) -> PartSplit:
    name = functools.partial(namespaced, part)
    return PartSplit(
        corpus=NamespacedCorpus(part, split.corpus),
        queries={name(qid): Query(name(qid), query.text) for qid, query in split.queries.items()},
        qrels={name(qid): {name(d): grade for d, grade in judged.items()} for qid, judged in split.qrels.items()},
        shipped_negatives={name(qid): [name(d) for d in docids] for qid, docids in split.shipped_negatives.items()},
    )


class UnionSplit(Judged):
    """The union of (name, split) ``parts`` (the :class:`RetrievalSplit` API); names are unique and free of ``/``."""

    def __init__(self, parts: Sequence[tuple[str, RetrievalSplit]]) -> None:
        if not parts:
            raise DataError("a union of training splits needs at least one part")
        names = [name for name, _ in parts]
        for name in names:
            if not name or SEPARATOR in name:
                raise DataError(f"union part name {name!r} must be non-empty and contain no {SEPARATOR!r}")
        if len(set(names)) != len(names):
            raise DataError(f"union part names must be unique, got {names}")
        self.parts = [_namespace_split(name, split) for name, split in parts]
        self.corpus = UnionCorpus([part.corpus for part in self.parts])
        self.queries: dict[str, Query] = {}
        self.qrels: Qrels = {}
        self.shipped_negatives: dict[str, list[str]] = {}
        for part in self.parts:
            self.queries.update(part.queries)
            self.qrels.update(part.qrels)
            self.shipped_negatives.update(part.shipped_negatives)

    @staticmethod
    def namespace_pools(part: str, pools: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
        """One part's hard-negative pools (raw ids, mined on its own corpus) with namespaced ids."""
        return {namespaced(part, qid): [namespaced(part, docid) for docid in docids] for qid, docids in pools.items()}
