"""BM25 candidate retrieval for hard-negative mining, with bounded memory (pyserini in mdr.mining.lucene).

The ``bm25s`` backend scores exactly as ``bm25s.BM25(method="lucene")`` (Lucene's idf, pyserini's default
k1 = 0.9, b = 0.4, float32 weights, query terms summed in query order, repeated query terms counted again) over
:func:`mdr.mining.tokenize.bm25_tokens`, but never holds the corpus's tokens in Python:

1. the corpus is tokenised in batches; each batch becomes (document, term id, term frequency) arrays, spilled to
   a file, with the document frequencies and lengths counted on the way (the vocabulary is the only structure
   that grows with the corpus);
2. the term-major weight matrix (CSC of documents x terms, bm25s's own layout) is written straight into
   memory-mapped ``.npy`` files by a counting sort, one spilled batch at a time;
3. queries are scored in batches by a sparse product ``(queries x terms) @ (terms x documents)`` (scipy's C++
   kernel, whose cost follows the postings touched, not the corpus size), and the top k kept per query.

The index is cached under ``<cache_dir>/bm25/`` keyed by the corpus fingerprint, the tokenizer version and
k1/b, so a second split, depth or pool setting over the same corpus reuses it.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
import tempfile
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from mdr.data.schema import Passage, RetrievalSplit
from mdr.evaluation.corpus_rows import DOCS_PER_BATCH, corpus_batches, corpus_fingerprint, docid_lookup
from mdr.mining.pools import RawPools, file_lock, from_rankings, retrieval_depth, settings_hash
from mdr.mining.tokenize import TOKENIZER_VERSION, bm25_tokens, tokenizer_version
from mdr.utils.cache import CacheError, check_manifest, manifest, remove_stale_builds, staging_name, verify_level
from mdr.utils.io import atomic_write_json
from mdr.utils.logging import get_logger

log = get_logger(__name__)

INDEX_VERSION = "csc-v1"
"""Part of the index cache key: change it whenever the on-disk layout or the weights change."""

POSTINGS_PER_QUERY_BATCH = 8_000_000


def default_threads() -> int:
    """The CPUs this process may use (SLURM's cpus-per-task, taskset), at most 8."""
    try:
        return max(1, min(8, len(os.sched_getaffinity(0))))
    except AttributeError:  # not Linux
        return max(1, min(8, os.cpu_count() or 1))


def corpus_text_batches(corpus: Mapping[str, Passage], batch_size: int = DOCS_PER_BATCH) -> Iterator[list[str]]:
    """The texts of :func:`corpus_batches`."""
    for _, texts in corpus_batches(corpus, batch_size):
        yield texts


@dataclass
class BM25Index:
    """A BM25 weight matrix on disk: for term t, ``indices[indptr[t]:indptr[t + 1]]`` are the documents (rows)
    containing it, ascending, and ``data[...]`` their float32 weights.

    Attributes:
        folder: where ``data.npy``, ``indices.npy``, ``indptr.npy``, ``vocab.txt`` and ``meta.json`` live.
        meta: num_docs, num_terms, k1, b, avg_doc_len, tokenizer and index versions, docid samples.
    """

    folder: Path
    meta: dict
    data: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray

    @classmethod
    def load(cls, folder: str | Path, level: str = "size") -> BM25Index:
        """Memory-map an index written by :func:`build_index`, checked against its manifest at ``level``.

        Raises:
            CacheError: naming the file that is not what was written, and how to clear the index.
        """
        root = Path(folder)
        clear = f"delete {root} (it is rebuilt on the next run)"
        try:
            meta = json.loads((root / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise CacheError(f"{root / 'meta.json'}: cannot be read ({error}); {clear}") from error
        problem = check_manifest(root, meta, verify_level(level))
        if problem is not None:
            raise CacheError(f"BM25 index {root}: {problem}; {clear}")
        try:
            index = cls(
                root,
                meta,
                np.load(root / "data.npy", mmap_mode="r"),
                np.load(root / "indices.npy", mmap_mode="r"),
                np.load(root / "indptr.npy"),
            )
        except (OSError, ValueError) as error:
            raise CacheError(f"BM25 index {root}: {error}; {clear}") from error
        nnz, terms = int(meta["nnz"]), int(meta["num_terms"])
        if index.data.shape != (nnz,) or index.indices.shape != (nnz,) or index.indptr.shape != (terms + 1,):
            raise CacheError(f"BM25 index {root}: array shapes disagree with meta.json ({nnz} postings); {clear}")
        return index

    @property
    def num_docs(self) -> int:
        """Documents (rows) in the index."""
        return int(self.meta["num_docs"])

    def token_ids(self, token_lists: Sequence[Sequence[str]]) -> list[list[int]]:
        """Term ids of each token list, in order, repeats kept, unknown tokens dropped (bm25s's rule).

        Streams ``vocab.txt`` once and keeps only the tokens asked for, so the corpus vocabulary never has
        to be loaded as a dict.
        """
        wanted = {token for tokens in token_lists for token in tokens}
        ids: dict[str, int] = {}
        with (self.folder / "vocab.txt").open(encoding="utf-8") as handle:
            for term_id, line in enumerate(handle):
                token = line.rstrip("\n")
                if token in wanted:
                    ids[token] = term_id
        return [[ids[token] for token in tokens if token in ids] for tokens in token_lists]

    def _term_matrix(self) -> sp.csr_matrix:
        shape = (int(self.meta["num_terms"]), self.num_docs)
        return sp.csr_matrix((self.data, self.indices, self.indptr), shape=shape, copy=False)

    def search(
        self, query_term_ids: Sequence[Sequence[int]], k: int, threads: int = 1
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query, (rows, float32 scores) of every document scoring > 0 and at least the k-th best score.

        Ties at the k-th score are all returned (the caller breaks them by docid), unsorted.
        """
        matrix = self._term_matrix()
        lengths = np.diff(self.indptr)
        batches: list[list[int]] = [[]]
        budget = 0
        for i, ids in enumerate(query_term_ids):
            cost = int(lengths[list(ids)].sum()) if ids else 0
            if batches[-1] and budget + cost > POSTINGS_PER_QUERY_BATCH:
                batches.append([])
                budget = 0
            batches[-1].append(i)
            budget += cost

        def run(batch: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
            counts = [len(query_term_ids[i]) for i in batch]
            indptr = np.zeros(len(batch) + 1, dtype=self.indptr.dtype)
            np.cumsum(counts, out=indptr[1:])
            columns = np.fromiter(
                chain.from_iterable(query_term_ids[i] for i in batch), dtype=self.indptr.dtype, count=int(indptr[-1])
            )
            # repeated query terms stay separate entries: scipy adds them one by one, in query order, in float32,
            # as bm25s does, so the scores are bitwise bm25s's
            queries = sp.csr_matrix(
                (np.ones(len(columns), dtype=np.float32), columns, indptr),
                shape=(len(batch), matrix.shape[0]),
                copy=False,
            )
            scores = queries @ matrix  # (len(batch), num_docs), sparse
            out = []
            for row in range(len(batch)):
                start, end = scores.indptr[row], scores.indptr[row + 1]
                values = scores.data[start:end]
                docs = scores.indices[start:end]
                positive = values > 0
                values, docs = values[positive], docs[positive]
                if len(values) > k:
                    kth = np.partition(values, len(values) - k)[len(values) - k]
                    keep = values >= kth
                    values, docs = values[keep], docs[keep]
                out.append((docs.astype(np.int64), values.astype(np.float32)))
            return out

        if threads > 1 and len(batches) > 1:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                parts = list(pool.map(run, batches))
        else:
            parts = [run(batch) for batch in batches]
        return [result for part in parts for result in part]


@dataclass
class TokenizedBatch:
    """Consecutive documents as (document, term, frequency) triples over the batch's own vocabulary.

    Attributes:
        lengths: (docs,) tokens per document (BM25's document length).
        doc_nnz: (docs,) distinct terms per document.
        local_terms: (nnz,) term ids into ``tokens``, document by document.
        term_freq: (nnz,) int32 occurrences of the term in the document.
        tokens: the batch's distinct tokens in first-occurrence order.
    """

    lengths: np.ndarray
    doc_nnz: np.ndarray
    local_terms: np.ndarray
    term_freq: np.ndarray
    tokens: list[str]


def tokenize_batch(texts: Sequence[str], tokenizer: str = "default") -> TokenizedBatch:
    """:func:`bm25_tokens` of every text, counted per document (the Python token lists live only here)."""
    import pandas as pd

    tokens = [bm25_tokens(text, tokenizer) for text in texts]
    lengths = np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens))
    flat = np.fromiter(chain.from_iterable(tokens), dtype=object, count=int(lengths.sum()))
    del tokens
    ids, distinct = pd.factorize(flat)  # a C hash table; ids in first-occurrence order
    del flat
    rows = np.repeat(np.arange(len(texts), dtype=np.int64), lengths)
    pairs, term_freq = np.unique((rows << 32) | ids.astype(np.int64), return_counts=True)  # sorted by (doc, term)
    return TokenizedBatch(
        lengths,
        np.bincount(pairs >> 32, minlength=len(texts)).astype(np.int32),
        (pairs & 0xFFFFFFFF).astype(np.int32),
        term_freq.astype(np.int32),
        distinct.tolist(),
    )


_POOL_CORPUS: Mapping[str, Passage] | None = None  # the corpus the forked tokenizer processes read from


def _tokenize_rows(bounds: tuple[int, int], tokenizer: str) -> TokenizedBatch:
    return tokenize_batch(_POOL_CORPUS.texts(range(*bounds)), tokenizer)  # type: ignore[union-attr]


def tokenized_batches(
    corpus: Mapping[str, Passage], batch_size: int, processes: int = 1, tokenizer: str = "default"
) -> Iterator[TokenizedBatch]:
    """The corpus tokenised batch by batch, in row order; in ``processes`` forked workers when > 1.

    Workers read their rows from the corpus themselves (``Corpus.texts``: the memory-mapped Arrow file, no text
    is pickled) and at most ``2 * processes`` batches are in flight, so memory stays bounded.
    """
    global _POOL_CORPUS
    if processes <= 1 or not callable(getattr(corpus, "texts", None)) or len(corpus) <= batch_size:
        for texts in corpus_text_batches(corpus, batch_size):
            yield tokenize_batch(texts, tokenizer)
        return
    bounds = [(start, min(start + batch_size, len(corpus))) for start in range(0, len(corpus), batch_size)]
    _POOL_CORPUS = corpus
    try:
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            pending: deque = deque()
            for bound in bounds:
                pending.append(pool.apply_async(_tokenize_rows, (bound, tokenizer)))
                if len(pending) >= 2 * processes:
                    yield pending.popleft().get()
            while pending:
                yield pending.popleft().get()
    finally:
        _POOL_CORPUS = None


def build_index(
    batches: Iterable[TokenizedBatch],
    folder: str | Path,
    k1: float = 0.9,
    b: float = 0.4,
    extra_meta: Mapping[str, object] | None = None,
) -> BM25Index:
    """Write a :class:`BM25Index` of the tokenised ``batches`` (the corpus in row order) into ``folder``.

    Written into a temporary sibling folder and renamed, so a killed build never leaves a half index. Weights
    follow bm25s's Lucene variant exactly: ``float32(idf * tf / (tf + k1 * (1 - b + b * dl / avgdl)))`` with
    ``idf = float32(log(1 + (N - df + 0.5) / (df + 0.5)))`` computed in float64.
    """
    target = Path(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = target.parent / f".{staging_name(target.name)}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    started = time.perf_counter()
    try:
        vocab: defaultdict[str, int] = defaultdict()
        vocab.default_factory = vocab.__len__  # a new token gets the next id
        doc_freq = np.zeros(1 << 16, dtype=np.int64)
        doc_lengths: list[np.ndarray] = []
        part_sizes: list[tuple[int, int]] = []
        with (work / "parts.bin").open("wb") as spill:
            for batch in batches:
                # global ids in first-occurrence order, as a sequential pass would give them
                global_ids = np.fromiter(map(vocab.__getitem__, batch.tokens), np.int64, len(batch.tokens))
                terms = global_ids[batch.local_terms].astype(np.int32)
                if len(vocab) > len(doc_freq):
                    doc_freq = np.concatenate([doc_freq, np.zeros(max(len(vocab), 2 * len(doc_freq)), np.int64)])
                doc_freq[: len(vocab)] += np.bincount(terms, minlength=len(vocab))
                doc_lengths.append(batch.lengths)
                part_sizes.append((len(batch.lengths), len(terms)))
                batch.doc_nnz.tofile(spill)
                terms.tofile(spill)
                batch.term_freq.tofile(spill)
        tokenized = time.perf_counter()
        num_terms = len(vocab)
        with (work / "vocab.txt").open("w", encoding="utf-8") as handle:
            for token in vocab:  # insertion order = term id order
                handle.write(token + "\n")
        del vocab
        doc_freq = doc_freq[:num_terms]
        lengths_all = np.concatenate(doc_lengths) if doc_lengths else np.zeros(0, dtype=np.int64)
        del doc_lengths
        num_docs = len(lengths_all)
        nnz = int(doc_freq.sum())
        index_dtype = np.int32 if max(nnz, num_docs) < 2**31 - 1 else np.int64
        avg_doc_len = float(lengths_all.mean()) if num_docs else 0.0
        # bm25s computes the idf with math.log per term, stores it as float32, and the rest in float64
        idf = np.fromiter(
            (math.log(1 + (num_docs - df + 0.5) / (df + 0.5)) for df in doc_freq.tolist()), np.float64, num_terms
        )
        idf = idf.astype(np.float32).astype(np.float64)
        norm = k1 * ((1 - b) + b * lengths_all / avg_doc_len) if avg_doc_len > 0 else np.zeros(num_docs)
        indptr = np.zeros(num_terms + 1, dtype=index_dtype)
        np.cumsum(doc_freq, out=indptr[1:])
        heads = indptr[:-1].astype(np.int64)
        data = np.lib.format.open_memmap(work / "data.npy", mode="w+", dtype=np.float32, shape=(nnz,))
        indices = np.lib.format.open_memmap(work / "indices.npy", mode="w+", dtype=index_dtype, shape=(nnz,))
        first_row = 0
        with (work / "parts.bin").open("rb") as spill:
            for part_docs, part_nnz in part_sizes:
                doc_nnz = np.fromfile(spill, dtype=np.int32, count=part_docs)
                terms = np.fromfile(spill, dtype=np.int32, count=part_nnz)
                term_freq = np.fromfile(spill, dtype=np.int32, count=part_nnz).astype(np.float64)
                rows = np.repeat(np.arange(first_row, first_row + part_docs, dtype=np.int64), doc_nnz)
                weights = (idf[terms] * (term_freq / (norm[rows] + term_freq))).astype(np.float32)
                order = np.argsort(terms, kind="stable")  # by term, documents still ascending within a term
                sorted_terms = terms[order]
                group_start = np.flatnonzero(np.r_[True, sorted_terms[1:] != sorted_terms[:-1]])
                group_sizes = np.diff(np.r_[group_start, len(sorted_terms)])
                offset_in_group = np.arange(len(sorted_terms)) - np.repeat(group_start, group_sizes)
                positions = heads[sorted_terms] + offset_in_group
                data[positions] = weights[order]
                indices[positions] = rows[order]
                heads[sorted_terms[group_start]] += group_sizes
                first_row += part_docs
        data.flush()
        indices.flush()
        del data, indices
        (work / "parts.bin").unlink()
        np.save(work / "indptr.npy", indptr)
        meta = {
            "num_docs": num_docs,
            "num_terms": num_terms,
            "nnz": nnz,
            "k1": k1,
            "b": b,
            "avg_doc_len": avg_doc_len,
            "tokenizer": TOKENIZER_VERSION,
            "index": INDEX_VERSION,
            "build_seconds": round(time.perf_counter() - started, 2),
            "tokenize_seconds": round(tokenized - started, 2),
            **(extra_meta or {}),
        }
        meta.update(manifest(work, ["data.npy", "indices.npy", "indptr.npy", "vocab.txt"]))
        atomic_write_json(work / "meta.json", meta)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(work, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log.info(
        "BM25 index: %d docs, %d terms, %d postings in %.1fs -> %s",
        num_docs,
        num_terms,
        nnz,
        meta["build_seconds"],
        target,
    )
    return BM25Index.load(target)


def _docid_samples(docid_of: Callable[[int], str], num_docs: int) -> list[str]:
    return [docid_of(row) for row in sorted({0, num_docs // 2, num_docs - 1})] if num_docs else []


def corpus_index(
    corpus: Mapping[str, Passage],
    cache_dir: str | Path,
    k1: float = 0.9,
    b: float = 0.4,
    docid_of: Callable[[int], str] | None = None,
    threads: int = 1,
    tokenizer: str = "default",
) -> BM25Index:
    """The BM25 index of ``corpus`` under ``<cache_dir>/bm25/``, built there unless built before.

    ``threads`` > 1 tokenises in that many forked processes (a ``Corpus`` only; a plain dict stays in-process).

    The key is the corpus fingerprint, tokenizer and index versions and k1/b; a cached index whose files differ
    from its manifest (every byte is checked: an index is opened only to mine, which reads more than that), or
    whose row count or sampled docids disagree with ``corpus``, is logged and rebuilt. A lock makes concurrent
    ranks and jobs build it once.
    """
    docid_of = docid_of or docid_lookup(corpus)
    key = {"corpus": corpus_fingerprint(corpus), "tokenizer": tokenizer_version(tokenizer), "index": INDEX_VERSION}
    key.update(k1=k1, b=b)
    folder = Path(cache_dir) / "bm25" / settings_hash(key)
    samples = _docid_samples(docid_of, len(corpus))
    with file_lock(folder.with_name(folder.name + ".lock")):
        if (folder / "meta.json").is_file():
            try:
                index = BM25Index.load(folder, "full")
            except CacheError as error:
                log.warning("%s: rebuilding it", error)
            else:
                if index.num_docs == len(corpus) and index.meta.get("docid_samples") == samples:
                    log.info("reusing BM25 index %s", folder)
                    return index
                log.warning("BM25 index %s does not match the corpus's rows: rebuilding it", folder)
        remove_stale_builds(folder.parent, f".{folder.name}.tmp-*")  # left by killed builds of this host
        batches = tokenized_batches(corpus, DOCS_PER_BATCH, threads, tokenizer)
        extra = {"key": key, "docid_samples": samples, "tokenizer": key["tokenizer"]}
        return build_index(batches, folder, k1, b, extra)


def bm25s_search(
    split: RetrievalSplit,
    depth: int,
    k1: float = 0.9,
    b: float = 0.4,
    cache_dir: str | Path | None = None,
    threads: int | None = None,
    tokenizer: str = "default",
) -> dict[str, list[tuple[str, float]]]:
    """Top-``depth`` BM25 documents (score > 0) for every query of ``split``, ties broken by docid.

    Args:
        cache_dir: where the corpus index is cached (``None``: built in a temporary folder, then removed).
        threads: query batches scored in parallel (``None``: the CPUs this process may use, at most 8).
    """
    if cache_dir is None:
        with tempfile.TemporaryDirectory(prefix="mdr-bm25-") as tmp:
            return bm25s_search(split, depth, k1, b, tmp, threads, tokenizer)
    threads = threads or default_threads()
    docid_of = docid_lookup(split.corpus)
    index = corpus_index(split.corpus, cache_dir, k1, b, docid_of, threads, tokenizer)
    query_ids = sorted(split.queries)
    term_ids = index.token_ids([bm25_tokens(split.queries[q].text, tokenizer) for q in query_ids])
    started = time.perf_counter()
    found = index.search(term_ids, min(depth, index.num_docs), threads)
    results: dict[str, list[tuple[str, float]]] = {}
    for query_id, (rows, scores) in zip(query_ids, found):
        ranked = sorted(((docid_of(int(r)), float(s)) for r, s in zip(rows, scores)), key=lambda x: (-x[1], x[0]))
        results[query_id] = ranked[:depth]
    log.info("BM25 search: %d queries in %.1fs", len(query_ids), time.perf_counter() - started)
    return results


def bm25s_pools(
    split: RetrievalSplit,
    depth: int,
    cache_dir: str | Path | None = None,
    threads: int | None = None,
    tokenizer: str = "default",
) -> RawPools:
    """BM25 candidates per training query with its positives removed (retrieves ``depth`` + positives)."""
    rankings = bm25s_search(
        split, retrieval_depth(split, depth), cache_dir=cache_dir, threads=threads, tokenizer=tokenizer
    )
    return from_rankings(split, rankings, depth)
