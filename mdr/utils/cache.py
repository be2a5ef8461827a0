"""One way for every cache to name (content digests), verify (manifests), lock (``flock`` plus an owner file that
holds across nodes) and build (staging folders renamed into place) its entries (docs/caches.md)."""

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
from contextlib import contextmanager, nullcontext, suppress
from itertools import accumulate
from pathlib import Path
from typing import Any

from mdr.utils.io import atomic_write_json
from mdr.utils.logging import get_logger

log = get_logger(__name__)

HOST = socket.gethostname()
SAMPLE_BLOCKS, SAMPLE_BYTES = 16, 4096
FULL_CHECK_BYTES = 512 << 20  # at level auto: bytes of an entry's files hashed in full, smallest first (about 1 s)
VERIFY_ENV = "MDR_VERIFY_CACHES"
BUILD_MANIFEST = ".manifest.json"  # the manifest of a folder built into the cache (a model, a stage's encoder)
_HF_BLOB = re.compile(r"^[0-9a-f]{64}$")
_UNSUPPORTED = {errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK, errno.EINVAL}
_BUSY = {errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES}


class CacheError(ValueError):
    """A cache entry that is broken and cannot be rebuilt here; the message names the file and how to clear it."""


class SettingError(ValueError):
    """An environment variable of the caches holds a value it does not take."""


class LockBusy(Exception):
    """A lock asked for without waiting (``cache_lock(..., wait=False)``) is held by a live process."""


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of every byte of ``path`` (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sample_digest(path: str | os.PathLike[str]) -> str:
    """A digest of the size and of :data:`SAMPLE_BLOCKS` blocks spread evenly over ``path``, head and tail included."""
    size = os.path.getsize(path)
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        step = max(0, size - SAMPLE_BYTES) / (SAMPLE_BLOCKS - 1)
        for offset in sorted({int(i * step) for i in range(SAMPLE_BLOCKS)}):
            handle.seek(offset)
            digest.update(handle.read(SAMPLE_BYTES))
    return digest.hexdigest()[:32]


def content_digest(path: str | os.PathLike[str], memo_dir: str | os.PathLike[str] | None = None) -> str:
    """The SHA-256 of ``path`` (a Hugging Face ``blobs/<sha256>``: its name), memoised in ``memo_dir`` by file stat."""
    resolved = Path(path).resolve()
    if resolved.parent.name == "blobs" and _HF_BLOB.match(resolved.name):
        return resolved.name
    stat = resolved.stat()
    stamp = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]  # ctime: no utime can set it back
    memo = None
    if memo_dir is not None:
        memo = Path(memo_dir) / f"{hashlib.sha256(str(resolved).encode()).hexdigest()[:32]}.json"
        with suppress(OSError, ValueError, KeyError, AttributeError):  # no memo yet, or an unreadable one
            known = json.loads(memo.read_text(encoding="utf-8"))
            if known.get("path") == str(resolved) and known.get("stamp") == stamp:
                return str(known["sha256"])
    digest = file_sha256(resolved)
    if memo is not None:
        try:
            atomic_write_json(memo, {"path": str(resolved), "stamp": stamp, "sha256": digest})
        except OSError as error:  # a read-only cache still gives the right digest
            log.debug("cannot remember the digest of %s: %s", resolved, error)
    return digest


def _visible_files(base: Path) -> list[Path]:
    """The files under ``base`` in path order, those with a hidden part left out."""
    files = sorted(p for p in base.rglob("*") if p.is_file())
    return [p for p in files if not any(part.startswith(".") for part in p.relative_to(base).parts)]


def folder_digest(root: str | os.PathLike[str], memo_dir: str | os.PathLike[str] | None = None) -> str:
    """A digest of every non-hidden file under ``root`` (relative name and content)."""
    base = Path(root)
    digest = hashlib.sha256()
    for file in _visible_files(base):
        digest.update(f"{file.relative_to(base).as_posix()}\t{content_digest(file, memo_dir)}\n".encode())
    return digest.hexdigest()[:32]


def digests_dir(cache_dir: str | os.PathLike[str]) -> Path:
    """``<cache_dir>/digests``: where :func:`content_digest` remembers what it hashed."""
    return Path(cache_dir) / "digests"


