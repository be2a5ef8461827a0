"""A corpus stored once on disk (docs/caches.md), opened memory-mapped so every process and rank shares one copy."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import weakref
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mdr.utils import cache
from mdr.utils.cache import CacheError, staged_folder
from mdr.utils.errors import DataError
from mdr.utils.io import atomic_write_json
from mdr.utils.logging import get_logger

log = get_logger(__name__)

FORMAT_VERSION = 1
"""Bump when the stored layout or the meaning of its columns changes (old folders are then rebuilt)."""
BATCH_ROWS = 8192
"""Rows per Arrow record batch."""
ARROW_FILE, HASHES_FILE, ROWS_FILE, META_FILE = "corpus.arrow", "docid_hashes.npy", "docid_rows.npy", "meta.json"
SCHEMA = pa.schema([("docid", pa.string()), ("title", pa.string()), ("text", pa.string())])

Row = tuple[str, str, str, int, int]
"""``(docid, title, text, source_index, line)``: a passage and where it was read (for error messages)."""


@dataclass(frozen=True)
class Passage:
    """One corpus entry (re-exported by :mod:`mdr.data.schema`)."""

    docid: str
    text: str
    title: str = ""


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir`` made absolute; None: ``$MDR_CACHE_DIR`` or ``.cache/mdr`` (the default of ``paths.cache_dir``)."""
    default = os.environ.get("MDR_CACHE_DIR", ".cache/mdr")
    return Path(default if cache_dir is None else cache_dir).expanduser().resolve()


def docid_key(docid: str) -> int:
    """A stable 64-bit hash of a docid (the same in every process and Python version)."""
    return int.from_bytes(hashlib.blake2b(docid.encode("utf-8"), digest_size=8).digest(), "little")


def encoded_text(title: str, text: str, prefix: str = "") -> str:
    """The string a passage is encoded as: ``prefix + title + " " + text`` (no title: just the text)."""
    return prefix + (f"{title} {text}" if title else text)


def source_key(paths: Sequence[Path], parser: str, cache_dir: str | Path | None = None) -> str:
    """A short hash of the contents (not paths) of ``paths``, in order, and ``parser``: the corpus's cache key."""
    memo = cache.digests_dir(cache_dir) if cache_dir is not None else None
    files = [cache.content_digest(path, memo) for path in paths]
    payload = json.dumps({"format": FORMAT_VERSION, "parser": parser, "files": files}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _write(rows: Iterable[Row], folder: Path, sources: Sequence[str]) -> str:
    """Stream ``rows`` into ``folder`` (Arrow file, docid index, meta.json last); returns the content fingerprint."""
    hashes, where_source, where_line = array("Q"), array("l"), array("q")
    digest = hashlib.sha256()
    columns: tuple[list[str], list[str], list[str]] = ([], [], [])
    with pa.OSFile(str(folder / ARROW_FILE), "wb") as sink, pa.ipc.new_file(sink, SCHEMA) as writer:

        def flush() -> None:
            writer.write_batch(pa.record_batch([pa.array(column, pa.string()) for column in columns], schema=SCHEMA))
            for column in columns:
                column.clear()

        for docid, title, text, source, line in rows:
            for column, value in zip(columns, (docid, title, text)):
                column.append(value)
            hashes.append(docid_key(docid))
            where_source.append(source)
            where_line.append(line)
            fields = (docid.encode("utf-8"), title.encode("utf-8"), text.encode("utf-8"))
            digest.update(b"%d:%d:%d\n" % tuple(len(field) for field in fields) + b"".join(fields))
            if len(columns[0]) == BATCH_ROWS:
                flush()
        if columns[0]:
            flush()
    count = len(hashes)
    if count == 0:
        raise DataError(f"{', '.join(sources) or 'records'}: corpus is empty")
    keys = np.frombuffer(hashes, dtype=np.uint64)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    same = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1])
    if same.size:
        field = _Store(folder, BATCH_ROWS, count).field
        for index in same:
            first, second = sorted(int(row) for row in order[index : index + 2])
            if field(first, 0) == field(second, 0):  # equal hashes and equal strings: a real duplicate
                at, was = (f"{sources[where_source[r]]}:{where_line[r]}" for r in (second, first))
                raise DataError(f"{at}: duplicate docid {field(second, 0)!r} (first at {was})")
    np.save(folder / HASHES_FILE, sorted_keys)
    np.save(folder / ROWS_FILE, order.astype(np.int64))
    meta = dict(format=FORMAT_VERSION, rows=count, batch_rows=BATCH_ROWS, fingerprint=digest.hexdigest()[:32])
    meta.update(sources=list(sources), **cache.manifest(folder, [ARROW_FILE, HASHES_FILE, ROWS_FILE]))
    atomic_write_json(folder / META_FILE, meta)
    return str(meta["fingerprint"])


