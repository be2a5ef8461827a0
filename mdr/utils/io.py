"""Atomic writes: a reader never sees a half-written results file, even after a kill."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_NO_SPACE_TEXTS = ("No space left on device", "Disk quota exceeded")  # safetensors' Rust writer: in the message


class NoSpaceError(OSError):
    """A write that failed for lack of space, naming the file, the free bytes and the writer's error."""


def lack_of_space(error: BaseException | None) -> bool:
    """Whether ``error``, or one it was raised from, says the file system is full (or the quota used up)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if (isinstance(error, OSError) and error.errno in NO_SPACE) or any(t in str(error) for t in _NO_SPACE_TEXTS):
            return True
        error = error.__cause__ or error.__context__
    return False


def no_space_error(path: str | os.PathLike[str], error: BaseException) -> NoSpaceError:
    """A :class:`NoSpaceError` for ``path``, whose write raised ``error``, saying the free bytes on its file system."""
    place = Path(path)
    while not place.exists() and place != place.parent:  # its nearest existing parent
        place = place.parent
    try:
        where = f"{shutil.disk_usage(place).free} bytes free on its file system"
    except OSError:
        where = "its file system's free space unknown"
    message = f"cannot write {path}: no space left on device ({where}; {type(error).__name__}: {error})"
    return NoSpaceError(errno.ENOSPC, message)


@contextmanager
def reporting_no_space(path: str | os.PathLike[str]) -> Iterator[None]:
    """Re-raise an error of the block that says the disk is full as a :class:`NoSpaceError` naming ``path``."""
    try:
        yield
    except Exception as error:
        if isinstance(error, NoSpaceError) or not lack_of_space(error):
            raise
        raise no_space_error(path, error) from error


class _WriteRecorder:
    """A binary file keeping its first ``OSError`` on write or flush (``torch.save`` hides it in a ``RuntimeError``)."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle
        self.error: OSError | None = None

    def _recorded(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self._handle, method)(*args)
        except OSError as error:
            self.error = self.error or error
            raise

    def write(self, data: Any) -> int:
        return self._recorded("write", data)

    def flush(self) -> None:
        self._recorded("flush")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


def _default_mode() -> int:
    """The mode a plain ``open`` would give a new file (0o666 less the umask); mkstemp's is 0o600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def share_like_new_files(root: str | os.PathLike[str]) -> None:
    """Give ``root`` and all under it the modes ``mkdir`` / ``open`` would (not mkdtemp's 0o700, safetensors' 0o600)."""
    file_mode = _default_mode()
    folder_mode = file_mode | ((file_mode & 0o444) >> 2)  # x wherever r: 0o644 -> 0o755
    top = Path(root)
    for path in [top, *top.rglob("*")]:
        if not path.is_symlink():
            os.chmod(path, folder_mode if path.is_dir() else file_mode)


def writable(folder: str | os.PathLike[str]) -> bool:
    """Whether this process may create, replace and remove files in ``folder``."""
    return os.access(folder, os.W_OK | os.X_OK)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_write_with`)."""
    return atomic_write_with(path, lambda handle: handle.write(text.encode("utf-8")))


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_write_with`)."""
    return atomic_write_with(path, lambda handle: handle.write(data))


def atomic_write_json(path: str | os.PathLike[str], payload: Any) -> Path:
    """Write ``payload`` as indented JSON, atomically."""
    return atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def atomic_write_lines(path: str | os.PathLike[str], lines: Iterable[str]) -> Path:
    """Write ``lines`` (without newlines) one per line, atomically."""
    return atomic_write_text(path, "".join(f"{line}\n" for line in lines))


def atomic_write_with(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> Path:
    """Write ``path`` by calling ``write`` on a temporary file in its folder, then ``os.replace``: a failure leaves
    the old file (or none), never a partial one; lack of space raises :class:`NoSpaceError` whatever the writer said."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    recorder: _WriteRecorder | None = None
    try:
        os.fchmod(fd, _default_mode())
        with os.fdopen(fd, "wb") as handle:
            recorder = _WriteRecorder(handle)
            write(recorder)  # type: ignore[arg-type]
            recorder.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        cause = getattr(recorder, "error", None) or error
        if isinstance(error, Exception) and not isinstance(error, NoSpaceError) and lack_of_space(cause):
            raise no_space_error(target, cause) from error
        raise
    return target
