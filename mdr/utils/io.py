"""Atomic writes: a reader never sees a half-written results file, even after a kill."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any


def _default_mode() -> int:
    """The mode a plain ``open`` would give a new file (0o666 less the umask); mkstemp's is 0o600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def share_like_new_files(root: str | os.PathLike[str]) -> None:
    """Give ``root`` and everything under it the modes ``mkdir`` / ``open`` would (0o777 / 0o666 less the umask).

    ``tempfile.mkdtemp`` makes folders 0o700 and some writers (safetensors) files 0o600; a folder built that
    way and renamed into a shared cache would be unreadable to everyone else.
    """
    file_mode = _default_mode()
    folder_mode = file_mode | ((file_mode & 0o444) >> 2)  # x wherever r: 0o644 -> 0o755
    top = Path(root)
    for path in [top, *top.rglob("*")]:
        if path.is_symlink():
            continue
        os.chmod(path, folder_mode if path.is_dir() else file_mode)


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
    """Write ``path`` by calling ``write`` on a binary temporary file in the same folder, then ``os.replace``.

    The temporary file is in ``path``'s own folder, so the rename never crosses a file system: a full disk or a
    failing ``write`` leaves the old file (or none), never a partial one, and removes the temporary file.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _default_mode())
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