class _Store:
    """Zero-copy access to the string columns of a stored Arrow file (numpy views over the mapped buffers)."""

    def __init__(self, folder: Path, batch_rows: int, num_rows: int) -> None:
        self.batch_rows = batch_rows
        self.reader = pa.ipc.open_file(pa.memory_map(str(folder / ARROW_FILE), "r"))
        expected = -(-num_rows // batch_rows)
        if self.reader.num_record_batches != expected:
            raise DataError(f"{folder / ARROW_FILE}: {self.reader.num_record_batches} batches, expected {expected}")
        self._batches: dict[int, list[tuple[np.ndarray, memoryview]]] = {}

    def columns(self, batch: int) -> list[tuple[np.ndarray, memoryview]]:
        """(offsets, data) of each column of record batch ``batch``."""
        if batch not in self._batches:
            self._batches[batch] = []
            for column in self.reader.get_batch(batch).columns:
                _, offsets, data = column.buffers()
                view = np.frombuffer(offsets, dtype=np.int32)[column.offset : column.offset + len(column) + 1]
                self._batches[batch].append((view, memoryview(data) if data is not None else memoryview(b"")))
        return self._batches[batch]

    def field(self, row: int, column: int) -> str:
        """Column ``column`` (0 docid, 1 title, 2 text) of ``row``."""
        batch, local = divmod(row, self.batch_rows)
        offsets, data = self.columns(batch)[column]
        return str(data[offsets[local] : offsets[local + 1]], "utf-8")


class Corpus(Mapping[str, Passage]):
    """A read-only docid -> :class:`Passage` mapping over a stored corpus in source-file order, plus row access."""

    def __init__(self, folder: str | Path, level: str = "size") -> None:
        self.folder = Path(folder)
        clear = f"delete {self.folder} (a corpus read from files is stored again on the next run)"
        meta_path = self.folder / META_FILE
        if not meta_path.is_file():
            raise DataError(f"{self.folder}: not a stored corpus ({META_FILE} missing)")
        try:
            self._meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise CacheError(f"{meta_path}: cannot be read ({error}); {clear}") from error
        if self._meta.get("format") != FORMAT_VERSION:
            raise CacheError(f"{self.folder}: corpus format {self._meta.get('format')}, expected {FORMAT_VERSION}")
        problem = cache.check_manifest(self.folder, self._meta, cache.verify_level(level))
        if problem is not None:
            raise CacheError(f"stored corpus {self.folder}: {problem}; {clear}")
        self._len = int(self._meta["rows"])
        try:
            self._store = _Store(self.folder, int(self._meta["batch_rows"]), self._len)
            self._hashes = np.load(self.folder / HASHES_FILE, mmap_mode="r")
            self._rows = np.load(self.folder / ROWS_FILE, mmap_mode="r")
        except (OSError, ValueError, pa.ArrowException) as error:  # pa.ArrowInvalid: 'Not an Arrow file', ...
            raise CacheError(f"stored corpus {self.folder}: {error}; {clear}") from error
        if self._hashes.shape != (self._len,) or self._rows.shape != (self._len,):
            raise CacheError(f"stored corpus {self.folder}: docid index does not hold {self._len} rows; {clear}")
        self._table: pa.Table | None = None
        self._cleanup: weakref.finalize | None = None

    @classmethod
    def build_cached(
        cls, rows: Callable[[], Iterable[Row]], sources: Sequence[Path], parser: str, cache_dir: str | Path | None
    ) -> Corpus:
        """The corpus of ``sources`` under ``<cache_dir>/corpora/<source key>/``, built from ``rows()`` if absent
        (``parser``: names the parsing rules, part of the key)."""
        root = cache_root(cache_dir)
        folder = root / "corpora" / source_key(sources, parser, root)
        if (corpus := cls._reuse(folder)) is not None:
            return corpus
        waiting = f"another process is storing the corpus at {folder}; waiting for it"
        with cache.cache_lock(folder.with_name(folder.name + ".lock"), waiting):
            if (corpus := cls._reuse(folder)) is not None:
                return corpus
            with staged_folder(folder, prefix="", replace=True) as staging:  # replaces an incomplete or broken one
                log.info("storing corpus %s -> %s", ", ".join(str(p) for p in sources), folder)
                _write(rows(), staging, [str(p) for p in sources])
        return cls(folder)

    @classmethod
    def _reuse(cls, folder: Path) -> Corpus | None:
        """The stored corpus at ``folder`` if complete and intact, else None (a broken one is logged)."""
        if not (folder / META_FILE).is_file():
            return None
        try:
            return cls(folder, level="auto")
        except (CacheError, DataError) as error:
            log.warning("%s: storing the corpus again", error)
            return None

    @classmethod
    def from_records(
        cls, records: Iterable[Passage | Mapping[str, Any]], cache_dir: str | Path | None = None
    ) -> Corpus:
        """A corpus of ``records`` (:class:`Passage` or ``{docid, text, [title]}``) under ``<cache_dir>/corpora/``
        (reused by equal content); without ``cache_dir``, in a temporary folder removed with the object."""
        if cache_dir is None:
            root = Path(tempfile.mkdtemp(prefix="mdr-corpus-"))
        else:
            root = cache_root(cache_dir) / "corpora"
            root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".records.tmp-", dir=root))
        try:
            folder = root / f"records-{_write(_record_rows(records), staging, ['records'])}"
            try:
                os.rename(staging, folder)
            except OSError:
                if not (folder / META_FILE).is_file():  # not a finished twin: a real failure
                    raise
        except BaseException:
            if cache_dir is None:  # bad records: no corpus object will own the temporary folder
                shutil.rmtree(root, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        corpus = cls(folder)
        if cache_dir is None:
            corpus._cleanup = weakref.finalize(corpus, shutil.rmtree, str(root), True)
        return corpus

    def __reduce__(self) -> tuple[type[Corpus], tuple[str]]:
        return (Corpus, (str(self.folder),))  # pickled as its folder: the other process maps the same files

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[str]:
        for batch in range(self._store.reader.num_record_batches):
            yield from self._store.reader.get_batch(batch).column(0).to_pylist()

    def __getitem__(self, docid: str) -> Passage:
        return self.passage(self.row(docid))

    def __contains__(self, docid: object) -> bool:
        try:
            return isinstance(docid, str) and self.row(docid) >= 0
        except KeyError:
            return False

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Corpus):
            return self.fingerprint() == other.fingerprint()
        return super().__eq__(other)

    def __repr__(self) -> str:
        return f"Corpus({self._len} passages at {self.folder})"

    def row(self, docid: str) -> int:
        """The row of ``docid`` (KeyError if the corpus has none)."""
        key = np.uint64(docid_key(docid))
        index = int(np.searchsorted(self._hashes, key, side="left"))
        while index < self._len and self._hashes[index] == key:
            row = int(self._rows[index])
            if self._store.field(row, 0) == docid:
                return row
            index += 1
        raise KeyError(docid)

    def _check(self, row: int) -> int:
        if not 0 <= row < self._len:
            raise IndexError(f"row {row} outside a corpus of {self._len} passages")
        return int(row)

    def docid(self, row: int) -> str:
        """The docid at ``row``."""
        return self._store.field(self._check(row), 0)

    def passage(self, row: int) -> Passage:
        """The passage at ``row``."""
        row = self._check(row)
        return Passage(self._store.field(row, 0), self._store.field(row, 2), self._store.field(row, 1))

    def texts(self, rows: Iterable[int], prefix: str = "") -> list[str]:
        """The strings the passages at ``rows`` are encoded as (see :func:`encoded_text`)."""
        field = self._store.field
        return [encoded_text(field(row, 1), field(row, 2), prefix) for row in map(self._check, rows)]

    def iter_batches(self, batch_size: int) -> Iterator[tuple[int, list[str], list[str]]]:
        """``(start row, docids, encoded texts without prefix)`` for consecutive rows, ``batch_size`` at a time."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if self._table is None:
            self._table = self._store.reader.read_all()  # zero-copy: the batches stay in the mapped file
        for start in range(0, self._len, batch_size):
            part = self._table.slice(start, batch_size)
            docids, titles, texts = (part.column(i).to_pylist() for i in range(3))
            yield start, docids, [encoded_text(t, x) for t, x in zip(titles, texts)]

    def fingerprint(self) -> str:
        """A content hash of every (docid, title, text) in row order, computed once when the corpus was stored."""
        return str(self._meta["fingerprint"])


def _record_rows(records: Iterable[Passage | Mapping[str, Any]]) -> Iterator[Row]:
    for number, record in enumerate(records, start=1):
        if isinstance(record, Passage):
            yield record.docid, record.title, record.text, 0, number
            continue
        docid, text, title = record.get("docid"), record.get("text"), record.get("title")
        if docid is None or text is None:
            raise DataError(f"record {number}: docid and text are required, got {dict(record)!r:.200}")
        yield str(docid), "" if title is None else str(title), str(text), 0, number
