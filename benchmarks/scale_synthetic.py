"""Synthetic retrieval sets for the scale benchmarks: Zipfian word frequencies, 60-120 words per passage.

Words are made of Swahili-like syllables (Latin script, so every backend and analyzer applies: pyserini indexes
them with ``--language sw``, i.e. Anserini's default analyzer) and drawn from a Zipf-Mandelbrot law over
300,000 word types, so the commonest words occur in almost every passage, as in real text; that is what makes
BM25 postings long and search cost grow with the corpus. Each of the 555 queries (the XQuAD-R training split's
size) takes 6-10 words of one target passage plus 1-2 random words, and that passage is its positive.

The corpus is stored once per (size, seed) with ``mdr.data.corpus.Corpus`` under ``<workdir>/corpora`` and
reopened by later runs.
"""

from __future__ import annotations

import json
import random
import resource
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mdr.data.corpus import Corpus  # noqa: E402
from mdr.data.schema import Query, RetrievalSplit  # noqa: E402

SYLLABLES = "a e i o u ka ki ku ma mi mu na ni nu wa we ya ta te to li la sa si ha ja ba bi mb nd ng ch sh".split()
VOCABULARY = 300_000
ZIPF_SHIFT, ZIPF_EXPONENT = 2.7, 1.0
NUM_QUERIES = 555


def vocabulary(size: int = VOCABULARY, seed: int = 0) -> list[str]:
    """``size`` distinct words, shorter ones first (the frequent words of a language are short)."""
    rng = random.Random(seed)
    words = dict.fromkeys(SYLLABLES)
    words.update(dict.fromkeys(a + b for a in SYLLABLES for b in SYLLABLES))
    length = 3
    while len(words) < size:
        goal = min(size, len(words) + len(SYLLABLES) ** length // 2)
        while len(words) < goal:
            words["".join(rng.choices(SYLLABLES, k=length))] = None
        length += 1
    return list(words)[:size]


def _word_probabilities(size: int) -> np.ndarray:
    weights = 1.0 / (np.arange(size) + ZIPF_SHIFT) ** ZIPF_EXPONENT
    return np.cumsum(weights / weights.sum())


def passages(num_passages: int, seed: int = 0) -> Iterator[dict[str, str]]:
    """``{docid, title, text}`` records: title 1-4 words, text 60-120 words, Zipfian."""
    words = np.array(vocabulary(seed=seed), dtype=object)
    cumulative = _word_probabilities(len(words))
    rng = np.random.default_rng(seed)
    chunk = 10_000
    for first in range(0, num_passages, chunk):
        count = min(chunk, num_passages - first)
        title_lengths = rng.integers(1, 5, count)
        text_lengths = rng.integers(60, 121, count)
        picks = np.searchsorted(cumulative, rng.random(int(title_lengths.sum() + text_lengths.sum())))
        drawn = words[np.minimum(picks, len(words) - 1)].tolist()
        at = 0
        for i in range(count):
            title = " ".join(drawn[at : at + title_lengths[i]])
            at += title_lengths[i]
            text = " ".join(drawn[at : at + text_lengths[i]])
            at += text_lengths[i]
            yield {"docid": f"doc{first + i}", "title": title, "text": text}


def synthetic_corpus(num_passages: int, workdir: Path, seed: int = 0) -> Corpus:
    """The stored synthetic corpus of ``num_passages`` passages (built on first use, then reopened)."""
    marker = workdir / f"synthetic-{num_passages}-{seed}.json"
    if marker.is_file():
        return Corpus(json.loads(marker.read_text())["folder"])
    corpus = Corpus.from_records(passages(num_passages, seed), cache_dir=workdir)
    marker.write_text(json.dumps({"folder": str(corpus.folder)}))
    return corpus


def synthetic_split(num_passages: int, workdir: Path, seed: int = 0, num_queries: int = NUM_QUERIES) -> RetrievalSplit:
    """The synthetic corpus with ``num_queries`` queries, each judged relevant to the passage it was drawn from."""
    corpus = synthetic_corpus(num_passages, workdir, seed)
    rng = random.Random(seed + 1)
    words = vocabulary(seed=seed)
    queries: dict[str, Query] = {}
    qrels: dict[str, dict[str, int]] = {}
    for number, row in enumerate(sorted(rng.sample(range(len(corpus)), num_queries))):
        passage = corpus.passage(row)
        text_words = passage.text.split()
        picked = rng.sample(text_words, min(len(text_words), rng.randint(6, 10)))
        picked += rng.choices(words[:50_000], k=rng.randint(1, 2))
        query_id = f"q{number}"
        queries[query_id] = Query(query_id, " ".join(picked))
        qrels[query_id] = {passage.docid: 1}
    return RetrievalSplit(corpus, queries, qrels)


def rss_mb() -> dict[str, float]:
    """This process's current RSS split (MiB) and the peaks of itself and of its waited-for children."""
    figures: dict[str, float] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key = line.split(":")[0]
        if key in ("VmRSS", "RssAnon", "RssFile"):
            figures[key] = round(int(line.split()[1]) / 1024, 1)
    figures["peak_self"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    figures["peak_children"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
    return figures


class PeakSampler:
    """Samples this process's ``RssAnon`` / ``RssFile`` every ``interval`` seconds in a thread; keeps the maxima.

    ``ru_maxrss`` counts mapped file pages too (the corpus, a memory-mapped index): the anonymous peak is the
    memory the process itself needs, the file pages are the kernel's page cache, shared and reclaimable.
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peaks = {"RssAnon": 0.0, "RssFile": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            current = rss_mb()
            for key in self.peaks:
                self.peaks[key] = max(self.peaks[key], current.get(key, 0.0))
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def growth_exponents(records: list[dict], key: str, value: str) -> list[dict]:
    """log-log slopes of ``value`` against ``size`` between consecutive sizes, per ``key`` (e.g. backend)."""
    out = []
    for group in sorted({r[key] for r in records}):
        points = sorted((r["size"], r[value]) for r in records if r[key] == group and r.get(value))
        for (n1, v1), (n2, v2) in zip(points, points[1:]):
            slope = float(np.log(v2 / v1) / np.log(n2 / n1))
            out.append({"growth": value, key: group, "from": n1, "to": n2, "exponent": round(slope, 2)})
    return out