def verify_level(default: str) -> str:
    """``default``, or ``full`` when ``MDR_VERIFY_CACHES=full`` (else :class:`SettingError` unless unset / auto)."""
    value = os.environ.get(VERIFY_ENV, "").strip().lower() or "auto"
    if value not in ("auto", "full"):
        raise SettingError(
            f"{VERIFY_ENV}={os.environ[VERIFY_ENV]!r}: expected auto (the default: every byte of an entry's files up "
            f"to {FULL_CHECK_BYTES >> 20} MiB, a sampled checksum of larger ones) or full (every byte of every file)"
        )
    return "full" if value == "full" else default


def settings_problems() -> list[str]:
    """What is wrong with ``MDR_VERIFY_CACHES``, ``MDR_CACHE_LOCK`` and ``MDR_LOCK_STALE_SECONDS``; empty: nothing."""
    problems = []
    for check in (lambda: verify_level("auto"), lock_mode, stale_seconds):
        try:
            check()
        except (CacheError, SettingError) as error:
            problems.append(str(error))
    return problems


def manifest(root: str | os.PathLike[str], files: Iterable[str], **extra: Any) -> dict[str, Any]:
    """Per file (relative to ``root``) its size, sampled and full digest, plus ``extra`` (record counts, ...)."""
    base = Path(root)
    return {
        "files": {
            n: {"size": (base / n).stat().st_size, "sample": sample_digest(base / n), "sha256": file_sha256(base / n)}
            for n in sorted(files)
        },
        **extra,
    }


def _hashed_in_full(files: Mapping[str, Any], level: str) -> set[str]:
    """The files read in full at ``level``; at ``auto`` the smallest while they add up to :data:`FULL_CHECK_BYTES`."""
    if level != "auto":
        return set(files) if level == "full" else set()
    sizes = {name: entry.get("size") if isinstance(entry, Mapping) else 0 for name, entry in files.items()}
    sizes = {name: size if isinstance(size, int) else 0 for name, size in sizes.items()}
    order = sorted(files, key=lambda name: (sizes[name], name))  # sizes ascend: the totals kept are a prefix
    return {name for name, total in zip(order, accumulate(sizes[n] for n in order)) if total <= FULL_CHECK_BYTES}


_told_sampled: set[tuple[str, int]] = set()


def check_manifest(root: str | os.PathLike[str], recorded: Mapping[str, Any] | None, level: str) -> str | None:
    """Why the files under ``root`` differ from ``recorded`` (a :func:`manifest`) at ``level``, or None."""
    if not isinstance(recorded, Mapping) or not isinstance(recorded.get("files"), Mapping):
        return "it records no file sizes and checksums (written by an older mdr)"
    in_full = _hashed_in_full(recorded["files"], level)
    for name, expected in sorted(recorded["files"].items()):
        path = Path(root) / name
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
                if (str(path), size) not in _told_sampled:
                    _told_sampled.add((str(path), size))
                    log.info(
                        f"{path} ({size >> 20} MiB) is checked by its size and a sampled checksum only: over the "
                        f"{FULL_CHECK_BYTES >> 20} MiB an entry's check reads in full ({VERIFY_ENV}=full reads "
                        "every byte)"
                    )
                if sample_digest(path) != expected.get("sample"):
                    return f"{path} does not hold the bytes that were written (sampled checksum differs)"
        except OSError as error:
            return f"{path} cannot be read ({error})"
    return None


def _read_manifest(path: Path, missing: str) -> tuple[dict[str, Any] | None, str | None]:
    """(the manifest at ``path``, None) or (None, why it cannot be read)."""
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except FileNotFoundError:
        return None, f"{path} is missing ({missing} was cut short)"
    except (OSError, ValueError) as error:
        return None, f"{path} cannot be read ({error})"


def check_folder(root: str | os.PathLike[str], level: str = "auto") -> str | None:
    """Why the folder ``root`` differs from its :data:`BUILD_MANIFEST`, or None when it agrees."""
    recorded, problem = _read_manifest(Path(root) / BUILD_MANIFEST, "built by an older mdr, or the build")
    return problem or check_manifest(root, recorded, verify_level(level))


