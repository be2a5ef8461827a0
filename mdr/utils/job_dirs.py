"""Job folder names of a multirun: Hydra's ``override_dirname`` with one folder level and one spelling per value
(``0.0`` -> ``0``; a value holding ``/``: its last part plus a hash), cut to :data:`MAX_NAME` bytes."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mdr.utils.io import writable

MAX_NAME = 240  # longest job folder name kept as it is (file systems allow 255 bytes per name)


def _digest(text: str, length: int) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def _value_text(value: Any, typed: str) -> str:
    """The value as the folder name writes it: integral floats as ints, other floats in Python's shortest form."""
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if "/" in typed:
        return f"{typed.rstrip('/').rsplit('/', 1)[-1] or 'root'}-{_digest(typed, 8)}"
    return typed


def excluded(key: str, exclude_keys: Sequence[str]) -> bool:
    """Whether ``key`` is named in ``exclude_keys`` or under an entry ``prefix.*`` there (``logger.*``)."""
    return any(key == entry or (entry.endswith(".*") and key.startswith(entry[:-1])) for entry in exclude_keys)


def job_dirname(overrides: Sequence[str], exclude_keys: Sequence[str] = ()) -> str:
    """The ``${mdr_job_dir:...}`` resolver: a job's folder name from its overrides, ``exclude_keys`` left out."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    lines = []
    for override in OverridesParser.create().parse_overrides([str(item) for item in overrides]):
        if excluded(override.key_or_group, exclude_keys):
            continue
        key, _, typed = str(override.input_line).partition("=")
        value = override.value() if not override.is_sweep_override() else typed
        lines.append(f"{key}={_value_text(value, typed)}")
    name = ",".join(sorted(lines))
    if len(name.encode("utf-8")) > MAX_NAME:
        prefix = name.encode("utf-8")[: MAX_NAME - 50].decode("utf-8", errors="ignore")  # whole characters only
        name = f"{prefix}...{_digest(name, 16)}"
    return name


def hydra_subdir(output_dir: str) -> str | None:
    """The ``${mdr_hydra_subdir:...}`` resolver: ``.hydra``, or None (Hydra records nothing) where it is read-only."""
    out = Path(output_dir)
    record = out / ".hydra"
    if record.is_dir():
        return ".hydra" if writable(record) and all(os.access(path, os.W_OK) for path in record.iterdir()) else None
    return ".hydra" if not out.exists() or writable(out) else None
