"""Row access to a corpus that works for any ``Mapping[str, Passage]``.

``mdr.data.corpus.Corpus`` has rows natively (``docid(row)``, ``texts(rows, prefix)``, ``iter_batches``,
``fingerprint()``); a plain dict gets the same through its iteration order. Mining and evaluation use these
helpers so that neither materialises per-passage Python objects when the corpus is a ``Corpus``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence

from mdr.data.collator import passage_text
from mdr.data.schema import Passage

DOCS_PER_BATCH = 20_000


def corpus_fingerprint(corpus: Mapping[str, Passage]) -> str:
    """``corpus.fingerprint()`` where the corpus has one, else a hash of (docid, title, text) in row order."""
    own = getattr(corpus, "fingerprint", None)
    if callable(own):
        return str(own())
    digest = hashlib.sha256()
    for docid, passage in corpus.items():
        digest.update(f"{docid}\t{passage.title}\t{passage.text}\n".encode())
    return digest.hexdigest()[:32]


def docid_lookup(corpus: Mapping[str, Passage]) -> Callable[[int], str]:
    """Row -> docid: ``corpus.docid`` where the corpus has rows, else a list of its docids in order."""
    own = getattr(corpus, "docid", None)
    if callable(own):
        return own
    return list(corpus).__getitem__


def corpus_batches(
    corpus: Mapping[str, Passage], batch_size: int = DOCS_PER_BATCH
) -> Iterator[tuple[list[str], list[str]]]:
    """(docids, passage texts as encoded: title + " " + text) in row order, ``batch_size`` rows at a time."""
    iter_batches = getattr(corpus, "iter_batches", None)
    if iter_batches is not None:
        for _, docids, texts in iter_batches(batch_size):
            yield list(docids), list(texts)
        return
    docids: list[str] = []
    texts: list[str] = []
    for docid, passage in corpus.items():
        docids.append(docid)
        texts.append(passage_text(passage))
        if len(texts) == batch_size:
            yield docids, texts
            docids, texts = [], []
    if texts:
        yield docids, texts


class RowTexts:
    """``texts(start, end, prefix)``: the encoded strings of rows ``[start, end)`` of ``corpus``.

    A ``Corpus`` answers from its Arrow batches; a plain mapping through a list of its docids made once.
    """

    def __init__(self, corpus: Mapping[str, Passage]) -> None:
        self.corpus = corpus
        self._docids: Sequence[str] | None = None if callable(getattr(corpus, "texts", None)) else list(corpus)

    def texts(self, start: int, end: int, prefix: str = "") -> list[str]:
        """Texts of rows ``start`` to ``end - 1`` with ``prefix`` in front."""
        if self._docids is None:
            return self.corpus.texts(range(start, end), prefix)  # type: ignore[attr-defined]
        return [passage_text(self.corpus[docid], prefix) for docid in self._docids[start:end]]
