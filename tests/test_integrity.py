"""Run integrity (issue 10): a run folder belongs to one config, bad config and data stop before any expensive
step, the tiny model builds identically everywhere, and a saved encoder reproduces mdr's own encoding."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf, open_dict

import mdr.lifecycle
import mdr.tracking
import mdr.training
from mdr import run_folder
from mdr.data.schema import DataError
from mdr.lifecycle import run_task
from mdr.pipeline import evaluate, train
from mdr.run_folder import RunFolderConflict
from mdr.spec import Spec
from mdr.stage_cache import stage_keys
from mdr.utils.config_identity import canonical_config
from mdr.validation import build_spec

from conftest import DATA_DIR, ROOT, XQUAD_SENT


def _claim(cfg: Any, out: Path) -> run_folder.RunFolderState:
    """:func:`mdr.run_folder.claim` for a composed config, as a run claims its folder."""
    return run_folder.claim(out, canonical_config(cfg), build_spec(cfg).run)


def _fake_task(calls: list[str]) -> Any:
    """A task that 'trains' (leaves a checkpoint) and writes metrics.json, recording each call."""

    def task(spec: Spec) -> dict[str, Any]:
        out = Path(spec.paths.output_dir)
        calls.append(str(spec.negatives.hard_proportion))
        (out / "checkpoints").mkdir(exist_ok=True)
        (out / "checkpoints" / "last.ckpt").write_text("state")
        payload = {"hard_proportion": spec.negatives.hard_proportion, "seed": spec.seed, "metrics": {"mrr@100": 0.5}}
        (out / "metrics.json").write_text(json.dumps(payload))
        return payload

    return task


def _no_expensive_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make building/loading a model, mining and training fail loudly: validation must stop the run first."""

    def reached(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("an expensive step ran before validation stopped the run")

    for name in ("load_encoder", "negative_pools", "fit"):
        monkeypatch.setattr(mdr.training, name, reached)


def _dataset(root: Path, test_grade: int = 1, passages: int = 6) -> Path:
    """A tiny local-layout data set: ``passages`` passages, 4 training and 2 test queries."""
    (root / "queries").mkdir(parents=True)
    (root / "qrels").mkdir()
    with (root / "corpus.jsonl").open("w") as handle:
        for i in range(passages):
            handle.write(json.dumps({"docid": f"d{i}", "title": "", "text": f"passage {i} about subject {i}"}) + "\n")
    for split, ids, grade in (("train", range(4), 1), ("test", range(4, 6), test_grade)):
        with (root / "queries" / f"{split}.jsonl").open("w") as handle:
            for i in ids:
                handle.write(json.dumps({"query_id": f"q{i}", "query": f"what about subject {i % passages}"}) + "\n")
        (root / "qrels" / f"{split}.txt").write_text("".join(f"q{i} 0 d{i % passages} {grade}\n" for i in ids))
    return root


# --- 1. a run folder belongs to one config ------------------------------------------------------------------


def test_other_config_into_a_finished_folder_is_refused_and_the_same_config_is_not_redone(
    make_cfg: Any, tmp_path: Path
) -> None:
    first = make_cfg("negatives.hard_proportion=0.5")
    out = Path(first.paths.output_dir)
    done = run_task(first, train)
    csv_before = (out / "csv/metrics.csv").read_text()
    stamp = (out / "metrics.json").stat().st_mtime_ns
    assert done["hard_proportion"] == 0.5 and csv_before.count("\n") > 1

    # the case: p=0 seed=5 into the p=0.5 folder was "Restored all states" and relabelled the metrics
    with pytest.raises(RunFolderConflict) as refused:
        run_task(make_cfg("negatives.hard_proportion=0", "seed=5"), train)
    message = str(refused.value)
    assert "negatives.hard_proportion: 0.5 -> 0" in message and "seed: 0 -> 5" in message
    assert "run.on_config_change=fresh" in message
    assert (out / "metrics.json").stat().st_mtime_ns == stamp and not (out / "failed.json").exists()
    assert json.loads((out / "metrics.json").read_text())["hard_proportion"] == 0.5

    # the same config again (progress bar and evaluation batch size do not change a result): nothing redone
    again = run_task(make_cfg("negatives.hard_proportion=0.5", "evaluation.batch_size=7"), train)
    assert again == done
    assert (out / "metrics.json").stat().st_mtime_ns == stamp
    assert (out / "csv/metrics.csv").read_text() == csv_before, "a finished run re-run must not double CSV rows"


def test_folder_records_its_config_and_ignores_keys_that_change_no_result(make_cfg: Any, tmp_path: Path) -> None:
    calls: list[str] = []
    cfg = make_cfg()
    out = Path(cfg.paths.output_dir)
    run_task(cfg, _fake_task(calls))
    record = json.loads((out / run_folder.RECORD_FILE).read_text())
    assert record["config_hash"] == run_folder.config_hash(run_folder.canonical_config(cfg))
    assert record["config"]["negatives"]["hard_proportion"] == 0.5
    assert "output_dir" not in record["config"].get("paths", {}) and "logger" not in record["config"]
    assert record["config"]["model"]["name_or_path"] == "${paths.cache_dir}/models/tiny-bert"
    same = make_cfg(
        "trainer.enable_progress_bar=true",
        "evaluation.batch_size=3",
        "train.num_workers=1",
        "logger.wandb.enabled=true",
        f"paths.cache_dir={tmp_path / 'another-cache'}",  # derived artefacts only
    )
    assert run_folder.config_hash(run_folder.canonical_config(same)) == record["config_hash"]
    assert (
        run_folder.config_hash(run_folder.canonical_config(make_cfg("negatives.hard_proportion=1")))
        != (record["config_hash"])
    )
    # 1 and 1.0 are one value
    one = run_folder.canonical_config(make_cfg("negatives.hard_proportion=1"))
    assert one == run_folder.canonical_config(make_cfg("negatives.hard_proportion=1.0"))


def _without(cfg: Any, dotted: str) -> Any:
    """``cfg`` as an mdr from before ``dotted`` existed would have resolved it."""
    *parents, leaf = dotted.split(".")
    node = cfg
    for part in parents:
        node = node[part]
    with open_dict(node):
        del node[leaf]
    return cfg


def test_a_key_added_later_at_its_neutral_value_keeps_older_runs_and_stages_the_same_config(make_cfg: Any) -> None:
    calls: list[str] = []
    older = _without(make_cfg(), "train.fast_dropout")  # recorded by an mdr without train.fast_dropout
    out = Path(older.paths.output_dir)
    run_task(older, _fake_task(calls))
    assert "fast_dropout" not in json.loads((out / run_folder.RECORD_FILE).read_text())["config"]["train"]
    current = make_cfg("train.fast_dropout=false")  # torch's dropout: what ran before the key existed
    assert run_folder.canonical_config(current) == run_folder.canonical_config(older)
    assert run_task(current, _fake_task(calls))["metrics"] == {"mrr@100": 0.5} and calls == ["0.5"]  # skipped
    assert [d for _, d in stage_keys(build_spec(current))] == [d for _, d in stage_keys(build_spec(older))]
    for changed in (make_cfg("train.fast_dropout=true"), make_cfg()):  # fast masks (the default, auto, on CPU)
        with pytest.raises(RunFolderConflict, match=r"train\.fast_dropout: '<absent>' -> (True|'auto')"):
            run_task(changed, _fake_task(calls))
    assert stage_keys(build_spec(changed))[0][1] != stage_keys(build_spec(current))[0][1]


def test_fresh_moves_the_old_contents_aside_and_starts_again(make_cfg: Any) -> None:
    calls: list[str] = []
    cfg = make_cfg("negatives.hard_proportion=0.5")
    out = Path(cfg.paths.output_dir)
    run_task(cfg, _fake_task(calls))
    (out / "train.log").write_text("log of the first run\n")  # Hydra-style job log: stays, it is appended to
    run_task(make_cfg("negatives.hard_proportion=1", "run.on_config_change=fresh"), _fake_task(calls))
    assert calls == ["0.5", "1.0"]
    previous = sorted(out.glob("previous-*"))
    assert len(previous) == 1
    old = previous[0]
    assert json.loads((old / "metrics.json").read_text())["hard_proportion"] == 0.5
    assert (old / "checkpoints" / "last.ckpt").is_file()
    assert json.loads((old / run_folder.RECORD_FILE).read_text())["config"]["negatives"]["hard_proportion"] == 0.5
    assert json.loads((out / "metrics.json").read_text())["hard_proportion"] == 1.0
    assert json.loads((out / run_folder.RECORD_FILE).read_text())["config"]["negatives"]["hard_proportion"] == 1
    # a finished run reruns only when asked, and its results move aside too
    run_task(make_cfg("negatives.hard_proportion=1"), _fake_task(calls))
    assert calls == ["0.5", "1.0"]
    run_task(make_cfg("negatives.hard_proportion=1", "run.on_complete=fresh"), _fake_task(calls))
    assert calls == ["0.5", "1.0", "1.0"] and len(list(out.glob("previous-*"))) == 2


def test_a_resumed_run_keeps_its_wandb_run_and_a_fresh_one_gets_a_new_one(make_cfg: Any) -> None:
    cfg = make_cfg("negatives.hard_proportion=0.5", "logger.wandb.enabled=true")
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    assert run_folder.run_id(out) is None  # nothing claimed yet
    _claim(cfg, out)
    first = run_folder.run_id(out)
    settings = mdr.tracking.wandb_settings(build_spec(cfg), out)
    assert first and settings["id"] == first and settings["resume"] == "allow"
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "last.ckpt").write_text("state")  # interrupted: no metrics.json
    assert _claim(cfg, out).resumed
    assert run_folder.run_id(out) == first, "a resumed run must log to the same W&B run"
    moved = _claim(make_cfg("negatives.hard_proportion=1", "run.on_config_change=fresh"), out).moved_to
    assert moved is not None and json.loads((moved / run_folder.RECORD_FILE).read_text())["run_id"] == first
    second = run_folder.run_id(out)
    assert second and second != first, "a folder started afresh is another W&B run"


