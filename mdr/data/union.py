"""Several languages' (or datasets') training splits trained on as one, each query keeping its own corpus.

Every query id and docid of a part is namespaced ``<part>/<id>``, so ids of different parts never clash (XQuAD's
are parallel: the same ids in every language) and the loss's in-batch false-negative mask compares like with
like. Each part keeps its own corpus: the sampler samples each of :attr:`UnionSplit.parts` on its own
(:class:`mdr.data.negatives.PartedSplit`), so a query's negatives (random rows and mined pools alike) come from
its own part and no query is trained against another language's passage as a negative. The collator looks
passages up in :attr:`UnionSplit.corpus`, which routes a namespaced docid to its part's corpus. Nothing is
copied: the parts' memory-mapped corpora are shared.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from mdr.data.schema import Corpus, DataError, Passage, Qrels, Query, RetrievalSplit

SEPARATOR = "/"


def namespaced(part: str, identifier: str) -> str:
    """``<part>/<identifier>``."""
    return f"{part}{SEPARATOR}{identifier}"


def part_of(identifier: str) -> str:
    """The part a namespaced id belongs to (KeyError if it has none)."""
    part, separator, _ = identifier.partition(SEPARATOR)
    if not separator:
        raise KeyError(identifier)
    return part


class NamespacedCorpus(Mapping[str, Passage]):
    """One part's corpus seen with namespaced docids: what the sampler draws a part's random negatives from.

    Offers the :class:`~mdr.data.corpus.Corpus` calls the sampler uses (``len``, ``docid(row)``, ``row``,
    ``passage``) over the same rows, so a query's random negatives are rows of its own part's corpus.
    """

    def __init__(self, part: str, corpus: Corpus) -> None:
        self.part = part
        self.base = corpus
        self.prefix = namespaced(part, "")

    def _local(self, docid: str) -> str:
        if not isinstance(docid, str) or not docid.startswith(self.prefix):
            raise KeyError(docid)
        return docid[len(self.prefix) :]

    def __len__(self) -> int:
        return len(self.base)

    def __iter__(self) -> Iterator[str]:
        return (self.prefix + docid for docid in self.base)

    def __getitem__(self, docid: str) -> Passage:
        passage = self.base[self._local(docid)]
        return Passage(docid, passage.text, passage.title)

    def __contains__(self, docid: object) -> bool:
        try:
            return self._local(docid) in self.base  # type: ignore[arg-type]
        except KeyError:
            return False

    def docid(self, row: int) -> str:
        """The namespaced docid at ``row`` of the part's corpus."""
        return self.prefix + self.base.docid(row)

    def row(self, docid: str) -> int:
        """The row of a namespaced docid in the part's corpus (KeyError if absent)."""
        return self.base.row(self._local(docid))

    def passage(self, row: int) -> Passage:
        """The passage at ``row``, with its namespaced docid."""
        passage = self.base.passage(row)
        return Passage(self.prefix + passage.docid, passage.text, passage.title)


class UnionCorpus(Mapping[str, Passage]):
    """Namespaced docid -> passage over every part's corpus; rows are the parts' rows one part after another."""

    def __init__(self, parts: Sequence[NamespacedCorpus]) -> None:
        self.parts = {corpus.part: corpus for corpus in parts}
        self._starts: list[int] = []
        total = 0
        for corpus in parts:
            self._starts.append(total)
            total += len(corpus)
        self._len = total
        self._order = list(parts)

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[str]:
        for corpus in self._order:
            yield from corpus

    def __getitem__(self, docid: str) -> Passage:
        corpus = self.parts.get(part_of(docid))
        if corpus is None:
            raise KeyError(docid)
        return corpus[docid]

    def __contains__(self, docid: object) -> bool:
        try:
            self[docid]  # type: ignore[index]
        except KeyError:
            return False
        return True

    def docid(self, row: int) -> str:
        """The namespaced docid at union row ``row``."""
        if not 0 <= row < self._len:
            raise IndexError(f"row {row} outside a corpus of {self._len} passages")
        index = bisect.bisect_right(self._starts, row) - 1
        return self._order[index].docid(row - self._starts[index])

    def fingerprint(self) -> str:
        """A hash of the parts' names and corpus fingerprints."""
        digest = hashlib.sha256()
        for corpus in self._order:
            digest.update(f"{corpus.part}:{corpus.base.fingerprint()}\n".encode())
        return digest.hexdigest()[:32]


@dataclass
class PartSplit:
    """One part as the sampler sees it: namespaced queries, qrels and corpus (the :class:`RetrievalSplit` API)."""

    corpus: NamespacedCorpus
    queries: dict[str, Query]
    qrels: Qrels
    shipped_negatives: dict[str, list[str]] = field(default_factory=dict)

    def positives(self, query_id: str) -> list[str]:
        """Namespaced docids judged relevant for ``query_id``."""
        return [docid for docid, grade in self.qrels.get(query_id, {}).items() if grade > 0]


def _namespace_split(part: str, split: RetrievalSplit) -> PartSplit:
    def name(identifier: str) -> str:
        return namespaced(part, identifier)

    return PartSplit(
        corpus=NamespacedCorpus(part, split.corpus),
        queries={name(qid): Query(name(qid), query.text) for qid, query in split.queries.items()},
        qrels={
            name(qid): {name(docid): grade for docid, grade in judged.items()} for qid, judged in split.qrels.items()
        },
        shipped_negatives={
            name(qid): [name(docid) for docid in docids] for qid, docids in split.shipped_negatives.items()
        },
    )


class UnionSplit:
    """The union of several training splits, each with its own corpus (the :class:`RetrievalSplit` API).

    Args:
        parts: (part name, split) pairs; a name (e.g. the language code) namespaces that part's ids and must be
            unique and free of ``/``.
    """

    def __init__(self, parts: Sequence[tuple[str, RetrievalSplit]]) -> None:
        if not parts:
            raise DataError("a union of training splits needs at least one part")
        names = [name for name, _ in parts]
        for name in names:
            if not name or SEPARATOR in name:
                raise DataError(f"union part name {name!r} must be non-empty and contain no {SEPARATOR!r}")
        if len(set(names)) != len(names):
            raise DataError(f"union part names must be unique, got {names}")
        self.names = names
        self.splits = {name: split for name, split in parts}
        self.parts = [_namespace_split(name, split) for name, split in parts]
        self.corpus = UnionCorpus([part.corpus for part in self.parts])
        self.queries: dict[str, Query] = {}
        self.qrels: Qrels = {}
        self.shipped_negatives: dict[str, list[str]] = {}
        for part in self.parts:
            self.queries.update(part.queries)
            self.qrels.update(part.qrels)
            self.shipped_negatives.update(part.shipped_negatives)

    def positives(self, query_id: str) -> list[str]:
        """Namespaced docids judged relevant for ``query_id``."""
        return [docid for docid, grade in self.qrels.get(query_id, {}).items() if grade > 0]

    @staticmethod
    def namespace_pools(part: str, pools: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
        """One part's hard-negative pools (raw ids, mined on its own corpus) with namespaced ids."""
        return {namespaced(part, qid): [namespaced(part, docid) for docid in docids] for qid, docids in pools.items()}
