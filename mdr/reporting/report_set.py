"""A report's files (results.md, CSVs, plots) as one set: written into a staging folder, then, with SIGINT and
SIGTERM held back, moved into place with a manifest (each file's SHA-256), the old set's files removed first and
results.md moved last. A reader sees the old set untouched or the new one complete."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from mdr.utils.cache import file_sha256
from mdr.utils.io import atomic_write_json

log = logging.getLogger(__name__)

LAST = "results.md"  # moved into place last: its presence says the set beside it is complete
MANIFEST = "report_manifest.json"  # each file of the set with its SHA-256, and the sweep folders it came from
STAGING_PREFIX = ".report-staging-"
HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def manifest(staging: Path, sources: list[str]) -> dict[str, Any]:
    """The manifest of the files staged in ``staging`` (all but the manifest itself)."""
    files = {path.name: file_sha256(path) for path in sorted(staging.iterdir()) if path.name != MANIFEST}
    about = f"one report set, written by python -m mdr.reporting.aggregate; {LAST} is moved into place last"
    return {"about": about, "files": files, "sources": sources}


def old_set(target: Path, patterns: Iterable[str]) -> set[str]:
    """Names of ``target``'s report set files: those its manifest lists and every file matching ``patterns``."""
    names = {path.name for pattern in patterns for path in target.glob(pattern) if path.is_file()}
    listed = target / MANIFEST
    try:
        files = json.loads(listed.read_text(encoding="utf-8")).get("files") or {} if listed.is_file() else {}
    except (OSError, ValueError, AttributeError) as error:
        log.warning("%s: unreadable (%s); the old report's files are found by name", listed, error)
        files = {}
    return names | {name for name in files if isinstance(name, str) and Path(name).name == name}


@contextlib.contextmanager
def signals_held(signums: Iterable[signal.Signals] = HELD_SIGNALS) -> Iterator[None]:
    """Hold back ``signums`` during the block and deliver them (once each) after it; other threads hold nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {signum: signal.getsignal(signum) for signum in signums}
    for signum in previous:
        signal.signal(signum, lambda number, frame: received.append(number))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        for signum in dict.fromkeys(received):
            signal.raise_signal(signum)


def commit(staging: Path, target: Path, sources: list[str], patterns: Iterable[str]) -> list[str]:
    """Move the set in ``staging`` into ``target`` in place of the set there; returns its files in the order moved."""
    atomic_write_json(staging / MANIFEST, manifest(staging, sources))
    names = sorted(path.name for path in staging.iterdir())
    order = [name for name in names if name not in (MANIFEST, LAST)] + [MANIFEST] + ([LAST] if LAST in names else [])
    stale = old_set(target, patterns) - set(names)
    with signals_held():
        for name in [LAST, MANIFEST, *sorted(stale)]:
            (target / name).unlink(missing_ok=True)
        for name in order:
            os.replace(staging / name, target / name)
        descriptor = os.open(target, os.O_RDONLY)
        try:
            os.fsync(descriptor)  # the renames, on disk
        finally:
            os.close(descriptor)
    staging.rmdir()
    return order


@contextlib.contextmanager
def staged_report(target: Path, sources: list[str], patterns: Iterable[str]) -> Iterator[Path]:
    """A staging folder whose report set replaces ``target``'s when the block ends without an error (:func:`commit`)."""
    target.mkdir(parents=True, exist_ok=True)
    for folder in sorted(target.glob(f"{STAGING_PREFIX}*")):
        if folder.is_dir():
            log.warning("%s: left by an interrupted aggregate; removed", folder)
            shutil.rmtree(folder, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=target))
    try:
        yield staging
        commit(staging, target, sources, patterns)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