def write_folder_manifest(root: str | os.PathLike[str]) -> Path:
    """Write :data:`BUILD_MANIFEST` for every non-hidden file under ``root``."""
    base = Path(root)
    files = [p.relative_to(base).as_posix() for p in _visible_files(base)]
    return atomic_write_json(base / BUILD_MANIFEST, manifest(base, files))


def _sidecar(path: str | os.PathLike[str]) -> Path:
    return Path(path).with_name(Path(path).name + ".manifest.json")


def write_file_manifest(path: str | os.PathLike[str], **extra: Any) -> Path:
    """Write ``<path>.manifest.json`` for the single file ``path`` (after the file itself)."""
    return atomic_write_json(_sidecar(path), manifest(Path(path).parent, [Path(path).name], **extra))


def check_file_manifest(path: str | os.PathLike[str], level: str) -> tuple[str | None, dict[str, Any]]:
    """(why ``path`` differs from its ``.manifest.json`` or None, the manifest's contents)."""
    recorded, problem = _read_manifest(_sidecar(path), "written by an older mdr, or the write")
    if problem is not None:
        return problem, {}
    return check_manifest(Path(path).parent, recorded, verify_level(level)), recorded


def staging_name(name: str) -> str:
    """``<name>.tmp-<host>-<pid>``: where this process builds ``name`` before renaming it into place."""
    return f"{name}.tmp-{HOST}-{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        pass
    return True


def builder_gone(path: str | os.PathLike[str]) -> bool:
    """Whether the process that made staging folder ``path`` is gone (another host's: only under owner-file locks)."""
    match = re.search(r"\.tmp-(?:(.+)-)?(\d+)$", Path(path).name)  # no host: an older mdr's '.tmp-<pid>'
    if match is None:  # an older mdr's mkdtemp name
        return True
    if match.group(1) not in (None, HOST):
        return lock_mode() == "auto"
    return not _pid_alive(int(match.group(2)))


def remove_stale_builds(parent: str | os.PathLike[str], pattern: str) -> int:
    """Remove and count the builds under ``parent`` matching ``pattern`` whose builder is gone (under the lock)."""
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


@contextmanager
def staged_folder(target: Path, prefix: str = ".", replace: bool = False) -> Iterator[Path]:
    """A fresh ``<prefix><target>.tmp-<host>-<pid>`` for the block to fill, then renamed to ``target`` (``replace``: an
    existing one is deleted first; else another process's is kept); never outlives the block."""
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_builds(target.parent, f"{prefix}{target.name}.tmp-*")
    staging = target.parent / f"{prefix}{staging_name(target.name)}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        if replace:
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(staging, target)
        except OSError:
            if replace or not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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


_warned_no_flock: set[str] = set()


@contextmanager
def flocked(handle: Any, wait: bool = True, waiting: str | None = None) -> Iterator[OSError | None]:
    """Hold a ``flock`` on ``handle`` (held: wait, or :class:`LockBusy`); yield None, or flock's error (unlocked)."""
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in _BUSY:
                raise
            if not wait:
                raise LockBusy(handle.name) from None
            if waiting:
                log.info("%s", waiting)
            fcntl.flock(handle, fcntl.LOCK_EX)
    except OSError as error:
        yield error
        return
    try:
        yield None
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)


def _owner(path: Path) -> tuple[dict[str, Any], tuple[int, int] | None]:
    """The owner file's contents and (inode, mtime); ``({}, None)`` when there is none."""
    try:
        stat = path.stat()
        owner = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}, None
    except (OSError, ValueError):
        try:
            owner, stat = {}, path.stat()
        except OSError:
            return {}, None
    return (owner if isinstance(owner, dict) else {}), (stat.st_ino, stat.st_mtime_ns)


