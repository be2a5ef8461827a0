"""A report's files form one set (issue 26 item 9): an aggregate cut short leaves the previous set untouched, a
finished one replaces all of it (results.md last, a manifest naming the set), and SIGINT during the move into
place waits until the set is complete."""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from test_sweep_integrity import _grid, _job_scores, _scores, make_job

import mdr.reporting.aggregate as aggregate_module
from mdr.reporting.aggregate import MANIFEST, aggregate


def _files(folder: Path) -> dict[str, bytes]:
    """Every file directly in ``folder`` (hidden ones too) and its bytes."""
    return {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}


def _report_files(folder: Path) -> dict[str, bytes]:
    return {name: data for name, data in _files(folder).items() if name != "multirun.yaml"}


def _assert_complete_set(folder: Path) -> None:
    """results.md is there and the manifest beside it names exactly the report files present, with their bytes."""
    listed = json.loads((folder / MANIFEST).read_text())["files"]
    present = {name: data for name, data in _report_files(folder).items() if name != MANIFEST}
    assert "results.md" in listed and set(listed) == set(present)
    assert {name: hashlib.sha256(data).hexdigest() for name, data in present.items()} == listed
    assert not [path for path in folder.iterdir() if path.is_dir() and path.name.startswith(".")]


def _sweep_with_a_new_seed(sweep: Path) -> dict[str, bytes]:
    """A 2-seed sweep aggregated (its report set returned), then a third seed added so the next set differs."""
    rng = np.random.default_rng(21)
    _grid(sweep, rng)
    aggregate(sweep)
    before = _report_files(sweep)
    for p in (0, 1):
        make_job(sweep, f"negatives.hard_proportion={p},seed=2", p=p, seed=2, scores=_scores(rng))
    return before


@pytest.mark.parametrize("failing", ["cells.csv", "trends.csv", "results.md"])
def test_an_aggregate_cut_short_leaves_the_old_set_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """Ctrl-C while a file is written: the files written before it were already the new set's beside the old
    results.md (or, cut before results.md, every file but results.md was new)."""
    before = _sweep_with_a_new_seed(tmp_path)
    write = aggregate_module.atomic_write_text

    def interrupted(path: str | os.PathLike[str], text: str) -> Path:
        if Path(path).name == failing:
            raise KeyboardInterrupt
        return write(path, text)

    monkeypatch.setattr(aggregate_module, "atomic_write_text", interrupted)
    with pytest.raises(KeyboardInterrupt):
        aggregate(tmp_path)
    assert _report_files(tmp_path) == before
    _assert_complete_set(tmp_path)
    monkeypatch.undo()
    aggregate(tmp_path)  # the next run writes the new set
    after = _report_files(tmp_path)
    assert after["results.md"] != before["results.md"] and after["cells.csv"] != before["cells.csv"]
    _assert_complete_set(tmp_path)


def test_sigint_while_the_set_moves_into_place_waits_until_it_is_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _sweep_with_a_new_seed(tmp_path)
    replace = os.replace
    moves: list[str] = []

    def replace_then_interrupt(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
        replace(source, target)
        if Path(target).parent == tmp_path and Path(source).parent != tmp_path:  # a staged file moved into place
            moves.append(Path(target).name)
            if len(moves) == 2:
                signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(os, "replace", replace_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        aggregate(tmp_path)
    monkeypatch.undo()
    assert len(moves) > 2 and moves[-2:] == [MANIFEST, "results.md"]
    after = _report_files(tmp_path)
    assert after["results.md"] != before["results.md"] and "3 seeds" in after["results.md"].decode()
    _assert_complete_set(tmp_path)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_new_set_removes_the_files_of_the_old_one_it_lacks(tmp_path: Path) -> None:
    """A duplicate since removed: its duplicates.csv stayed beside a results.md that no longer listed one."""
    rng = np.random.default_rng(22)
    _grid(tmp_path, rng)
    copy = make_job(
        tmp_path, "negatives.hard_proportion=0.0,seed=0", p=0.0, seed=0,
        scores=_job_scores(tmp_path / "negatives.hard_proportion=0,seed=0"),
    )  # fmt: skip
    assert aggregate(tmp_path)["duplicates"] == 1 and (tmp_path / "duplicates.csv").is_file()
    for path in sorted(copy.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    copy.rmdir()
    assert aggregate(tmp_path)["duplicates"] == 0
    assert not (tmp_path / "duplicates.csv").exists()
    _assert_complete_set(tmp_path)


def test_a_staging_folder_left_by_a_killed_aggregate_is_removed(tmp_path: Path) -> None:
    _grid(tmp_path, np.random.default_rng(23))
    leftover = tmp_path / ".report-staging-killed"
    leftover.mkdir()
    (leftover / "results.csv").write_text("half")
    aggregate(tmp_path)
    assert not leftover.exists()
    _assert_complete_set(tmp_path)
