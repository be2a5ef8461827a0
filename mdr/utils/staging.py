"""Build a folder beside its target, then rename it into place, so no reader ever sees a partial one."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mdr.utils.cache import remove_stale_builds, staging_name


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