def _create_owner(path: Path, token: str) -> tuple[bool, int]:
    """Hard-link a new owner file to ``path``: (whether this process now holds it, the file system's time in ns)."""
    tmp = path.with_name(f"{path.name}.{token}")
    tmp.write_text(json.dumps({"host": HOST, "pid": os.getpid(), "token": token, "since": time.time()}))
    try:
        now_ns = tmp.stat().st_mtime_ns
        os.link(tmp, path)
        return True, now_ns
    except FileExistsError:
        return False, now_ns
    except OSError as error:
        raise CacheError(
            f"cannot lock {path}: this file system supports neither flock nor hard links ({error}); put "
            "paths.cache_dir on a file system that does, or set MDR_CACHE_LOCK=none and run one job at a time"
        ) from error
    finally:
        tmp.unlink(missing_ok=True)


def _take_over(path: Path, seen: tuple[int, int], token: str) -> None:
    """Remove the owner file ``path`` if it is still the one ``seen`` (inode, mtime)."""
    grave = path.with_name(f"{path.name}.stale-{token}")
    try:
        os.rename(path, grave)
    except FileNotFoundError:
        return
    stat = grave.stat()
    if (stat.st_ino, stat.st_mtime_ns) != seen:  # a new holder came in between: give it back its file
        with suppress(FileExistsError):
            os.link(grave, path)
    grave.unlink(missing_ok=True)


@contextmanager
def _owner_file(path: Path, waiting: str | None, wait: bool) -> Iterator[None]:
    """Hold owner file ``path``, with a heartbeat; take it from a dead pid or one silent ``MDR_LOCK_STALE_SECONDS``."""
    token, limit = uuid.uuid4().hex, stale_seconds()
    observed: tuple[int, int] | None = None
    since, delay, told = time.monotonic(), 0.05, False
    while True:
        created, now_ns = _create_owner(path, token)
        if created:
            break
        owner, seen = _owner(path)
        if seen is None:
            continue  # released just now
        if seen != observed:  # a heartbeat (or a new holder): start the clock again
            observed, since = seen, time.monotonic()
        host, pid = owner.get("host"), owner.get("pid")
        if host == HOST and isinstance(pid, int) and not _pid_alive(pid):
            log.warning("%s: its holder (pid %s on this host) is gone; taking it over", path, pid)
            _take_over(path, seen, token)
            continue
        silent = max(time.monotonic() - since, (now_ns - seen[1]) / 1e9)
        if silent > limit:
            who = f"{owner.get('host', 'an unknown host')} pid {owner.get('pid', '?')}"
            log.warning(
                f"{path}: held by {who} with no heartbeat for {silent:.0f} s (MDR_LOCK_STALE_SECONDS={limit:g}); "
                "taking it over"
            )
            _take_over(path, seen, token)
            continue
        if not wait:
            raise LockBusy(str(path))
        if not told:
            told = True
            log.info("%s (lock held by %s pid %s)", waiting or f"waiting for {path}", host, pid)
        time.sleep(delay)
        delay = min(2.0, delay * 2)
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(limit / 10):
            with suppress(OSError):
                os.utime(path)

    beat = threading.Thread(target=heartbeat, daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        if _owner(path)[0].get("token") == token:
            path.unlink(missing_ok=True)


@contextmanager
def cache_lock(path: str | os.PathLike[str], waiting: str | None = None, wait: bool = True) -> Iterator[None]:
    """Hold the lock ``path``, one process on any node: ``flock`` plus owner file ``<path>.owner`` (``MDR_CACHE_LOCK``
    says which); ``waiting`` is logged while another holds it, or with ``wait=False`` :class:`LockBusy` is raised."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    mode = lock_mode()
    if mode == "none":
        yield
        return
    with target.open("a") as handle, flocked(handle, wait, waiting) as refused:
        if refused is not None:
            if refused.errno not in _UNSUPPORTED:
                raise refused
            if str(target.parent) not in _warned_no_flock:
                _warned_no_flock.add(str(target.parent))
                log.warning(
                    f"{target.parent}: this file system has no flock ({os.strerror(refused.errno)}); locking with "
                    "owner files only (host + pid + heartbeat)"
                )
            if mode == "flock":
                raise CacheError(
                    f"cannot lock {target}: MDR_CACHE_LOCK=flock but this file system has no flock; "
                    "unset MDR_CACHE_LOCK (owner-file locks) or mount it with flock"
                )
        owner = target.with_name(target.name + ".owner")
        with nullcontext() if mode == "flock" else _owner_file(owner, None if refused is None else waiting, wait):
            yield
