"""TREC run files: ``qid Q0 docid rank score tag``."""

from __future__ import annotations

import os
from pathlib import Path

from mdr.data.schema import DataError
from mdr.evaluation.metrics import Run, ranked
from mdr.utils.io import atomic_write_lines


def write_run(path: str | os.PathLike[str], run: Run, tag: str = "mdr", depth: int = 100) -> Path:
    """Write ``run`` in trec_eval order, ``depth`` lines per query, atomically."""
    lines = []
    for query_id in sorted(run):
        scores = run[query_id]
        for rank, docid in enumerate(ranked(scores, depth), start=1):
            # 9 significant digits round-trip float32 scores, so the file ranks exactly as in memory
            lines.append(f"{query_id} Q0 {docid} {rank} {scores[docid]:.9g} {tag}")
    return atomic_write_lines(path, lines)


def read_run(path: str | os.PathLike[str]) -> dict[str, dict[str, float]]:
    """Read a TREC run file into query_id -> {docid: score}."""
    run: dict[str, dict[str, float]] = {}
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 6:
                raise DataError(f"{path}:{line_number}: expected 'qid Q0 docid rank score tag'")
            run.setdefault(fields[0], {})[fields[2]] = float(fields[4])
    return run
