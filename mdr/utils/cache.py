"""One way for every cache to name, verify and lock its entries (docs/caches.md).

* **Content digests** (:func:`content_digest`): the SHA-256 of a file's bytes, remembered under
  ``<cache_dir>/digests/`` by (path, size, mtime, ctime, inode), so a file is read in full once and then only stat'ed
  while it is unchanged. Files in the Hugging Face cache are content-addressed blobs: their name is the digest.
* **Manifests** (:func:`manifest` / :func:`check_manifest`): sizes, a sampled digest and the full SHA-256 of
  the files an entry holds, written when the entry is built and checked when it is opened, at the level the
  caller can afford (``size``; ``auto``: every byte of the entry's files up to :data:`FULL_CHECK_BYTES`, a
  sampled checksum of the larger ones, logged; ``full``). ``MDR_VERIFY_CACHES=full`` makes every check full.
* **Locks** (:func:`cache_lock`): ``flock`` where the file system has it, *plus* an owner file created
  atomically (hard link) that names the holder's host and pid and is kept fresh by a heartbeat, so that locks
  also hold across nodes where ``flock`` is node-local (BeeGFS, NFS ``nolock``) or missing (Lustre without
  ``-o flock``: ``ENOSYS``). A holder that died is detected (same host: its pid is gone; another host: its
  heartbeat stopped for ``MDR_LOCK_STALE_SECONDS``, :func:`heartbeat_age`) and its lock taken over, by a waiter
  and by a caller that does not wait alike.
* **Staging folders** (:func:`staging_name` / :func:`remove_stale_builds`): a build writes into
  ``<name>.tmp-<host>-<pid>`` and renames it into place; the next builder removes only the leftovers of
  processes that are gone, never another live build.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mdr.utils.io import atomic_write_json
from mdr.utils.logging import get_logger

log = get_logger(__name__)

HOST = socket.gethostname()
LEVELS = ("size", "auto", "full")
SAMPLE_BLOCKS, SAMPLE_BYTES = 16, 4096
FULL_CHECK_BYTES = 512 << 20
"""At level ``auto``, how many bytes of an entry's files are hashed in full (smallest files first): about a second
(SHA-256 ran at ~475 MiB/s on a loaded 2-core Xeon with SHA-NI). A larger file gets its size and sampled checksum
checked, and the log says so."""
VERIFY_ENV = "MDR_VERIFY_CACHES"
VERIFY_SETTINGS = ("auto", "full")
_HF_BLOB = re.compile(r"^[0-9a-f]{64}$")
_UNSUPPORTED = {errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK, errno.EINVAL}


class CacheError(ValueError):
    """A cache entry that is broken and cannot be rebuilt here; the message names the file and how to clear it."""


class SettingError(ValueError):
    """An environment variable of the caches holds a value it does not take (never read as a broken entry)."""


# ---- digests --------------------------------------------------------------------------------------------------


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of every byte of ``path`` (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sample_digest(path: str | os.PathLike[str]) -> str:
    """A digest of the size and of :data:`SAMPLE_BLOCKS` blocks spread evenly over ``path`` (head and tail
    included): 64 kB read whatever the size, so a cut or a garbled header or tail is seen at once."""
    size = os.path.getsize(path)
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        step = max(0, size - SAMPLE_BYTES) / (SAMPLE_BLOCKS - 1)
        for offset in sorted({int(i * step) for i in range(SAMPLE_BLOCKS)}):
            handle.seek(offset)
            digest.update(handle.read(SAMPLE_BYTES))
    return digest.hexdigest()[:32]


def content_digest(path: str | os.PathLike[str], memo_dir: str | os.PathLike[str] | None = None) -> str:
    """The SHA-256 of ``path``'s bytes; with ``memo_dir``, remembered there while size, mtime, ctime and inode hold
    (any write changes ctime, which ``touch -d`` / ``os.utime`` cannot set back).

    A Hugging Face cache blob (``.../blobs/<sha256>``, what its snapshot links resolve to) is its own digest.
    """
    resolved = Path(path).resolve()
    if resolved.parent.name == "blobs" and _HF_BLOB.match(resolved.name):
        return resolved.name
    stat = resolved.stat()
    stamp = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]  # ctime: no utime can set it back
    memo = None
    if memo_dir is not None:
        memo = Path(memo_dir) / f"{hashlib.sha256(str(resolved).encode()).hexdigest()[:32]}.json"
        try:
            known = json.loads(memo.read_text(encoding="utf-8"))
            if known.get("path") == str(resolved) and known.get("stamp") == stamp:
                return str(known["sha256"])
        except (OSError, ValueError, KeyError, AttributeError):
            pass  # no memo yet, or an unreadable one: hash the file again
    digest = file_sha256(resolved)
    if memo is not None:
        try:
            atomic_write_json(memo, {"path": str(resolved), "stamp": stamp, "sha256": digest})
        except OSError as error:  # a read-only cache still gives the right digest
            log.debug("cannot remember the digest of %s: %s", resolved, error)
    return digest


def folder_digest(root: str | os.PathLike[str], memo_dir: str | os.PathLike[str] | None = None) -> str:
    """A digest of every file under ``root`` (relative name and content), hidden files left out."""
    base = Path(root)
    digest = hashlib.sha256()
    for file in sorted(p for p in base.rglob("*") if p.is_file()):
        relative = file.relative_to(base)
        if any(part.startswith(".") for part in relative.parts):
            continue
        digest.update(f"{relative.as_posix()}\t{content_digest(file, memo_dir)}\n".encode())
    return digest.hexdigest()[:32]


def digests_dir(cache_dir: str | os.PathLike[str]) -> Path:
    """``<cache_dir>/digests``: where :func:`content_digest` remembers what it hashed."""
    return Path(cache_dir) / "digests"


# ---- manifests ------------------------------------------------------------------------------------------------


def verify_setting() -> str:
    """``MDR_VERIFY_CACHES``: ``auto`` (unset or empty too) or ``full``.

    Raises:
        SettingError: any other value, naming the variable and the values it takes.
    """
    value = os.environ.get(VERIFY_ENV, "").strip().lower() or "auto"
    if value not in VERIFY_SETTINGS:
        raise SettingError(
            f"{VERIFY_ENV}={os.environ[VERIFY_ENV]!r}: expected auto (the default: every byte of an entry's files up "
            f"to {FULL_CHECK_BYTES >> 20} MiB, a sampled checksum of larger ones) or full (every byte of every file)"
        )
    return value


def verify_level(default: str) -> str:
    """``default``, or ``full`` when ``MDR_VERIFY_CACHES=full`` (an unknown value raises :class:`SettingError`)."""
    return "full" if verify_setting() == "full" else default


def settings_problems() -> list[str]:
    """What is wrong with the cache settings of the environment (``MDR_VERIFY_CACHES``, ``MDR_CACHE_LOCK``,
    ``MDR_LOCK_STALE_SECONDS``), so a run refuses them before any work; empty when nothing is."""
    problems = []
    for check in (verify_setting, lock_mode, stale_seconds):
        try:
            check()
        except (CacheError, SettingError) as error:
            problems.append(str(error))
    return problems


def manifest(root: str | os.PathLike[str], files: Iterable[str], **extra: Any) -> dict[str, Any]:
    """What an entry needs to be checked later: per file (relative to ``root``) its size, sampled and full
    digest, plus ``extra`` (record counts, ...)."""
    base = Path(root)
    return {
        "files": {
            name: {
                "size": (base / name).stat().st_size,
                "sample": sample_digest(base / name),
                "sha256": file_sha256(base / name),
            }
            for name in sorted(files)
        },
        **extra,
    }


_told_sampled: set[tuple[str, int]] = set()


def _hashed_in_full(files: Mapping[str, Any], level: str) -> set[str]:
    """The names of ``files`` (a manifest's) whose every byte is checked at ``level``: all at ``full``, none at
    ``size``; at ``auto`` the smallest first while their sizes add up to at most :data:`FULL_CHECK_BYTES`."""
    if level != "auto":
        return set(files) if level == "full" else set()
    chosen, total = set(), 0
    for name in sorted(files, key=lambda name: (_recorded_size(files[name]), name)):
        total += _recorded_size(files[name])
        if total > FULL_CHECK_BYTES:
            break
        chosen.add(name)
    return chosen


def _recorded_size(entry: Any) -> int:
    size = entry.get("size") if isinstance(entry, Mapping) else None
    return size if isinstance(size, int) else 0


def _tell_sampled(path: Path, size: int) -> None:
    """Log once per process that ``path`` is checked by its sampled checksum only."""
    if (str(path), size) in _told_sampled:
        return
    _told_sampled.add((str(path), size))
    log.info(
        "%s (%d MiB) is checked by its size and a sampled checksum only: over the %d MiB an entry's check reads in "
        "full (%s=full reads every byte)",
        path,
        size >> 20,
        FULL_CHECK_BYTES >> 20,
        VERIFY_ENV,
    )


def check_manifest(root: str | os.PathLike[str], recorded: Mapping[str, Any] | None, level: str) -> str | None:
    """Why the files under ``root`` differ from ``recorded`` (a :func:`manifest`), or None when they agree.

    Args:
        level: ``size`` (a stat per file), ``auto`` (every byte of the files up to :data:`FULL_CHECK_BYTES`,
            smallest first, and a sampled checksum, 64 kB read, of each larger one) or ``full`` (every byte).
    """
    if level not in LEVELS:
        raise ValueError(f"verification level must be one of {LEVELS}, got {level!r}")
    if not isinstance(recorded, Mapping) or not isinstance(recorded.get("files"), Mapping):
        return "it records no file sizes and checksums (written by an older mdr)"
    base = Path(root)
    in_full = _hashed_in_full(recorded["files"], level)
    for name, expected in sorted(recorded["files"].items()):
        path = base / name
        try:
            size = path.stat().st_size
        except OSError:
            return f"{path} is missing"
        if size != expected.get("size"):
            return f"{path} has {size} bytes, {expected.get('size')} were written"
        try:
            if name in in_full:
                if file_sha256(path) != expected.get("sha256"):
                    return f"{path} does not hold the bytes that were written (SHA-256 differs)"
            elif level == "auto":
                _tell_sampled(path, size)
                if sample_digest(path) != expected.get("sample"):
                    return f"{path} does not hold the bytes that were written (sampled checksum differs)"
        except OSError as error:
            return f"{path} cannot be read ({error})"
    return None


BUILD_MANIFEST = ".manifest.json"
"""In a folder built into the cache (tiny model, me5_small, a cached stage's encoder): the manifest of its files."""


def check_folder(root: str | os.PathLike[str], level: str = "auto") -> str | None:
    """Why the folder ``root`` differs from its :data:`BUILD_MANIFEST`, or None when it agrees."""
    path = Path(root) / BUILD_MANIFEST
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{path} is missing (built by an older mdr, or the build was cut short)"
    except (OSError, ValueError) as error:
        return f"{path} cannot be read ({error})"
    return check_manifest(root, recorded, verify_level(level))


def write_folder_manifest(root: str | os.PathLike[str]) -> Path:
    """Write :data:`BUILD_MANIFEST` for every (non-hidden) file under ``root``."""
    base = Path(root)
    files = [
        p.relative_to(base).as_posix()
        for p in sorted(base.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(base).parts)
    ]
    return atomic_write_json(base / BUILD_MANIFEST, manifest(base, files))


def write_file_manifest(path: str | os.PathLike[str], **extra: Any) -> Path:
    """Write ``<path>.manifest.json`` for the single file ``path`` (after the file itself)."""
    target = Path(path)
    sidecar = target.with_name(target.name + ".manifest.json")
    atomic_write_json(sidecar, manifest(target.parent, [target.name], **extra))
    return sidecar


def check_file_manifest(path: str | os.PathLike[str], level: str) -> tuple[str | None, dict[str, Any]]:
    """(why ``path`` differs from its ``.manifest.json`` or None, the manifest's contents)."""
    target = Path(path)
    sidecar = target.with_name(target.name + ".manifest.json")
    try:
        recorded = json.loads(sidecar.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{sidecar} is missing (written by an older mdr, or the write was cut short)", {}
    except (OSError, ValueError) as error:
        return f"{sidecar} cannot be read ({error})", {}
    return check_manifest(target.parent, recorded, verify_level(level)), recorded


# ---- staging folders ------------------------------------------------------------------------------------------


def staging_name(name: str) -> str:
    """``<name>.tmp-<host>-<pid>``: where this process builds ``name`` before renaming it into place."""
    return f"{name}.tmp-{HOST}-{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def builder_gone(path: str | os.PathLike[str]) -> bool:
    """Whether the process that made staging folder ``path`` (:func:`staging_name`) is gone.

    A process of this host is gone when its pid is. Another host's build counts as gone only under owner-file
    locks (``MDR_CACHE_LOCK=auto``, the default), which hold across nodes: the caller holds the entry's
    :func:`cache_lock`, so no other builder can be at work. Under ``flock`` or ``none`` (node-local at worst)
    another node's build is never touched.
    """
    match = re.search(r"\.tmp-(.+)-(\d+)$", Path(path).name)
    if match is None:  # an older mdr's '<name>.tmp-<pid>' or mkdtemp name: this host's if the pid says so
        legacy = re.search(r"\.tmp-(\d+)$", Path(path).name)
        return legacy is None or not _pid_alive(int(legacy.group(1)))
    host, pid = match.group(1), int(match.group(2))
    if host != HOST:
        return lock_mode() == "auto"
    return not _pid_alive(pid)


def remove_stale_builds(parent: str | os.PathLike[str], pattern: str) -> int:
    """Remove the staging folders/files under ``parent`` matching ``pattern`` whose builder is gone; count them.

    Call it holding the entry's :func:`cache_lock`.
    """
    removed = 0
    for stale in Path(parent).glob(pattern):
        if stale.name.endswith(f"-{HOST}-{os.getpid()}") or not builder_gone(stale):
            continue
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
        removed += 1
        log.info("removed %s, left by a build that was killed", stale)
    return removed


# ---- locks ----------------------------------------------------------------------------------------------------

_warned_no_flock: set[str] = set()


def lock_mode() -> str:
    """``MDR_CACHE_LOCK``: ``auto`` (flock where supported + owner file), ``flock`` (flock only) or ``none``."""
    mode = os.environ.get("MDR_CACHE_LOCK", "auto").strip().lower() or "auto"
    if mode not in ("auto", "flock", "none"):
        raise CacheError(f"MDR_CACHE_LOCK={mode!r}: expected auto, flock or none")
    return mode


def stale_seconds() -> float:
    """``MDR_LOCK_STALE_SECONDS`` (default 300): how long another host's lock may go without a heartbeat."""
    value = os.environ.get("MDR_LOCK_STALE_SECONDS", "300")
    try:
        seconds = float(value)
    except ValueError as error:
        raise CacheError(f"MDR_LOCK_STALE_SECONDS={value!r}: expected a number of seconds") from error
    if seconds <= 0:
        raise CacheError(f"MDR_LOCK_STALE_SECONDS={value!r}: must be > 0")
    return seconds


def heartbeat_age(mtime_ns: int, now_ns: int, unchanged_since: float) -> float:
    """Seconds since a lock holder's last heartbeat: the longer of how long this process has seen its owner file
    unchanged (since ``unchanged_since``, :func:`time.monotonic`) and the file's age by the file system's clock
    (``now_ns``: the mtime of a file just written beside it), so a lock whose heartbeat stopped long ago is known
    stale at first sight, without waiting (``run.stages_only``)."""
    return max(time.monotonic() - unchanged_since, (now_ns - mtime_ns) / 1e9)


class LockBusy(Exception):
    """A lock asked for without waiting (``cache_lock(..., wait=False)``) is held by a live process."""


def _flock(handle: Any, path: Path, waiting: str | None, wait: bool = True) -> bool:
    """Take ``flock`` on ``handle``; False where the file system does not support it.

    Raises:
        LockBusy: ``wait`` is false and another process holds it.
    """
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise LockBusy(str(path)) from None
            if waiting:
                log.info("%s", waiting)
            fcntl.flock(handle, fcntl.LOCK_EX)
    except OSError as error:
        if error.errno not in _UNSUPPORTED:
            raise
        if str(path.parent) not in _warned_no_flock:
            _warned_no_flock.add(str(path.parent))
            log.warning(
                "%s: this file system has no flock (%s); locking with owner files only (host + pid + heartbeat)",
                path.parent,
                os.strerror(error.errno),
            )
        return False
    return True


class _OwnerFile:
    """``<lock>.owner``: created atomically by a hard link, holding host, pid and a token; touched by a
    heartbeat while held."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _create(self) -> tuple[bool, int]:
        """(whether this process now holds the lock, the file system's time now in ns: the mtime of the file it
        has just written there)."""
        tmp = self.path.with_name(f"{self.path.name}.{self.token}")
        tmp.write_text(json.dumps({"host": HOST, "pid": os.getpid(), "token": self.token, "since": time.time()}))
        try:
            now_ns = tmp.stat().st_mtime_ns
            os.link(tmp, self.path)
            return True, now_ns
        except FileExistsError:
            return False, now_ns
        except OSError as error:
            raise CacheError(
                f"cannot lock {self.path}: this file system supports neither flock nor hard links ({error}); put "
                "paths.cache_dir on a file system that does, or set MDR_CACHE_LOCK=none and run one job at a time"
            ) from error
        finally:
            tmp.unlink(missing_ok=True)

    def _holder(self) -> tuple[dict[str, Any], tuple[int, int] | None]:
        try:
            stat = self.path.stat()
            owner = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}, None
        except (OSError, ValueError):
            owner = {}
            try:
                stat = self.path.stat()
            except OSError:
                return {}, None
        return (owner if isinstance(owner, dict) else {}), (stat.st_ino, stat.st_mtime_ns)

    def _take_over(self, seen: tuple[int, int]) -> None:
        grave = self.path.with_name(f"{self.path.name}.stale-{self.token}")
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return
        stat = grave.stat()
        if (stat.st_ino, stat.st_mtime_ns) != seen:  # a new holder came in between: give it back its file
            try:
                os.link(grave, self.path)
            except FileExistsError:
                pass
        grave.unlink(missing_ok=True)

    def acquire(self, waiting: str | None, wait: bool = True) -> None:
        limit = stale_seconds()
        observed: tuple[int, int] | None = None
        since = time.monotonic()
        delay, told = 0.05, False
        while True:
            created, now_ns = self._create()
            if created:
                break
            owner, seen = self._holder()
            if seen is None:
                continue  # released just now
            if seen != observed:  # a heartbeat (or a new holder): start the clock again
                observed, since = seen, time.monotonic()
            same_host = owner.get("host") == HOST and isinstance(owner.get("pid"), int)
            if same_host and not _pid_alive(int(owner["pid"])):
                log.warning("%s: its holder (pid %s on this host) is gone; taking it over", self.path, owner["pid"])
                self._take_over(seen)
                continue
            silent = heartbeat_age(seen[1], now_ns, since)
            if silent > limit:
                log.warning(
                    "%s: held by %s pid %s with no heartbeat for %.0f s (MDR_LOCK_STALE_SECONDS=%g); taking it over",
                    self.path,
                    owner.get("host", "an unknown host"),
                    owner.get("pid", "?"),
                    silent,
                    limit,
                )
                self._take_over(seen)
                continue
            if not wait:
                raise LockBusy(str(self.path))
            if not told:
                told = True
                message = waiting or f"waiting for {self.path}"
                log.info("%s (lock held by %s pid %s)", message, owner.get("host"), owner.get("pid"))
            time.sleep(delay)
            delay = min(2.0, delay * 2)
        self._beat = threading.Thread(target=self._heartbeat, args=(limit / 10,), daemon=True)
        self._beat.start()

    def _heartbeat(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        owner, _ = self._holder()
        if owner.get("token") == self.token:
            self.path.unlink(missing_ok=True)


@contextmanager
def cache_lock(path: str | os.PathLike[str], waiting: str | None = None, wait: bool = True) -> Iterator[None]:
    """Hold the lock ``path`` for the block: one process in the block at a time, on any node.

    ``flock`` on ``path`` (where supported) keeps the waiting cheap on one node; the owner file
    ``<path>.owner`` (host, pid, heartbeat) makes the lock hold where ``flock`` is node-local or missing.
    ``MDR_CACHE_LOCK=flock`` uses ``flock`` alone (a file system where it is cluster-wide), ``none`` no lock.

    Args:
        waiting: logged when the lock is held by someone else and this process waits.
        wait: false: raise :class:`LockBusy` at once where a live process holds the lock.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    mode = lock_mode()
    if mode == "none":
        yield
        return
    with target.open("a") as handle:
        flocked = _flock(handle, target, waiting, wait)
        if mode == "flock" and not flocked:
            raise CacheError(
                f"cannot lock {target}: MDR_CACHE_LOCK=flock but this file system has no flock; "
                "unset MDR_CACHE_LOCK (owner-file locks) or mount it with flock"
            )
        try:
            if mode == "flock":
                yield
                return
            owner = _OwnerFile(target.with_name(target.name + ".owner"))
            owner.acquire(waiting if not flocked else None, wait)
            try:
                yield
            finally:
                owner.release()
        finally:
            if flocked:
                fcntl.flock(handle, fcntl.LOCK_UN)
