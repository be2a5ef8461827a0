"""BM25 with bounded memory, scoring as ``bm25s.BM25(method="lucene")``: an on-disk CSC weight matrix built by a
counting sort, cached under ``<cache_dir>/bm25/`` (docs/negatives.md)."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import tempfile
import time
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from mdr.data.schema import Corpus, RetrievalSplit
from mdr.mining.pools import RawPools, from_rankings, retrieval_depth, settings_hash
from mdr.mining.tokenize import TOKENIZER_VERSION, bm25_tokens, tokenizer_version
from mdr.utils.cache import CacheError, cache_lock, check_manifest, manifest, staged_folder, verify_level
from mdr.utils.io import atomic_write_json
from mdr.utils.logging import get_logger

log = get_logger(__name__)

INDEX_VERSION = "csc-v1"
"""Part of the index cache key: change it whenever the on-disk layout or the weights change."""
POSTINGS_PER_QUERY_BATCH = 8_000_000
DOCS_PER_BATCH = 20_000


def default_threads() -> int:
    """The CPUs this process may use (SLURM's cpus-per-task, taskset), at most 8."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()  # Linux / other
    return max(1, min(8, cpus or 1))


@dataclass
class BM25Index:
    """A BM25 weight matrix on disk: term t's documents are ``indices[indptr[t]:indptr[t + 1]]`` (ascending rows),
    their float32 weights ``data[...]``; ``meta`` holds num_docs, num_terms, k1, b, versions and docid samples."""

    folder: Path
    meta: dict
    data: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray

    @classmethod
    def load(cls, folder: str | Path, level: str = "size") -> BM25Index:
        """Memory-map an index written by :func:`build_index`, checked at ``level`` (else a CacheError)."""
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
            arrays = [np.load(root / f"{name}.npy", mmap_mode="r") for name in ("data", "indices")]
            index = cls(root, meta, *arrays, np.load(root / "indptr.npy"))
        except (OSError, ValueError) as error:
            raise CacheError(f"BM25 index {root}: {error}; {clear}") from error
        nnz, terms = int(meta["nnz"]), int(meta["num_terms"])
        if index.data.shape != (nnz,) or index.indices.shape != (nnz,) or index.indptr.shape != (terms + 1,):
            raise CacheError(f"BM25 index {root}: array shapes disagree with meta.json ({nnz} postings); {clear}")
        return index

    @property
    def num_docs(self) -> int:
        return int(self.meta["num_docs"])

    def token_ids(self, token_lists: Sequence[Sequence[str]]) -> list[list[int]]:
        """Term ids of each token list, in order, repeats kept, unknown tokens dropped (bm25s's rule)."""
        wanted = {token for tokens in token_lists for token in tokens}
        ids: dict[str, int] = {}
        with (self.folder / "vocab.txt").open(encoding="utf-8") as handle:
            for term_id, line in enumerate(handle):
                if (token := line.rstrip("\n")) in wanted:
                    ids[token] = term_id
        return [[ids[token] for token in tokens if token in ids] for tokens in token_lists]

    def search(
        self, query_term_ids: Sequence[Sequence[int]], k: int, threads: int = 1
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query, unsorted (rows, float32 scores) of the documents scoring > 0 and >= the k-th best (ties kept)."""
        matrix = sp.csr_matrix(
            (self.data, self.indices, self.indptr), shape=(int(self.meta["num_terms"]), self.num_docs), copy=False
        )
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
            indptr = np.zeros(len(batch) + 1, dtype=self.indptr.dtype)
            np.cumsum([len(query_term_ids[i]) for i in batch], out=indptr[1:])
            columns = np.asarray([t for i in batch for t in query_term_ids[i]], dtype=self.indptr.dtype)
            # repeated query terms stay separate entries: scipy adds them one by one, in query order, in float32,
            # as bm25s does, so the scores are bitwise bm25s's
            ones = np.ones(len(columns), dtype=np.float32)
            queries = sp.csr_matrix((ones, columns, indptr), shape=(len(batch), matrix.shape[0]), copy=False)
            scores = queries @ matrix  # (len(batch), num_docs), sparse
            out = []
            for row in range(len(batch)):
                values = scores.data[scores.indptr[row] : scores.indptr[row + 1]]
                docs = scores.indices[scores.indptr[row] : scores.indptr[row + 1]]
                values, docs = values[values > 0], docs[values > 0]
                if len(values) > k:
                    keep = values >= np.partition(values, len(values) - k)[len(values) - k]
                    values, docs = values[keep], docs[keep]
                out.append((docs.astype(np.int64), values.astype(np.float32)))
            return out

        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            return [result for part in pool.map(run, batches) for result in part]


@dataclass
class TokenizedBatch:
    """Consecutive documents as (document, term, frequency) triples over the batch's own vocabulary."""

    lengths: np.ndarray  # (docs,) tokens per document
    doc_nnz: np.ndarray  # (docs,) int32 distinct terms per document
    local_terms: np.ndarray  # (nnz,) int32 ids into tokens, document by document
    term_freq: np.ndarray  # (nnz,) int32 occurrences of the term in the document
    tokens: list[str]  # the batch's distinct tokens in first-occurrence order


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


_POOL_CORPUS: Corpus | None = None  # the corpus the forked tokenizer processes read from


def _tokenize_rows(bounds: tuple[int, int], tokenizer: str) -> TokenizedBatch:
    return tokenize_batch(_POOL_CORPUS.texts(range(*bounds)), tokenizer)  # type: ignore[union-attr]


def tokenized_batches(
    corpus: Corpus, batch_size: int, processes: int = 1, tokenizer: str = "default"
) -> Iterator[TokenizedBatch]:
    """The corpus tokenised batch by batch, in row order, by ``processes`` forked workers (at most 2 batches each)."""
    global _POOL_CORPUS
    if processes <= 1 or len(corpus) <= batch_size:
        for _, _, texts in corpus.iter_batches(batch_size):
            yield tokenize_batch(texts, tokenizer)
        return
    _POOL_CORPUS = corpus
    try:
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            pending: deque = deque()
            for start in range(0, len(corpus), batch_size):
                bounds = (start, min(start + batch_size, len(corpus)))
                pending.append(pool.apply_async(_tokenize_rows, (bounds, tokenizer)))
                if len(pending) >= 2 * processes:
                    yield pending.popleft().get()
            while pending:
                yield pending.popleft().get()
    finally:
        _POOL_CORPUS = None


def _spill(batches: Iterable[TokenizedBatch], spill: Path) -> tuple[list[str], np.ndarray, np.ndarray, list]:
    """Write each batch's (doc_nnz, global term ids, term_freq) to ``spill``; return the vocabulary (term id
    order), the document frequencies, the document lengths and each batch's (docs, postings)."""
    vocab: defaultdict[str, int] = defaultdict()
    vocab.default_factory = vocab.__len__  # a new token gets the next id
    doc_freq = np.zeros(0, dtype=np.int64)
    doc_lengths: list[np.ndarray] = []
    part_sizes: list[tuple[int, int]] = []
    with spill.open("wb") as handle:
        for batch in batches:
            # global ids in first-occurrence order, as a sequential pass would give them
            global_ids = np.fromiter(map(vocab.__getitem__, batch.tokens), np.int64, len(batch.tokens))
            terms = global_ids[batch.local_terms].astype(np.int32)
            doc_freq = np.pad(doc_freq, (0, len(vocab) - len(doc_freq))) + np.bincount(terms, minlength=len(vocab))
            doc_lengths.append(batch.lengths)
            part_sizes.append((len(batch.lengths), len(terms)))
            for array in (batch.doc_nnz, terms, batch.term_freq):
                array.tofile(handle)
    lengths = np.concatenate(doc_lengths) if doc_lengths else np.zeros(0, dtype=np.int64)
    return list(vocab), doc_freq, lengths, part_sizes


def build_index(
    batches: Iterable[TokenizedBatch],
    folder: str | Path,
    k1: float = 0.9,
    b: float = 0.4,
    extra_meta: Mapping[str, object] | None = None,
) -> BM25Index:
    """Write a :class:`BM25Index` of the tokenised ``batches`` (corpus row order) into ``folder``; weights ``float32(idf
    * tf / (tf + k1 * (1 - b + b * dl / avgdl)))``, ``idf = float32(log(1 + (N - df + 0.5) / (df + 0.5)))``."""
    target = Path(folder)
    started = time.perf_counter()
    with staged_folder(target, replace=True) as work:
        vocab, doc_freq, lengths, part_sizes = _spill(batches, work / "parts.bin")
        tokenized = time.perf_counter()
        with (work / "vocab.txt").open("w", encoding="utf-8") as handle:
            handle.writelines(token + "\n" for token in vocab)  # in term id order
        num_terms, num_docs, nnz = len(vocab), len(lengths), int(doc_freq.sum())
        del vocab
        index_dtype = np.int32 if max(nnz, num_docs) < 2**31 - 1 else np.int64
        avg_doc_len = float(lengths.mean()) if num_docs else 0.0
        # bm25s computes the idf with math.log per term, stores it as float32, and the rest in float64
        idf = np.fromiter(
            (math.log(1 + (num_docs - df + 0.5) / (df + 0.5)) for df in doc_freq.tolist()), np.float64, num_terms
        )
        idf = idf.astype(np.float32).astype(np.float64)
        norm = k1 * ((1 - b) + b * lengths / avg_doc_len) if avg_doc_len > 0 else np.zeros(num_docs)
        indptr = np.zeros(num_terms + 1, dtype=index_dtype)
        np.cumsum(doc_freq, out=indptr[1:])
        heads = indptr[:-1].astype(np.int64)  # each term's next free position
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
                positions = heads[sorted_terms] + np.arange(len(sorted_terms)) - np.repeat(group_start, group_sizes)
                data[positions] = weights[order]
                indices[positions] = rows[order]
                heads[sorted_terms[group_start]] += group_sizes
                first_row += part_docs
        data.flush()
        indices.flush()
        del data, indices
        (work / "parts.bin").unlink()
        np.save(work / "indptr.npy", indptr)
        meta = {"num_docs": num_docs, "num_terms": num_terms, "nnz": nnz, "k1": k1, "b": b, "avg_doc_len": avg_doc_len}
        meta.update(tokenizer=TOKENIZER_VERSION, index=INDEX_VERSION, tokenize_seconds=round(tokenized - started, 2))
        meta.update(build_seconds=round(time.perf_counter() - started, 2), **(extra_meta or {}))
        meta.update(manifest(work, ["data.npy", "indices.npy", "indptr.npy", "vocab.txt"]))
        atomic_write_json(work / "meta.json", meta)
    log.info(
        f"BM25 index: {num_docs} docs, {num_terms} terms, {nnz} postings in {meta['build_seconds']:.1f}s -> {target}"
    )
    return BM25Index.load(target)


def corpus_index(
    corpus: Corpus,
    cache_dir: str | Path,
    k1: float = 0.9,
    b: float = 0.4,
    threads: int = 1,
    tokenizer: str = "default",
) -> BM25Index:
    """The BM25 index of ``corpus`` under ``<cache_dir>/bm25/``, reused if it passes every check, else (re)built."""
    key = {"corpus": corpus.fingerprint(), "tokenizer": tokenizer_version(tokenizer), "index": INDEX_VERSION}
    key.update(k1=k1, b=b)
    folder = Path(cache_dir) / "bm25" / settings_hash(key)
    rows = len(corpus)
    samples = [corpus.docid(row) for row in sorted({0, rows // 2, rows - 1})] if rows else []
    with cache_lock(folder.with_name(folder.name + ".lock")):
        if (folder / "meta.json").is_file():
            try:
                index = BM25Index.load(folder, "full")
            except CacheError as error:
                log.warning("%s: rebuilding it", error)
            else:
                if index.num_docs == rows and index.meta.get("docid_samples") == samples:
                    log.info("reusing BM25 index %s", folder)
                    return index
                log.warning("BM25 index %s does not match the corpus's rows: rebuilding it", folder)
        batches = tokenized_batches(corpus, DOCS_PER_BATCH, threads, tokenizer)
        return build_index(
            batches, folder, k1, b, {"key": key, "docid_samples": samples, "tokenizer": key["tokenizer"]}
        )


def bm25s_search(
    split: RetrievalSplit,
    depth: int,
    k1: float = 0.9,
    b: float = 0.4,
    cache_dir: str | Path | None = None,
    threads: int | None = None,
    tokenizer: str = "default",
) -> dict[str, list[tuple[str, float]]]:
    """Top-``depth`` BM25 documents (score > 0) per query, ties by docid; index in ``cache_dir`` (None: temporary)."""
    if cache_dir is None:
        with tempfile.TemporaryDirectory(prefix="mdr-bm25-") as tmp:
            return bm25s_search(split, depth, k1, b, tmp, threads, tokenizer)
    threads = threads or default_threads()
    docid_of = split.corpus.docid
    index = corpus_index(split.corpus, cache_dir, k1, b, threads, tokenizer)
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