def test_a_failed_run_is_resumed_not_skipped_and_a_folder_without_results_takes_a_new_config(make_cfg: Any) -> None:
    calls: list[str] = []
    cfg = make_cfg("negatives.hard_proportion=abc")
    out = Path(cfg.paths.output_dir)
    with pytest.raises(DataError, match="negatives.hard_proportion"):
        run_task(cfg, train)  # fails validation: only bookkeeping files in the folder
    assert (out / "failed.json").is_file() and not (out / "checkpoints").exists()
    run_task(make_cfg("negatives.hard_proportion=0.5"), _fake_task(calls))  # the fixed config is accepted
    assert calls == ["0.5"] and not (out / "failed.json").exists()

    # a failure newer than metrics.json (a later attempt died): the folder's last outcome is a failure, so the
    # same config runs again instead of returning the stale metrics
    (out / "failed.json").write_text("{}")
    os.utime(out / "failed.json", ns=(os.stat(out / "metrics.json").st_mtime_ns + 10**9,) * 2)
    run_task(make_cfg("negatives.hard_proportion=0.5"), _fake_task(calls))
    assert calls == ["0.5", "0.5"] and not (out / "failed.json").exists()
    run_task(make_cfg("negatives.hard_proportion=0.5"), _fake_task(calls))
    assert calls == ["0.5", "0.5"], "a finished run is not run again"


