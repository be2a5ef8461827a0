"""Published dataset files from a local folder or the Hugging Face hub (pinned revision); no dataset script is run."""

from __future__ import annotations

import functools
import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mdr.data.schema import DataError


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
    return shlex.join([*words, "--local-dir", str(local_dir)])


@dataclass(frozen=True)
class DatasetFiles:
    """The files ``patterns`` (globs) of one dataset: a local folder or a hub id (``repo``), set by config ``key``;
    ``published``: the canonical hub id, for download commands; ``suggest_dir``: where messages suggest them to."""

    repo: str
    revision: str | None
    patterns: tuple[str, ...]
    key: str
    published: str
    suggest_dir: Path

    @functools.cached_property
    def folder(self) -> tuple[Path, bool]:
        """The folder holding the files (fetched once from the hub), and whether it came from the hub."""
        if looks_local(self.repo):
            folder = Path(self.repo).expanduser().resolve()
            if not folder.is_dir():
                command = download_command(self.published, self.revision, self.patterns, folder)
                raise DataError(
                    f"{self.key}={self.repo}: no such folder; to fetch the published files there run\n  {command}"
                )
            return folder, False
        from huggingface_hub import snapshot_download

        try:
            path = snapshot_download(
                repo_id=self.repo, repo_type="dataset", revision=self.revision, allow_patterns=list(self.patterns)
            )
        except Exception as error:  # offline, no network, unknown repo/revision, gated repo: one clear message
            offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
            reason = "HF_HUB_OFFLINE=1 and it is not in the HF cache" if offline else f"{type(error).__name__}: {error}"
            raise DataError(self.missing(reason)) from error
        return Path(path), True

    def file(self, relative: str) -> Path:
        """``relative`` inside :attr:`folder`; a DataError with the command that fetches it when absent."""
        folder, from_hub = self.folder
        path = folder / relative
        if path.is_file():
            return path
        if from_hub:
            raise DataError(self.missing(f"{relative} is not in the snapshot {folder}"))
        command = download_command(self.published, self.revision, self.patterns, folder)
        raise DataError(
            f"{path}: file not found ({self.key}={self.repo}); to fetch the published files run\n  {command}"
        )

    def missing(self, reason: str) -> str:
        """The error text for hub files that could not be had (``reason``), with the command that gets them."""
        local = self.suggest_dir / self.repo
        return (
            f"{self.key}={self.repo} (revision {self.revision or 'main'}): the files {list(self.patterns)} could not "
            f"be read ({reason}). On a machine with network access run\n"
            f"  {download_command(self.repo, self.revision, self.patterns, local)}\n"
            f"then (after copying that folder here if needed) pass {self.key}={local}"
        )
