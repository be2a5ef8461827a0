"""Published dataset files from the Hugging Face hub, or from a local folder with the same layout.

A ``data.queries_repo`` / ``data.corpus_repo`` is a local folder (what ``hf download`` leaves) or a hub dataset
id, fetched with ``snapshot_download`` at a pinned revision into the HF cache, only the files a language needs
(``HF_HUB_OFFLINE=1``: from the cache). No dataset script is ever run.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from pathlib import Path

from mdr.data.schema import DataError
from mdr.utils.logging import get_logger

log = get_logger(__name__)


def looks_local(repo: str) -> bool:
    """True for a value meant as a folder: it exists, or it is not of the hub's ``owner/name`` form."""
    return Path(repo).expanduser().is_dir() or repo.startswith(("/", ".", "~")) or repo.count("/") != 1


def download_command(repo: str, revision: str | None, patterns: Sequence[str], local_dir: Path | str) -> str:
    """The shell command that puts ``patterns`` of dataset ``repo`` at ``revision`` into ``local_dir``."""
    words = ["hf", "download", repo, "--repo-type", "dataset"]
    if revision:
        words += ["--revision", revision]
    for pattern in patterns:
        words += ["--include", pattern]
    words += ["--local-dir", str(local_dir)]
    return shlex.join(words)


def dataset_folder(
    repo: str, revision: str | None, patterns: Sequence[str], config_key: str, suggest_dir: Path
) -> tuple[Path, bool]:
    """A folder holding ``patterns`` (globs) of ``repo`` (a folder or a hub id), and whether it came from the hub.

    A missing folder, or a hub id neither fetched nor cached, is a DataError naming ``config_key`` (and for a hub id
    the ``hf download`` command into ``suggest_dir``).
    """
    if looks_local(repo):
        folder = Path(repo).expanduser().resolve()
        if not folder.is_dir():
            raise DataError(f"{config_key}={repo}: no such folder")
        return folder, False
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(repo_id=repo, repo_type="dataset", revision=revision, allow_patterns=list(patterns))
    except Exception as error:  # offline, no network, unknown repo/revision, gated repo: one clear message
        offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
        reason = "HF_HUB_OFFLINE=1 and it is not in the HF cache" if offline else f"{type(error).__name__}: {error}"
        raise DataError(missing_message(repo, revision, patterns, config_key, suggest_dir, reason)) from error
    return Path(path), True


def missing_message(
    repo: str, revision: str | None, patterns: Sequence[str], config_key: str, suggest_dir: Path, reason: str
) -> str:
    """The error text for files of ``repo`` that could not be had, with the command that gets them."""
    local = suggest_dir / repo
    return (
        f"{config_key}={repo} (revision {revision or 'main'}): the files {list(patterns)} could not be read "
        f"({reason}). On a machine with network access run\n"
        f"  {download_command(repo, revision, patterns, local)}\n"
        f"then (after copying that folder here if needed) pass {config_key}={local}"
    )