def test_a_folder_made_before_records_existed_is_checked_against_its_config_yaml(make_cfg: Any) -> None:
    cfg = make_cfg("negatives.hard_proportion=0.5")
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "last.ckpt").write_text("state")
    with pytest.raises(RunFolderConflict, match=r"negatives.hard_proportion: 0.5 -> 0"):
        run_task(make_cfg("negatives.hard_proportion=0"), _fake_task([]))
    calls: list[str] = []
    run_task(cfg, _fake_task(calls))
    assert calls == ["0.5"] and (out / run_folder.RECORD_FILE).is_file()


def test_one_process_per_folder_and_ranks_above_zero_leave_the_folder_to_rank_zero(
    make_cfg: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = make_cfg()
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True)
    with run_folder.exclusive(out):
        with pytest.raises(RunFolderConflict, match="in use by another process"):
            run_task(cfg, _fake_task([]))
    monkeypatch.setenv("LOCAL_RANK", "1")
    calls: list[str] = []
    run_task(make_cfg("negatives.hard_proportion=1"), _fake_task(calls))
    assert calls == ["1.0"] and not (out / run_folder.RECORD_FILE).exists() and not (out / "config.yaml").exists()


@pytest.mark.slow  # four evaluate.py processes: ~40 s on an idle 2-core machine
def test_through_hydra_a_refused_or_finished_rerun_leaves_the_folder_as_it_was(
    tmp_path: Path, cache_dir: Path, tiny_model: Path
) -> None:
    env = {**os.environ, "MDR_DATA_DIR": str(DATA_DIR), "MDR_CACHE_DIR": str(cache_dir), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "eval"
    base = [sys.executable, str(ROOT / "evaluate.py"), "data=demo", "language=th", "logger.wandb.enabled=false"]

    def run(*overrides: str) -> subprocess.CompletedProcess:
        command = [*base, *overrides, f"hydra.run.dir={out}"]
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)

    first = run()
    assert first.returncode == 0, first.stderr[-3000:]
    hydra_files = {p.name: p.read_text() for p in (out / ".hydra").iterdir()}
    metrics = (out / "metrics.json").read_text()

    again = run("evaluation.batch_size=16")  # no effect on a result: the finished run is returned as it is
    assert again.returncode == 0 and "already complete" in again.stdout, again.stderr[-3000:]
    refused = run("evaluation.depth=10")
    assert refused.returncode != 0 and "evaluation.depth: 100 -> 10" in refused.stderr
    assert {p.name: p.read_text() for p in (out / ".hydra").iterdir()} == hydra_files, ".hydra must be restored"
    assert (out / "metrics.json").read_text() == metrics and not (out / "failed.json").exists()

    fresh = run("evaluation.depth=10", "run.on_config_change=fresh")
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    (previous,) = out.glob("previous-*")
    assert {p.name: p.read_text() for p in (previous / ".hydra").iterdir()} == hydra_files
    assert (previous / "metrics.json").read_text() == metrics
    assert "evaluation.depth=10" in (out / ".hydra" / "overrides.yaml").read_text()


