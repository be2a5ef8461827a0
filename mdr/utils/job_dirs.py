"""Job folder names of a multirun: Hydra's ``override_dirname``, made one folder level and one spelling per value.

Hydra names a job's folder ``key=value,...`` from its overrides as typed: a path value (``data.queries_repo=/data/
mrtydi``) splits the folder into several levels (the aggregation finds jobs at ``<sweep>/*/.hydra``) or makes a name
longer than the file system allows, and ``negatives.hard_proportion=0`` and ``=0.0`` name two folders for one config.
:func:`job_dirname` (the ``${mdr_job_dir:...}`` resolver of ``conf/hydra/default.yaml``) writes numbers in one
spelling (``0.0`` -> ``0``, ``0.50`` -> ``0.5``), a value holding ``/`` as its last path part plus a hash of the
whole, and cuts a name over :data:`MAX_NAME` bytes to a prefix plus a hash of the whole name.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mdr.utils.io import writable

MAX_NAME = 240
"""Longest job folder name kept as it is (file systems allow 255 bytes per name)."""


def _digest(text: str, length: int) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def _value_text(value: Any, typed: str) -> str:
    """The value as the folder name writes it: integral floats as ints, other floats in Python's shortest form."""
    if isinstance(value, float) and not isinstance(value, bool):
        return str(int(value)) if value.is_integer() else repr(value)
    text = typed
    if "/" in text:
        tail = text.rstrip("/").rsplit("/", 1)[-1] or "root"
        text = f"{tail}-{_digest(typed, 8)}"
    return text


def excluded(key: str, exclude_keys: Sequence[str]) -> bool:
    """Whether ``key`` is left out of a job folder name: named in ``exclude_keys``, or under an entry ``prefix.*``
    (``logger.*``: W&B and CSV settings change no result, so they do not make another job folder)."""
    return any(key == entry or (entry.endswith(".*") and key.startswith(entry[:-1])) for entry in exclude_keys)


def job_dirname(overrides: Sequence[str], exclude_keys: Sequence[str] = ()) -> str:
    """A job's folder name from its overrides (``hydra.overrides.task``), leaving out ``exclude_keys`` as Hydra does
    (and every key under an entry ``prefix.*``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    lines = []
    for override in OverridesParser.create().parse_overrides([str(item) for item in overrides]):
        if excluded(override.key_or_group, exclude_keys):
            continue
        line = str(override.input_line)
        key, _, typed = line.partition("=")
        value = override.value() if not override.is_sweep_override() else typed
        lines.append(f"{key}={_value_text(value, typed)}")
    lines.sort()
    name = ",".join(lines)
    if len(name.encode("utf-8")) > MAX_NAME:
        prefix = name.encode("utf-8")[: MAX_NAME - 50].decode("utf-8", errors="ignore")  # whole characters only
        name = f"{prefix}...{_digest(name, 16)}"
    return name


def hydra_subdir(output_dir: str) -> str | None:
    """``.hydra`` (where Hydra records a job's config), or None, so Hydra records nothing, where ``output_dir``
    exists and that record cannot be rewritten: a read-only finished run folder then returns its metrics as it is.

    The ``${mdr_hydra_subdir:...}`` resolver of ``conf/hydra/default.yaml`` (``hydra.output_subdir``).
    """
    out = Path(output_dir)
    record = out / ".hydra"
    if record.is_dir():
        can_write = writable(record) and all(os.access(path, os.W_OK) for path in record.iterdir())
    else:
        can_write = not out.exists() or writable(out)
    return ".hydra" if can_write else None
