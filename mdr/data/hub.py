"""Published dataset files from the Hugging Face hub, or from a local folder with the same layout.

A ``data.queries_repo`` / ``data.corpus_repo`` value is either a local folder (an offline compute node: what
``hf download <repo> --repo-type dataset --local-dir <folder>`` leaves) or a hub dataset id, fetched with
``huggingface_hub.snapshot_download`` at a pinned revision into the HF cache (``$HF_HOME``), only the files a
language needs. With ``HF_HUB_OFFLINE=1`` a revision already in the cache is used as it is. No dataset script is
ever run: the readers parse the files themselves.

The download command named in errors is ``hf download`` (huggingface_hub >= 1.0, pinned here); on older
releases the same arguments go to ``huggingface-cli download``.
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
    if Path(repo).expanduser().is_dir():
        return True
    return repo.startswith(("/", ".", "~")) or repo.count("/") != 1


def download_command(repo: str, revision: str | None, patterns: Sequence[str], local_dir: Path | str) -> str:
    """The shell command that puts ``patterns`` of dataset ``repo`` at ``revision`` into ``local_dir``."""
    words = ["hf", "download", repo, "--repo-type", "dataset"]
    if revision:
        words += ["--revision", revision]
    for pattern in patterns:
        words += ["--include", pattern]
    words += ["--local-dir", str(local_dir)]
    return shlex.join(words)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def dataset_folder(
    repo: str, revision: str | None, patterns: Sequence[str], config_key: str, suggest_dir: Path
) -> tuple[Path, bool]:
    """A folder holding ``patterns`` of ``repo``, and whether it came from the hub.

    Args:
        repo: a local folder or a hub dataset id (``owner/name``).
        revision: the commit, tag or branch to fetch (hub ids only).
        patterns: glob patterns of the files needed (``allow_patterns`` of ``snapshot_download``).
        config_key: the config key ``repo`` came from, for messages (e.g. ``data.queries_repo``).
        suggest_dir: where the error message suggests downloading to.

    Raises:
        DataError: for a local path that does not exist, or a hub id that can be neither fetched nor found in
            the cache; the message names the ``hf download`` command to run and the key to set.
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
        reason = "HF_HUB_OFFLINE=1 and it is not in the HF cache" if _offline() else f"{type(error).__name__}: {error}"
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
