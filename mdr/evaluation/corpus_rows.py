"""Row access to a corpus: a :class:`~mdr.data.corpus.Corpus`'s own rows, or a plain mapping's iteration order."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping

from mdr.data.collator import passage_text
from mdr.data.schema import Passage

DOCS_PER_BATCH = 20_000


def corpus_fingerprint(corpus: Mapping[str, Passage]) -> str:
    """``corpus.fingerprint()`` where the corpus has one, else a hash of (docid, title, text) in row order."""
    if callable(getattr(corpus, "fingerprint", None)):
        return str(corpus.fingerprint())  # type: ignore[attr-defined]
    digest = hashlib.sha256()
    for docid, passage in corpus.items():
        digest.update(f"{docid}\t{passage.title}\t{passage.text}\n".encode())
    return digest.hexdigest()[:32]


def docid_lookup(corpus: Mapping[str, Passage]) -> Callable[[int], str]:
    """Row -> docid: ``corpus.docid`` where the corpus has rows, else a list of its docids in order."""
    own = getattr(corpus, "docid", None)
    return own if callable(own) else list(corpus).__getitem__


def corpus_batches(
    corpus: Mapping[str, Passage], batch_size: int = DOCS_PER_BATCH
) -> Iterator[tuple[list[str], list[str]]]:
    """(docids, passage texts as encoded: title + " " + text) in row order, ``batch_size`` rows at a time."""
    if callable(getattr(corpus, "iter_batches", None)):
        for _, docids, texts in corpus.iter_batches(batch_size):  # type: ignore[attr-defined]
            yield list(docids), list(texts)
        return
    items = list(corpus.items())
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        yield [docid for docid, _ in batch], [passage_text(passage) for _, passage in batch]


def row_texts(corpus: Mapping[str, Passage]) -> Callable[[int, int, str], list[str]]:
    """``texts(start, end, prefix)``: the encoded strings of rows ``[start, end)`` with ``prefix`` in front."""
    if callable(getattr(corpus, "texts", None)):
        return lambda start, end, prefix: corpus.texts(range(start, end), prefix)  # type: ignore[attr-defined]
    docids = list(corpus)
    return lambda start, end, prefix: [passage_text(corpus[docid], prefix) for docid in docids[start:end]]
