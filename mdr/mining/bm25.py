"""BM25 candidate retrieval for hard-negative mining (bm25s backend; pyserini in mdr.mining.lucene)."""

from __future__ import annotations

from mdr.data.collator import passage_text
from mdr.data.schema import RetrievalSplit
from mdr.mining.pools import RawPools, from_rankings, retrieval_depth
from mdr.mining.tokenize import bm25_tokens


def bm25s_search(
    split: RetrievalSplit, depth: int, k1: float = 0.9, b: float = 0.4
) -> dict[str, list[tuple[str, float]]]:
    """Top-``depth`` BM25 (Lucene variant, pyserini's default k1/b) documents for every query of ``split``."""
    import bm25s

    docids = list(split.corpus)
    retriever = bm25s.BM25(k1=k1, b=b, method="lucene")
    retriever.index([bm25_tokens(passage_text(split.corpus[d])) for d in docids], show_progress=False)
    query_ids = sorted(split.queries)
    tokens = [bm25_tokens(split.queries[q].text) or ["\u0000"] for q in query_ids]
    k = min(depth, len(docids))
    rows, scores = retriever.retrieve(tokens, k=k, show_progress=False, n_threads=1)
    results: dict[str, list[tuple[str, float]]] = {}
    for i, query_id in enumerate(query_ids):
        results[query_id] = [(docids[int(r)], float(s)) for r, s in zip(rows[i], scores[i]) if s > 0]
    return results


def bm25s_pools(split: RetrievalSplit, depth: int) -> RawPools:
    """BM25 candidates per training query with its positives removed (retrieves ``depth`` + positives)."""
    return from_rankings(split, bm25s_search(split, retrieval_depth(split, depth)), depth)