def _failing_task(calls: list[str]) -> Any:
    """A task that leaves a resume checkpoint, then fails (a killed run)."""

    def task(spec: Spec) -> dict[str, Any]:
        out = Path(spec.paths.output_dir)
        calls.append(str(spec.negatives.hard_proportion))
        (out / "checkpoints").mkdir(exist_ok=True)
        (out / "checkpoints" / "last.ckpt").write_text("state")
        raise RuntimeError("killed")

    return task


def test_a_single_run_in_a_new_folder_reuses_the_newest_finished_run_of_its_config(
    make_cfg: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mdr.lifecycle")
    calls: list[str] = []
    runs = tmp_path / "runs"

    def single(folder: str, *overrides: str) -> dict[str, Any]:
        cfg = make_cfg("negatives.hard_proportion=0.5", *overrides, f"paths.output_dir={runs / folder}")
        return run_task(cfg, _fake_task(calls), runs)

    first = single("t1")
    assert calls == ["0.5"] and mdr.lifecycle.REUSED_FROM not in first
    caplog.clear()
    again = single("t2", "evaluation.batch_size=7")  # a key outside the identity: the same config
    assert calls == ["0.5"], "the finished run of this config is reused, not trained again"
    assert again[mdr.lifecycle.REUSED_FROM] == str(runs / "t1") and again["metrics"] == first["metrics"]
    assert f"a finished run of this config is at {runs / 't1'} (MRR@100=0.5000" in caplog.text
    assert sorted(p.name for p in (runs / "t2").iterdir()) == [run_folder.LOCK_FILE], "t2 records no run of its own"

    single("t3", "seed=1")  # another config runs
    assert calls == ["0.5", "0.5"]
    caplog.clear()
    single("t4", "run.on_complete=fresh")  # asked to run again: in its own folder, t1 left as it is
    assert calls == ["0.5", "0.5", "0.5"] and "run.on_complete=fresh: running again in" in caplog.text
    assert (runs / "t4" / "metrics.json").is_file() and (runs / "t1" / "metrics.json").is_file()
    os.utime(runs / "t1" / "metrics.json", (1, 1))  # t4 is now the newest finished run of the config
    assert single("t5")[mdr.lifecycle.REUSED_FROM] == str(runs / "t4") and len(calls) == 3
    # a folder the command chose (no runs_dir: hydra.run.dir given, a multirun, or composed outside Hydra) runs
    run_task(make_cfg("negatives.hard_proportion=0.5", f"paths.output_dir={runs / 'chosen'}"), _fake_task(calls))
    assert len(calls) == 4


def test_a_new_single_run_names_an_unfinished_run_of_its_config_and_trains_anew(
    make_cfg: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mdr.lifecycle")
    calls: list[str] = []
    runs = tmp_path / "runs"
    killed = make_cfg(f"paths.output_dir={runs / 'killed'}")
    with pytest.raises(RuntimeError, match="killed"):
        run_task(killed, _failing_task(calls), runs)
    caplog.clear()
    run_task(make_cfg(f"paths.output_dir={runs / 'new'}"), _fake_task(calls), runs)
    assert calls == ["0.5", "0.5"] and (runs / "new" / "metrics.json").is_file()
    assert f"an unfinished run of this config is at {runs / 'killed'}" in caplog.text
    assert f"hydra.run.dir={runs / 'killed'} resumes that one instead" in caplog.text


def test_a_finished_run_is_not_reused_once_the_weights_it_started_from_changed(
    make_cfg: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """evaluate.py checkpoint=<run>/encoder after that run was trained again (run.on_complete=fresh) in place."""
    caplog.set_level(logging.INFO, logger="mdr.lifecycle")
    calls: list[str] = []
    runs, encoder = tmp_path / "runs", tmp_path / "encoder"
    encoder.mkdir()
    (encoder / "config.json").write_text("{}")
    os.utime(encoder / "config.json", (1, 1))
    cfg = make_cfg(f"model.name_or_path={encoder}", f"paths.output_dir={runs / 'before'}")
    run_task(cfg, _fake_task(calls), runs)
    (encoder / "config.json").write_text('{"retrained": true}')  # newer than the finished run's metrics.json
    caplog.clear()
    run_task(make_cfg(f"model.name_or_path={encoder}", f"paths.output_dir={runs / 'after'}"), _fake_task(calls), runs)
    assert len(calls) == 2 and f"model.name_or_path={encoder} changed after it" in caplog.text


def test_through_hydra_the_same_single_run_command_twice_trains_once(
    tmp_path: Path, cache_dir: Path, tiny_model: Path
) -> None:
    env = {**os.environ, "MDR_DATA_DIR": str(DATA_DIR), "MDR_CACHE_DIR": str(cache_dir), "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "data=demo",
        "language=hi",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "train.batch_size=4",
        "logger.wandb.enabled=false",
    ]  # no hydra.run.dir: each command gets a new outputs/train/runs/<time> folder

    def run() -> str:
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
        return done.stdout + done.stderr

    first = run()
    (trained,) = (tmp_path / "outputs" / "train" / "runs").glob("*/metrics.json")
    assert "hi-tiny-target_only-p0.5-s0: training 1 epochs" in first
    second = run()
    folders = sorted((tmp_path / "outputs" / "train" / "runs").iterdir())
    assert len(folders) == 2 and trained.parent in folders
    assert f"a finished run of this config is at {trained.parent} (MRR@100=" in second
    assert f"-> {trained.parent} (an earlier run, reused)" in second
    assert "training 1 epochs" not in second, "nothing is trained again"
    (new,) = [folder for folder in folders if folder != trained.parent]
    assert not (new / "metrics.json").exists() and not (new / run_folder.RECORD_FILE).exists()


# --- 6. one validation pass before any expensive step -------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.batch_size=0", r"train.batch_size must be an integer >= 1, got 0"),
        ("train.token_cache=-1", r"train.token_cache must be an integer >= 0, got -1"),
        ("train.cpu_malloc_retain_mb=1.5", r"train.cpu_malloc_retain_mb must be an integer >= 0, got 1.5"),
        ("train.cpu_malloc_retain_mb=4096", r"train.cpu_malloc_retain_mb must be an integer in \[0, 2047\], got 4096"),
        ("train.cpu_malloc_retain_mb=2047", None),
        ("negatives.hard_proportion=abc", r"negatives.hard_proportion must be a number in \[0, 1\], got 'abc'"),
        ("negatives.hard_proportion=1.5", r"negatives.hard_proportion must be in \[0, 1\], got 1.5"),
        ("negatives.num_negatives=2.5", r"negatives.num_negatives must be an integer >= 0, got 2.5"),
        ("negatives.num_negatives=-1", r"negatives.num_negatives must be an integer >= 0, got -1"),
        ("train.learning_rate=0", r"train.learning_rate must be > 0, got 0"),
        ("model.query_max_length=0", r"model.query_max_length must be an integer >= 1"),
        ("negatives.pool.range_max=0", r"negatives.pool.range_max must be null or an integer >= 1"),
        ("negatives.pool.backend=lucene", r"negatives.pool.backend must be one of \['bm25s', 'pyserini'\]"),
        ("run.on_config_change=overwrite", r"run.on_config_change must be one of \['refuse', 'fresh'\]"),
        ("run.keep_checkpoints=sometimes", r"run.keep_checkpoints must be true or false, got 'sometimes'"),
        ("stage=two_stage", None),
    ],
)
def test_bad_config_values_name_their_key_before_anything_runs(
    make_cfg: Any, monkeypatch: pytest.MonkeyPatch, override: str, message: str | None
) -> None:
    cfg = make_cfg(override)
    if message is None:
        build_spec(cfg)  # a valid config passes
        return
    _no_expensive_step(monkeypatch)
    with pytest.raises(DataError, match=message):
        run_task(cfg, train)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


def test_every_problem_is_listed_at_once(make_cfg: Any) -> None:
    with pytest.raises(DataError, match=r"3 problems") as error:
        build_spec(make_cfg("train.batch_size=-2", "negatives.num_negatives=x", "seed=1.5"))
    assert "train.batch_size" in str(error.value) and "negatives.num_negatives" in str(error.value)
    assert "seed" in str(error.value)


def test_a_test_split_without_judged_queries_fails_before_training(
    make_cfg: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _dataset(tmp_path / "data", test_grade=0)
    _no_expensive_step(monkeypatch)
    with pytest.raises(DataError, match=r"data.test_split='test': none of its 2 queries has a relevant passage"):
        run_task(make_cfg(f"data.reader.root={root}"), train)


def test_more_negatives_than_the_corpus_holds_fails_before_mining(
    make_cfg: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _dataset(tmp_path / "data", passages=6)
    _no_expensive_step(monkeypatch)
    with pytest.raises(DataError, match=r"negatives.num_negatives=6 is more than the training corpus can supply"):
        run_task(make_cfg(f"data.reader.root={root}", "negatives.num_negatives=6"), train)
    with pytest.raises(AssertionError, match="expensive step"):  # 5 fit: validation lets it through
        run_task(
            make_cfg(f"data.reader.root={root}", "negatives.num_negatives=5", "negatives.hard_proportion=0.4"), train
        )


def test_a_typo_in_the_tiny_model_path_is_not_built_as_a_new_random_model(
    make_cfg: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    typo = tmp_path / "models" / "tiny-brt"
    _no_expensive_step(monkeypatch)
    with pytest.raises(DataError, match=r"model.name_or_path='.*tiny-brt' does not exist.*model.build.out_dir="):
        run_task(make_cfg(f"model.name_or_path={typo}"), train)
    assert not typo.exists()
    from mdr.utils.instantiate import ensure_model_files

    build = OmegaConf.to_container(make_cfg().model.build, resolve=True)
    with pytest.raises(DataError, match="model.build.out_dir"):
        ensure_model_files("tiny", str(typo), build)
    assert not typo.exists()


def test_a_bad_checkpoint_or_dense_encoder_names_its_own_key(
    make_cfg: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_expensive_step(monkeypatch)
    missing = tmp_path / "runs" / "no-such-run" / "encoder"
    cfg = make_cfg(f"checkpoint={missing}", f"paths.output_dir={tmp_path / 'eval'}", config_name="evaluate")
    with pytest.raises(DataError, match=r"^checkpoint='.*no-such-run/encoder' does not exist") as error:
        run_task(cfg, evaluate)
    assert "model.name_or_path" not in str(error.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"^negatives.pool.encoder='.*empty' is a folder but not a saved model"):
        run_task(make_cfg("negatives=dense", f"negatives.pool.encoder={empty}"), train)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # no network retries in the test
    with pytest.raises(DataError, match=r"^negatives.pool.encoder='no-such-org/no-such-model' is not a local folder"):
        build_spec(make_cfg("negatives=dense", "negatives.pool.encoder=no-such-org/no-such-model"))


def test_fast_dropout_on_a_model_without_sdpa_is_refused_before_mining(
    make_cfg: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import MPNetConfig  # MPNet runs its own attention, not SDPA

    _no_expensive_step(monkeypatch)
    model = tmp_path / "mpnet"
    MPNetConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(model)
    cfg = make_cfg("train.fast_dropout=true", f"model.name_or_path={model}")
    with pytest.raises(DataError, match=r"^train.fast_dropout=true: model.name_or_path='.*mpnet' does not run SDPA"):
        run_task(cfg, train)
    assert "train.fast_dropout=false" in json.loads((Path(cfg.paths.output_dir) / "failed.json").read_text())["error"]


# --- 3 + 8. the tiny model is identical on every build; the shared cache is readable by others -----------


def test_tiny_model_builds_are_byte_identical_and_readable_by_others(tmp_path: Path) -> None:
    from mdr.models.builders import build_tiny_bert

    corpus_glob = str(XQUAD_SENT / "[th][hi]" / "corpus.jsonl")  # th and hi: small, and enough for a tie
    old_umask = os.umask(0o022)
    try:
        first = build_tiny_bert(str(tmp_path / "a" / "models" / "tiny"), corpus_glob, vocab_size=3000)
        script = (
            "import sys; from mdr.models.builders import build_tiny_bert; "
            "build_tiny_bert(sys.argv[1], sys.argv[2], vocab_size=3000)"
        )
        subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / "b" / "models" / "tiny"), corpus_glob],
            check=True,
            capture_output=True,
            cwd=ROOT,
            timeout=300,
        )
    finally:
        os.umask(old_umask)
    second = tmp_path / "b" / "models" / "tiny"
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    assert {"tokenizer.json", "model.safetensors", "config.json"} <= set(names)
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), f"{name} differs between builds"
    vocab = json.loads((first / "tokenizer.json").read_text())
    assert [t["content"] for t in vocab["added_tokens"]] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    for path in (first, first.parent, *first.iterdir()):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), f"{path} has mode {oct(mode)}"


def test_building_the_model_leaves_the_callers_random_state_alone(tmp_path: Path) -> None:
    from mdr.models.builders import build_tiny_bert

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_bert(str(tmp_path / "tiny"), str(XQUAD_SENT / "th" / "corpus.jsonl"), vocab_size=500)
    assert torch.equal(torch.rand(3), expected)


# --- 7. the saved encoder's sentence-transformers config reproduces mdr's encoding -----------------------


def test_sentence_transformers_reproduces_mdr_query_and_passage_vectors(tiny_model: Path, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    from mdr.evaluation.evaluator import encode_texts
    from mdr.models.bi_encoder import BiEncoder, EncoderSettings

    settings = EncoderSettings(
        pooling="mean",
        normalize=True,
        query_max_length=8,
        passage_max_length=16,
        query_prefix="query: ",
        passage_prefix="passage: ",
    )
    encoder = BiEncoder.from_pretrained(tiny_model, settings).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    out = encoder.save_pretrained(tmp_path / "encoder", tokenizer)
    texts = ["short", "ทีมรับของแพนเธอร์สถอดใจที่คะแนน " * 4, "पैंथर्स डिफ़ेंस ने कितने अंक दिए? " * 4]
    lengths = [len(ids) for ids in tokenizer(["query: " + t for t in texts])["input_ids"]]
    assert max(lengths) > 16 and min(lengths) <= 8, "texts must straddle both lengths for the test to mean anything"

    queries = encode_texts(encoder.encode_queries, tokenizer, ["query: " + t for t in texts], 8)
    passages = encode_texts(encoder.encode_passages, tokenizer, ["passage: " + t for t in texts], 16)
    at_passage_length = encode_texts(encoder.encode_queries, tokenizer, ["query: " + t for t in texts], 16)
    assert not np.allclose(queries, at_passage_length, atol=1e-4), "query truncation must matter here"

    model = SentenceTransformer(str(out), device="cpu")
    np.testing.assert_allclose(model.encode_query(texts), queries, atol=1e-5)
    np.testing.assert_allclose(model.encode_document(texts), passages, atol=1e-5)
    saved = json.loads((out / "sentence_bert_config.json").read_text())
    assert saved["query_length"] == 8 and saved["document_length"] == saved["max_seq_length"] == 16


def _finished_folder(root: Path, encoder: bool = True) -> Path:
    (root / "checkpoints").mkdir(parents=True)
    (root / "checkpoints" / "epoch2.ckpt").write_bytes(b"x" * 1000)
    (root / "checkpoints" / "last.ckpt").symlink_to("epoch2.ckpt")
    if encoder:
        (root / "encoder").mkdir()
        (root / "encoder" / "mdr_encoder.json").write_text("{}")
    return root


def test_remove_checkpoints_frees_the_resume_state_only_when_the_encoder_holds_the_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    done = _finished_folder(tmp_path / "done")
    assert run_folder.remove_checkpoints(done, done / "encoder") == 1000  # the link counts once
    assert not (done / "checkpoints").exists() and (done / "encoder" / "mdr_encoder.json").is_file()
    kept = _finished_folder(tmp_path / "kept")
    assert run_folder.remove_checkpoints(kept, kept / "encoder", keep=True) == 0
    only = _finished_folder(tmp_path / "only", encoder=False)  # train.save_encoder=false: the only weights
    assert run_folder.remove_checkpoints(only, only / "encoder") == 0
    assert (kept / "checkpoints" / "last.ckpt").is_file() and (only / "checkpoints" / "last.ckpt").is_file()

    def refuse(path: Any) -> None:
        raise PermissionError(13, "read-only file system", str(path))

    for target, name in ((run_folder.shutil, "rmtree"), (run_folder, "_tree_bytes")):  # delete or size fails
        with monkeypatch.context() as patch:
            patch.setattr(target, name, refuse)
            stuck = _finished_folder(tmp_path / f"stuck-{name}")
            assert run_folder.remove_checkpoints(stuck, stuck / "encoder") == 0  # warns, never fails a run
            assert (stuck / "checkpoints" / "last.ckpt").is_file()
    assert caplog.text.count("could not remove") == 2
