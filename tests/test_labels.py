"""Labels are what ran, damaged run folders say so, and a finished run leaves nothing behind (issue 19, items 4, 6
and 7): metrics named by the depth they were computed at, configs that would be recorded as something else
refused, a cut-off run_folder.json / metrics.json named with the way out, leftover checkpoints and empty folders
removed, and checkpoints written atomically in their own folder."""

from __future__ import annotations

import errno
import importlib.metadata
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from published_layouts import write_miracl

import mdr.pipeline
import mdr.run_evaluation
import mdr.training
import mdr.utils.io
from mdr import run_folder
from mdr.data.schema import DataError
from mdr.evaluation.metrics import evaluate_run, mean_metrics, ranked
from mdr.lifecycle import run_task
from mdr.models.bi_encoder import SETTINGS_FILE, BiEncoder, EncoderSettings, load_tokenizer
from mdr.models.module import AtomicCheckpointIO
from mdr.pipeline import evaluate, load_splits, train
from mdr.run_folder import RunFolderDamaged
from mdr.training import fit, load_encoder
from mdr.utils.instantiate import build_reader
from mdr.utils.io import atomic_write_json, atomic_write_with
from mdr.validation import build_spec


def _finishing_task(calls: list[str]) -> Any:
    """A task that trains (an encoder and a checkpoint) and writes metrics.json, as a finished run leaves them."""

    def task(spec: Any) -> dict[str, Any]:
        out = Path(spec.paths.output_dir)
        calls.append("ran")
        (out / "checkpoints").mkdir(exist_ok=True)
        (out / "checkpoints" / "epoch0.ckpt").write_bytes(b"\0" * 100)
        (out / "encoder").mkdir(exist_ok=True)
        (out / "encoder" / SETTINGS_FILE).write_text("{}")
        payload = {"depth": 100, "metrics": {"mrr@100": 0.5}}
        (out / "metrics.json").write_text(json.dumps(payload))
        return payload

    return task


# --- labels: metric names carry the depth; depth recorded --------------------------------------------------------


def test_metrics_are_named_by_the_depth_they_were_computed_at() -> None:
    qrels = {"q1": {"d15": 1}, "q2": {"d3": 1}}
    run = {q: {f"d{i:02d}": 1.0 - i / 100 for i in range(40)} for q in qrels}
    run["q2"] = {f"d{i}": 1.0 - i / 100 for i in range(40)}
    deep, shallow = mean_metrics(evaluate_run(run, qrels, 100)), mean_metrics(evaluate_run(run, qrels, 10))
    assert set(deep) == {"mrr@100", "recall@100", "ndcg@10"}
    assert set(shallow) == {"mrr@10", "recall@10", "ndcg@10"}  # was mrr@100 / recall@100 over a 10-deep run
    assert shallow["recall@10"] == 0.5 and deep["recall@100"] == 1.0  # d15 is below rank 10 for q1
    assert shallow["ndcg@10"] == deep["ndcg@10"]
    cut = {q: {d: s for d, s in docs.items() if d in ranked(docs, 10)} for q, docs in run.items()}
    assert mean_metrics(evaluate_run(cut, qrels, 10)) == shallow  # what a 10-deep search returns
    assert set(mean_metrics(evaluate_run(run, qrels, 1000))) == {"mrr@100", "recall@100", "ndcg@10"}
    with pytest.raises(ValueError, match="nDCG@10"):
        evaluate_run(run, qrels, 5)


def test_evaluation_depth_is_in_the_metric_names_and_in_metrics_json_and_no_embeddings_folder_is_left(
    make_cfg: Any,
) -> None:
    cfg = make_cfg("evaluation.depth=10", config_name="evaluate")
    out = Path(cfg.paths.output_dir)
    payload = run_task(cfg, evaluate)
    stored = json.loads((out / "metrics.json").read_text())
    assert stored["depth"] == 10 and set(stored["metrics"]) == {"mrr@10", "recall@10", "ndcg@10"}
    assert (out / "per_query" / "th.tsv").read_text().splitlines()[0] == "query_id\tmrr@10\tndcg@10\trecall@10"
    assert payload["metrics"]["mrr@10"] == stored["metrics"]["mrr@10"]
    assert not (out / "embeddings").exists(), "a finished run keeps no (empty) embeddings/ folder"
    root = Path(mdr.pipeline.__file__).resolve().parents[1]
    if (root / ".git").exists():  # the code that produced it: mdr's commit, and the packages that compute
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
        assert stored["code"]["commit"] == head.strip() and isinstance(stored["code"]["dirty"], bool)
    assert stored["code"]["packages"]["torch"] == importlib.metadata.version("torch")

    deep = make_cfg("evaluation.depth=100", f"paths.output_dir={out.parent / 'deep'}", config_name="evaluate")
    full = run_task(deep, evaluate)
    assert full["depth"] == 100 and set(full["metrics"]) == {"mrr@100", "recall@100", "ndcg@10"}
    assert full["metrics"]["mrr@100"] >= payload["metrics"]["mrr@10"]
    assert full["metrics"]["recall@100"] >= payload["metrics"]["recall@10"]
    assert full["metrics"]["ndcg@10"] == pytest.approx(payload["metrics"]["ndcg@10"])


