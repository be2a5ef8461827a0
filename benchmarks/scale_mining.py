"""BM25 hard-negative mining at scale: time per stage and peak memory, each backend in its own fresh process.

    python benchmarks/scale_mining.py --sizes 10000 100000                      # bm25s and pyserini
    python benchmarks/scale_mining.py --sizes 1000000 --backends bm25s pyserini --workdir /tmp/mdr-scale
    python benchmarks/scale_mining.py --sizes 10000 100000 --backends bm25s_library   # the pre-streaming path

One JSON line per (size, backend) measurement, then one per growth exponent (log-log slope of time and peak
memory between consecutive sizes). The corpus is synthetic (``scale_synthetic.py``: Zipfian words, 60-120 per
passage, 555 queries with one positive each), stored once as an mdr Corpus and reopened by every worker, so
the floor (imports + opened corpus) is the same for both backends and reported apart.

Backends: ``bm25s`` (mdr's streamed on-disk index: build, then search; then ``search_cached_s``, a second
mining over the cached index), ``pyserini`` (JSONL export, Lucene indexing and search in child JVMs: their
peak memory is ``peak_children_mb``), ``bm25s_library`` (the bm25s package as mdr used it before: Python token
lists of the whole corpus; keep it to <= 100k passages). Both real backends get the same ``--threads``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _bm25s(split, depth: int, threads: int, work: Path) -> dict:  # noqa: ANN001
    from mdr.mining import bm25
    from mdr.mining.pools import from_rankings, retrieval_depth

    started = time.perf_counter()
    index = bm25.corpus_index(split.corpus, work, threads=threads)
    built = time.perf_counter()
    rankings = bm25.bm25s_search(split, retrieval_depth(split, depth), cache_dir=work, threads=threads)
    pools = from_rankings(split, rankings, depth)
    done = time.perf_counter()
    bm25.bm25s_search(split, retrieval_depth(split, depth), cache_dir=work, threads=threads)
    again = time.perf_counter()
    return {
        "index_s": round(built - started, 2),
        "tokenize_s": index.meta["tokenize_seconds"],
        "search_s": round(done - built, 2),
        "total_s": round(done - started, 2),
        "search_cached_s": round(again - done, 2),
        "index_mb": round(sum(f.stat().st_size for f in index.folder.iterdir()) / 2**20, 1),
        "terms": index.meta["num_terms"],
        "postings": index.meta["nnz"],
        "positive_found": len(pools.positive_scores),
    }


def _pyserini(split, depth: int, threads: int, work: Path) -> dict:  # noqa: ANN001
    from mdr.mining import lucene

    stages: dict[str, float] = {}
    original_write, original_run = lucene._write_corpus, lucene._pyserini

    def write(*args: object) -> None:
        started = time.perf_counter()
        original_write(*args)
        stages["export_s"] = round(time.perf_counter() - started, 2)

    def run(work_dir: Path, *args: str) -> None:
        started = time.perf_counter()
        original_run(work_dir, *args)
        stages["index_s" if args[0].endswith("index.lucene") else "search_s"] = round(time.perf_counter() - started, 2)

    lucene._write_corpus, lucene._pyserini = write, run  # type: ignore[assignment]
    started = time.perf_counter()
    pools = lucene.pyserini_pools(split, "sw", depth, threads=threads)
    return {**stages, "total_s": round(time.perf_counter() - started, 2), "positive_found": len(pools.positive_scores)}


def _bm25s_library(split, depth: int, threads: int, work: Path) -> dict:  # noqa: ANN001
    import bm25s

    from mdr.data.collator import passage_text
    from mdr.mining.pools import from_rankings, retrieval_depth
    from mdr.mining.tokenize import bm25_tokens

    started = time.perf_counter()
    docids = list(split.corpus)
    retriever = bm25s.BM25(k1=0.9, b=0.4, method="lucene")
    retriever.index([bm25_tokens(passage_text(p)) for p in split.corpus.values()], show_progress=False)
    built = time.perf_counter()
    query_ids = sorted(split.queries)
    tokens = [bm25_tokens(split.queries[q].text) or ["\u0000"] for q in query_ids]
    k = retrieval_depth(split, depth)
    rows, scores = retriever.retrieve(tokens, k=k, show_progress=False, n_threads=threads)
    rankings = {
        q: [(docids[int(r)], float(s)) for r, s in zip(rows[i], scores[i]) if s > 0] for i, q in enumerate(query_ids)
    }
    pools = from_rankings(split, rankings, depth)
    done = time.perf_counter()
    return {
        "index_s": round(built - started, 2),
        "search_s": round(done - built, 2),
        "total_s": round(done - started, 2),
        "positive_found": len(pools.positive_scores),
    }


BACKENDS = {"bm25s": _bm25s, "pyserini": _pyserini, "bm25s_library": _bm25s_library}


def worker(size: int, backend: str, threads: int, depth: int, workdir: Path) -> dict:
    """One measurement in this (fresh) process."""
    from scale_synthetic import PeakSampler, rss_mb, synthetic_split

    started = time.perf_counter()
    split = synthetic_split(size, workdir)
    load_s = time.perf_counter() - started
    floor = rss_mb()
    with tempfile.TemporaryDirectory(prefix="mdr-scale-mining-", dir=workdir) as tmp, PeakSampler() as sampler:
        figures = BACKENDS[backend](split, depth, threads, Path(tmp))
    memory = rss_mb()
    return {
        "benchmark": "mining",
        "backend": backend,
        "size": size,
        "queries": len(split.queries),
        "depth": depth,
        "threads": threads,
        **figures,
        "load_s": round(load_s, 2),
        "floor_rss_mb": floor["VmRSS"],
        "peak_self_mb": memory["peak_self"],
        "peak_anon_mb": sampler.peaks["RssAnon"],
        "peak_file_mb": sampler.peaks["RssFile"],
        "peak_children_mb": memory["peak_children"],
        "peak_mb": max(memory["peak_self"], memory["peak_children"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--backends", nargs="+", default=["bm25s", "pyserini"], choices=sorted(BACKENDS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "mdr-scale")
    parser.add_argument("--worker", nargs=2, metavar=("SIZE", "BACKEND"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.worker:
        print(json.dumps(worker(int(args.worker[0]), args.worker[1], args.threads, args.depth, args.workdir)))
        return
    from scale_synthetic import growth_exponents, synthetic_corpus

    records = []
    for size in args.sizes:
        started = time.perf_counter()
        synthetic_corpus(size, args.workdir)  # built once, outside the measured processes
        print(
            json.dumps(
                {"benchmark": "mining", "corpus": size, "build_or_open_s": round(time.perf_counter() - started, 1)}
            )
        )
        for backend in args.backends:
            command = [sys.executable, __file__, "--worker", str(size), backend, "--threads", str(args.threads)]
            command += ["--depth", str(args.depth), "--workdir", str(args.workdir)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                record = {"benchmark": "mining", "backend": backend, "size": size, "error": done.stderr[-1500:]}
            else:
                record = json.loads(done.stdout.strip().splitlines()[-1])
                records.append(record)
            print(json.dumps(record), flush=True)
    for line in growth_exponents(records, "backend", "total_s") + growth_exponents(records, "backend", "peak_mb"):
        print(json.dumps({"benchmark": "mining", **line}))


if __name__ == "__main__":
    main()