def test_metrics_json_names_the_split_as_published(make_cfg: Any, tmp_path: Path) -> None:
    """MIRACL publishes no test labels: mdr's `test` reads its dev split, and metrics.json must say dev."""
    queries, corpus_repo = write_miracl(tmp_path / "hub")
    cfg = make_cfg(
        "data=miracl",
        "language=sw",
        f"data.queries_repo={queries}",
        f"data.corpus_repo={corpus_repo}",
        config_name="evaluate",
    )
    assert run_task(cfg, evaluate)["split"] == "dev"
    assert json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())["split"] == "dev"
    xquad = make_cfg(f"paths.output_dir={tmp_path / 'xquad'}", config_name="evaluate")
    assert build_reader(build_spec(xquad).data.reader).published_split("test") == "test"


# --- labels: configs that would be recorded as what did not run are refused --------------------------------------


def _refuses_before_work(cfg: Any, monkeypatch: pytest.MonkeyPatch, message: str) -> None:
    def reached(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("an expensive step ran before validation stopped the run")

    monkeypatch.setattr(mdr.pipeline, "load_splits", reached)
    for name in ("load_encoder", "negative_pools", "fit"):
        monkeypatch.setattr(mdr.training, name, reached)
    with pytest.raises(DataError, match=message):
        run_task(cfg, train)
    assert not (Path(cfg.paths.output_dir) / "metrics.json").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["stage.stages=[]"], r"stage.stages is empty, so nothing would be trained, but stage.name is 'target_only'"),
        (["negatives.num_negatives=0"], r"negatives.num_negatives=0 .* negatives.hard_proportion=0.5 would label"),
        (["seed=-1"], r"seed must be an integer >= 0, got -1"),
        ([f"seed={2**32}"], r"seed must be an integer in \[0, 4294967295\], got 4294967296"),
        (["evaluation.depth=5"], r"evaluation.depth must be an integer >= 10, got 5"),
        (["evaluation.split=dev"], r"evaluation.split=dev but data.test_split=test is the split evaluated"),
    ],
)
def test_configs_recorded_as_something_else_are_refused_naming_their_key(
    make_cfg: Any, monkeypatch: pytest.MonkeyPatch, overrides: list[str], message: str
) -> None:
    _refuses_before_work(make_cfg(*overrides), monkeypatch, message)


@pytest.mark.parametrize(
    "overrides",
    [
        ["stage=zero_shot"],  # an empty schedule named for what it is
        ["negatives.num_negatives=0", "negatives.hard_proportion=0"],  # in-batch negatives only
        [f"seed={2**32 - 1}"],
        ["evaluation.depth=10"],
    ],
)
def test_what_is_recorded_as_it_ran_passes(make_cfg: Any, overrides: list[str]) -> None:
    build_spec(make_cfg(*overrides))


# --- damaged run folders: the file named, and fresh moves them aside ---------------------------------------------


def _cut(path: Path) -> None:
    text = path.read_text()
    path.write_text(text[: len(text) // 2])


def test_a_cut_off_run_folder_json_names_itself_and_fresh_moves_the_folder_aside(make_cfg: Any) -> None:
    cfg = make_cfg()
    out = Path(cfg.paths.output_dir)
    calls: list[str] = []
    run_task(cfg, _finishing_task(calls))
    _cut(out / run_folder.RECORD_FILE)
    with pytest.raises(RunFolderDamaged, match="run_folder.json cannot be read") as error:
        run_task(cfg, _finishing_task(calls))  # was a bare JSONDecodeError without a path
    assert str(out / run_folder.RECORD_FILE) in str(error.value) and "run.on_config_change=fresh" in str(error.value)
    assert calls == ["ran"]
    for number, policy in enumerate(("run.on_config_change=fresh", "run.on_complete=fresh"), 2):
        payload = run_task(make_cfg(policy), _finishing_task(calls))
        assert calls == ["ran"] * number and payload["metrics"] == {"mrr@100": 0.5}
        _cut(out / run_folder.RECORD_FILE)
    moved = sorted(out.glob("previous-*"))
    assert len(moved) == 2 and all((folder / "metrics.json").is_file() for folder in moved)
    empty = out.parent / "empty"
    empty.mkdir()
    (empty / run_folder.RECORD_FILE).write_text('{"config": {"se')  # a folder without results: just recorded
    assert run_task(make_cfg(f"paths.output_dir={empty}"), _finishing_task(calls))["depth"] == 100


def test_a_cut_off_metrics_json_names_itself_and_on_complete_fresh_runs_again(make_cfg: Any) -> None:
    cfg = make_cfg()
    out = Path(cfg.paths.output_dir)
    calls: list[str] = []
    run_task(cfg, _finishing_task(calls))
    _cut(out / "metrics.json")
    with pytest.raises(RunFolderDamaged, match="metrics.json cannot be read") as error:
        run_task(cfg, _finishing_task(calls))
    assert str(out / "metrics.json") in str(error.value) and "run.on_complete=fresh" in str(error.value)
    assert run_task(make_cfg("run.on_complete=fresh"), _finishing_task(calls))["metrics"] == {"mrr@100": 0.5}
    (previous,) = out.glob("previous-*")
    assert calls == ["ran", "ran"] and (previous / "metrics.json").is_file()
    assert json.loads((out / "metrics.json").read_text())["depth"] == 100


# --- leftovers ---------------------------------------------------------------------------------------------------


def test_a_finished_run_killed_before_tidying_loses_its_checkpoints_and_empty_folders_on_rerun(make_cfg: Any) -> None:
    cfg = make_cfg()
    out = Path(cfg.paths.output_dir)
    calls: list[str] = []
    run_task(cfg, _finishing_task(calls))  # the fake task, like a kill after metrics.json, leaves checkpoints/
    (out / "embeddings").mkdir()
    assert (out / "checkpoints" / "epoch0.ckpt").is_file()
    assert run_task(cfg, _finishing_task(calls))["metrics"] == {"mrr@100": 0.5} and calls == ["ran"]
    assert not (out / "checkpoints").exists() and not (out / "embeddings").exists()
    assert (out / "encoder" / SETTINGS_FILE).is_file()


def test_atomic_write_with_leaves_neither_a_partial_file_nor_its_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "checkpoints" / "epoch0.ckpt"

    def fill_the_disk(handle: Any, *args: Any) -> None:
        handle.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write_with(target, fill_the_disk)
    assert list(target.parent.iterdir()) == []
    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", lambda checkpoint, handle: fill_the_disk(handle))
        with pytest.raises(OSError, match="No space left"):
            AtomicCheckpointIO().save_checkpoint({"epoch": 0}, target)
    assert list(target.parent.iterdir()) == []
    AtomicCheckpointIO().save_checkpoint({"epoch": 0, "weights": torch.ones(3)}, target)
    assert torch.load(target, weights_only=True)["epoch"] == 0
    assert [path.name for path in target.parent.iterdir()] == ["epoch0.ckpt"]


class _FullDisk:
    """A file on a disk with ``room`` bytes left: the write that would pass it raises ENOSPC, as ``os.write`` does."""

    def __init__(self, handle: Any, room: int) -> None:
        self.handle, self.room = handle, room

    def write(self, data: Any) -> int:
        size = memoryview(data).nbytes
        if size > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= size
        return self.handle.write(data)

    def __enter__(self) -> _FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handle, name)


def _fill_the_disk(monkeypatch: pytest.MonkeyPatch, room: int = 1000) -> None:
    """Every file :func:`mdr.utils.io.atomic_write_with` opens from now on has ``room`` bytes left."""
    fdopen = os.fdopen
    monkeypatch.setattr(mdr.utils.io.os, "fdopen", lambda fd, mode: _FullDisk(fdopen(fd, mode), room))


def test_a_checkpoint_or_results_write_on_a_full_disk_names_the_file_and_the_free_space(
    make_cfg: Any, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """torch.save turned the ENOSPC of its file's write into 'RuntimeError: [enforce fail at inline_container.cc:672]
    . unexpected pos 13376 vs 13270', which failed.json carried: no path, no 'no space left'."""
    cfg = make_cfg()
    out = Path(cfg.paths.output_dir)
    checkpoint = out / "checkpoints" / "epoch0.ckpt"

    def saves_a_checkpoint(cfg: Any) -> dict[str, Any]:
        with monkeypatch.context() as patch:  # the space comes back as the partial file is removed
            _fill_the_disk(patch)
            AtomicCheckpointIO().save_checkpoint({"epoch": 0, "weights": torch.ones(4096)}, checkpoint)
        return {}

    with pytest.raises(OSError, match=rf"cannot write {checkpoint}: no space left on device \(\d+ bytes free"):
        run_task(cfg, saves_a_checkpoint)
    error = json.loads((out / "failed.json").read_text())["error"]
    assert f"cannot write {checkpoint}: no space left on device" in error and "bytes free on its file system" in error
    assert f"cannot write {checkpoint}: no space left on device" in caplog.text, "the log says it too"
    assert not list(checkpoint.parent.iterdir()), "no partial checkpoint, no temporary"

    metrics = out / "metrics.json"

    def writes_results(cfg: Any) -> dict[str, Any]:
        with monkeypatch.context() as patch:
            _fill_the_disk(patch, room=10)
            atomic_write_json(metrics, {"metrics": {"mrr@100": 0.5}})
        return {}

    with pytest.raises(OSError, match=rf"cannot write {metrics}: no space left on device"):
        run_task(cfg, writes_results)
    assert f"cannot write {metrics}: no space left" in json.loads((out / "failed.json").read_text())["error"]
    assert not metrics.exists()


def test_an_encoder_save_on_a_full_disk_names_the_folder(tiny_model: Path, tmp_path: Path) -> None:
    encoder, tokenizer = BiEncoder.from_pretrained(tiny_model, EncoderSettings()), load_tokenizer(tiny_model)

    def no_space(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")  # what Python's write raises: no file named

    encoder.query_backbone.save_pretrained = no_space  # type: ignore[method-assign]
    with pytest.raises(OSError, match=rf"cannot write {tmp_path / 'encoder'}: no space left on device \(\d+ bytes"):
        encoder.save_pretrained(tmp_path / "encoder", tokenizer)

    def rust_writer(*args: Any, **kwargs: Any) -> None:  # safetensors: the OS error only in the message
        raise RuntimeError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
        )

    encoder.query_backbone.save_pretrained = rust_writer  # type: ignore[method-assign]
    with pytest.raises(OSError, match=rf"cannot write {tmp_path / 'encoder'}: no space left on device"):
        encoder.save_pretrained(tmp_path / "encoder", tokenizer)


def test_a_full_disk_while_saving_leaves_no_partial_checkpoint(make_cfg: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The system temp folder is on another file system (a rename from it fails with EXDEV) and the run folder's
    disk fills during the copy: Lightning's fsspec save (mkstemp in the temp folder, then shutil.move, a copy)
    left a partial epoch0.ckpt; the save now writes beside its target and renames, so the copy never happens."""
    cfg = make_cfg("negatives.hard_proportion=0", "run.keep_checkpoints=true")
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True)
    system_tmp = out.parent / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    rename, copyfile = os.rename, shutil.copyfile

    def across_devices(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if Path(src).parent == system_tmp and Path(dst).parent == out / "checkpoints":
            raise OSError(errno.EXDEV, "Invalid cross-device link", str(src))
        rename(src, dst, *args, **kwargs)

    def disk_fills(src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
        if Path(dst).parent != out / "checkpoints":
            return copyfile(src, dst, *args, **kwargs)
        data = Path(src).read_bytes()
        Path(dst).write_bytes(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(os, "rename", across_devices)
    monkeypatch.setattr(shutil, "copyfile", disk_fills)
    (out / "checkpoints").mkdir()
    stale = out / "checkpoints" / ".epoch0.ckpt.k1lled.tmp"  # a save killed midway by an earlier attempt
    stale.write_bytes(b"part of a checkpoint")
    spec = build_spec(cfg)
    train_split, _ = load_splits(spec)
    encoder, tokenizer = load_encoder(spec.model)
    try:
        fit(spec, spec.schedule.stages[-1], encoder, tokenizer, train_split, {}, out)
    except OSError as error:
        assert error.errno == errno.ENOSPC
    saved = sorted((out / "checkpoints").glob("*.ckpt"))
    assert saved, "the epoch-end checkpoint is written"
    for path in saved:  # every checkpoint a resume could read is whole
        assert torch.load(path, map_location="cpu", weights_only=False)["epoch"] == 0, path
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.endswith(".tmp")], "temporaries removed"
