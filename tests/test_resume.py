"""Resume and determinism: a killed run resumed from its checkpoint ends where an uninterrupted run ends."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mdr.lifecycle import run_task
from mdr.pipeline import train
from mdr.utils.io import atomic_write_json

from conftest import DATA_DIR, ROOT

ARGS = [
    "data=demo",
    "language=th",
    "trainer.max_epochs=3",
    "+trainer.limit_train_batches=6",
    "train.batch_size=8",
    "negatives.num_negatives=2",
    "trainer.enable_progress_bar=false",
    "logger.wandb.enabled=false",
]


def _command(out: Path) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), *ARGS, f"hydra.run.dir={out}"]


def _env(cache_dir: Path) -> dict[str, str]:
    return {**os.environ, "MDR_DATA_DIR": str(DATA_DIR), "MDR_CACHE_DIR": str(cache_dir)}


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def _csv_rows(out: Path) -> list[dict[str, str]]:
    with (out / "csv" / "metrics.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def _same_rows(got: list[dict[str, str]], expected: list[dict[str, str]]) -> None:
    """Same rows in the same order: epoch and step exactly, logged values to 1e-5."""
    assert [(r["epoch"], r["step"]) for r in got] == [(r["epoch"], r["step"]) for r in expected]
    for row, want in zip(got, expected):
        assert set(row) == set(want)
        for key, value in want.items():
            got_value, want_value = (float(row[key]) if row[key] else None), (float(value) if value else None)
            assert got_value == pytest.approx(want_value, abs=1e-5), (key, row, want)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_resumes_to_the_same_metrics(
    sig: signal.Signals, tmp_path: Path, cache_dir: Path, tiny_model: Path
) -> None:
    env = _env(cache_dir)
    reference = tmp_path / "reference"
    subprocess.run(_command(reference), cwd=tmp_path, env=env, check=True, capture_output=True, timeout=600)

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        _command(killed), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    checkpoint = killed / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not checkpoint.is_file() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert checkpoint.is_file(), "no epoch checkpoint appeared"
    process.send_signal(sig)  # during epoch 2 of 3
    assert process.wait(timeout=120) != 0
    assert not (killed / "metrics.json").exists(), "a killed run must not leave metrics.json"

    done = subprocess.run(_command(killed), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed, expected = _metrics(killed), _metrics(reference)
    assert resumed["train"]["resumed_from"] and expected["train"]["resumed_from"] is None
    assert 0 < resumed["train"]["resumed_at_epoch"] < 3, "the kill should land before training finished"
    assert resumed["train"]["steps"] == expected["train"]["steps"] == 18
    assert resumed["metrics"] == pytest.approx(expected["metrics"], abs=1e-5)
    assert (killed / "runs/th.trec").read_text().splitlines()[:50] == (
        reference / "runs/th.trec"
    ).read_text().splitlines()[:50]
    _same_rows(_csv_rows(killed), _csv_rows(reference))  # the pre-kill rows survive, none doubled


SHORT = ("trainer.max_epochs=2", "trainer.log_every_n_steps=2")  # 2 epochs of 4 steps, a row every 2 steps


def test_failure_during_evaluation_keeps_the_log_and_resumes_at_the_last_epoch(
    make_cfg, monkeypatch: pytest.MonkeyPatch
) -> None:  # noqa: ANN001
    import mdr.pipeline

    cfg = make_cfg(*SHORT)
    out = Path(cfg.paths.output_dir)
    evaluate_and_report = mdr.pipeline.evaluate_and_report

    def die(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
        raise RuntimeError("killed during evaluation")

    monkeypatch.setattr(mdr.pipeline, "evaluate_and_report", die)
    with pytest.raises(RuntimeError, match="killed during evaluation"):
        run_task(cfg, train)
    logged = _csv_rows(out)
    assert [row["epoch"] for row in logged if row.get("train/loss_epoch")] == ["0", "1"]
    assert not (out / "metrics.json").exists()

    monkeypatch.setattr(mdr.pipeline, "evaluate_and_report", evaluate_and_report)
    resumed = run_task(cfg, train)
    assert resumed["train"]["resumed_from"] and resumed["train"]["resumed_at_epoch"] == 2
    assert resumed["train"]["steps"] == 8
    assert _csv_rows(out) == logged, "the rerun must keep csv/metrics.csv as it was"


def test_failure_mid_training_keeps_the_rows_of_finished_epochs(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # noqa: ANN001
    from mdr.models.module import BiEncoderModule

    reference = make_cfg(*SHORT, f"paths.output_dir={tmp_path / 'reference'}")
    expected = run_task(reference, train)
    cfg = make_cfg(*SHORT)
    out = Path(cfg.paths.output_dir)
    training_step = BiEncoderModule.training_step

    def dies_in_epoch_two(self, batch, batch_idx):  # noqa: ANN001, ANN202
        if self.global_step == 6:
            raise RuntimeError("killed mid-epoch")
        return training_step(self, batch, batch_idx)

    monkeypatch.setattr(BiEncoderModule, "training_step", dies_in_epoch_two)
    with pytest.raises(RuntimeError, match="killed mid-epoch"):
        run_task(cfg, train)
    before = _csv_rows(out)
    assert {row["epoch"] for row in before} == {"0", "1"}, "rows of the finished and the interrupted epoch"

    monkeypatch.setattr(BiEncoderModule, "training_step", training_step)
    resumed = run_task(cfg, train)
    assert resumed["train"]["resumed_at_epoch"] == 1 and resumed["train"]["steps"] == 8
    after = _csv_rows(out)
    assert after[: len([r for r in before if r["epoch"] == "0"])] == [r for r in before if r["epoch"] == "0"]
    _same_rows(after, _csv_rows(Path(reference.paths.output_dir)))
    assert resumed["metrics"] == pytest.approx(expected["metrics"], abs=1e-5)


def test_same_seed_same_metrics_and_run(make_cfg, tmp_path: Path) -> None:  # noqa: ANN001
    first = run_task(make_cfg("seed=7", f"paths.output_dir={tmp_path / 'a'}"), train)
    second = run_task(make_cfg("seed=7", f"paths.output_dir={tmp_path / 'b'}"), train)
    assert first["metrics"] == second["metrics"]
    assert (tmp_path / "a/runs/th.trec").read_text() == (tmp_path / "b/runs/th.trec").read_text()
    other = run_task(make_cfg("seed=8", f"paths.output_dir={tmp_path / 'c'}"), train)
    assert other["metrics"] != first["metrics"]


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"mrr@100": 0.5})

    def crash(fd: int) -> None:  # dies after the new bytes were written to the temporary file
        raise OSError("disk vanished")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk vanished"):
        atomic_write_json(target, {"mrr@100": 0.9})
    assert json.loads(target.read_text()) == {"mrr@100": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"], "temporary file left behind"


def test_same_seed_and_epoch_give_the_same_batches(tiny_model: Path) -> None:
    from mdr.data.collator import BiEncoderCollator
    from mdr.data.datamodule import RetrievalDataModule
    from mdr.data.negatives import NegativeSampler
    from mdr.data.readers import LocalReader
    from mdr.models.bi_encoder import load_tokenizer

    from conftest import XQUAD_SENT

    split = LocalReader(XQUAD_SENT / "th", "th").load("train")
    collator = BiEncoderCollator(load_tokenizer(tiny_model), split.corpus, 32, 64)

    def first_batches(seed: int, epoch: int) -> list:
        module = RetrievalDataModule(split, {}, NegativeSampler(3, 0.0, seed=seed), collator, 16, seed=seed)
        loader = iter(module.dataloader_for_epoch(epoch))
        return [next(loader).passages.chunks[0]["input_ids"] for _ in range(3)]

    same = zip(first_batches(5, 2), first_batches(5, 2))
    assert all(a.shape == b.shape and bool((a == b).all()) for a, b in same)
    assert any(a.shape != b.shape or not bool((a == b).all()) for a, b in zip(first_batches(5, 2), first_batches(5, 3)))


ONE_LONG_EPOCH = ("trainer.max_epochs=1", "trainer.limit_train_batches=8", "trainer.log_every_n_steps=1")


def test_a_run_killed_mid_epoch_resumes_from_its_step_checkpoint_exactly(
    make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # noqa: ANN001
    """train.checkpoint_every_n_steps: one long epoch killed after step 5 resumes at step 3, ends as if never killed."""
    from mdr.models.module import BiEncoderModule
    from mdr.run_folder import checkpoint_position

    reference = make_cfg(*ONE_LONG_EPOCH, f"paths.output_dir={tmp_path / 'reference'}")  # epoch-end checkpoints only
    expected = run_task(reference, train)
    cfg = make_cfg(*ONE_LONG_EPOCH, "train.checkpoint_every_n_steps=3")
    out = Path(cfg.paths.output_dir)
    training_step = BiEncoderModule.training_step

    def dies_at_step_five(self, batch, batch_idx):  # noqa: ANN001, ANN202
        if self.global_step == 5:
            raise RuntimeError("killed mid-epoch")
        return training_step(self, batch, batch_idx)

    monkeypatch.setattr(BiEncoderModule, "training_step", dies_at_step_five)
    with pytest.raises(RuntimeError, match="killed mid-epoch"):
        run_task(cfg, train)
    position = checkpoint_position(out / "checkpoints" / "last.ckpt")
    assert position is not None and position.mid_epoch and (position.epochs, position.steps) == (0, 3)

    monkeypatch.setattr(BiEncoderModule, "training_step", training_step)
    resumed = run_task(cfg, train)
    assert resumed["train"]["resumed_at_epoch"] == 0 and resumed["train"]["resumed_at_step"] == 3
    assert resumed["train"]["steps"] == expected["train"]["steps"] == 8
    assert resumed["metrics"] == pytest.approx(expected["metrics"], abs=1e-5)
    assert (out / "runs/th.trec").read_text() == (tmp_path / "reference/runs/th.trec").read_text()
    rows, want = _csv_rows(out), _csv_rows(Path(reference.paths.output_dir))
    step_rows = [r for r in rows if r.get("train/loss")]
    assert step_rows == [r for r in want if r.get("train/loss")], "each step logged once, as uninterrupted"


@pytest.mark.parametrize("value", [0, -2, 1.5, "often", True])
def test_a_bad_checkpoint_interval_is_refused_before_any_work(make_cfg, value: object, monkeypatch) -> None:  # noqa: ANN001
    import mdr.pipeline

    monkeypatch.setattr(mdr.pipeline, "load_splits", lambda spec: pytest.fail("read data before refusing"))
    with pytest.raises(ValueError, match="train.checkpoint_every_n_steps must be null or an integer >= 1"):
        run_task(make_cfg(f"train.checkpoint_every_n_steps={value}"), train)


def test_a_resumed_loader_serves_the_rest_of_each_ranks_deal(tiny_model: Path) -> None:
    """Under DDP Lightning rebuilds the loader with a DistributedSampler: each rank still skips its own batches."""
    from lightning.fabric.utilities.data import _replace_dunder_methods
    from lightning.pytorch.utilities.data import _update_dataloader
    from torch.utils.data import DataLoader, DistributedSampler

    from mdr.data.collator import BiEncoderCollator
    from mdr.data.datamodule import RetrievalDataModule
    from mdr.data.negatives import NegativeSampler
    from mdr.data.readers import LocalReader
    from mdr.models.bi_encoder import load_tokenizer

    from conftest import XQUAD_SENT

    split = LocalReader(XQUAD_SENT / "th", "th").load("train")
    collator = BiEncoderCollator(load_tokenizer(tiny_model), split.corpus, 32, 64)
    module = RetrievalDataModule(split, {}, NegativeSampler(2, 0.0, seed=3), collator, 4, seed=3)

    def rank_batches(skip: int, rank: int) -> list:
        with _replace_dunder_methods(DataLoader, "dataset"):
            loader = module.dataloader_for_epoch(1, skip_batches=skip)
        sampler = DistributedSampler(loader.dataset, num_replicas=2, rank=rank, shuffle=False)
        loader = _update_dataloader(loader, sampler)
        assert loader.skip_batches == skip
        return [batch.queries.chunks[0]["input_ids"].tolist() for batch in loader], len(loader)

    for rank in (0, 1):
        full, full_length = rank_batches(0, rank)
        rest, length = rank_batches(5, rank)
        assert length == full_length, "the loader's length stays the epoch's (Lightning counts from the checkpoint)"
        assert rest == full[5:]


EVERY_CHECKPOINT = (  # 2 epochs of 4 steps; checkpoints at steps 2, 6 (mid-epoch) and 4, 8 (epoch ends)
    "trainer.max_epochs=2",
    "trainer.log_every_n_steps=1",
    "train.checkpoint_every_n_steps=2",
)
KILLS = {  # where the kill lands -> (epochs finished, steps done, mid-epoch) of the checkpoint resumed from
    "mid-epoch-0": (3, (0, 2, True)),
    "end-of-epoch-0": (5, (1, 4, False)),
    "mid-epoch-1": (7, (1, 6, True)),
    "end-of-training": (None, (2, 8, False)),  # None: killed during evaluation, after the last checkpoint
}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path, tiny_model: Path) -> tuple[Path, dict]:
    """One run of EVERY_CHECKPOINT never killed: the folder and its result."""
    from hydra import compose, initialize_config_dir

    out = tmp_path_factory.mktemp("uninterrupted")
    overrides = [
        f"paths.data_dir={DATA_DIR}",
        f"paths.cache_dir={cache_dir}",
        f"paths.output_dir={out}",
        "logger.wandb.enabled=false",
        "data=demo",
        "language=th",
        "trainer.enable_progress_bar=false",
        "+trainer.limit_train_batches=4",
        "train.batch_size=8",
        "negatives.num_negatives=2",
        *EVERY_CHECKPOINT,
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    return out, run_task(cfg, train)


@pytest.mark.slow
@pytest.mark.parametrize("kill", list(KILLS))
def test_a_run_killed_at_any_checkpoint_resumes_to_the_uninterrupted_result(
    kill: str,
    uninterrupted: tuple[Path, dict],
    make_cfg,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Killed after each kind of checkpoint (mid-epoch, epoch end, training's end) in every epoch: the resumed run
    logs where it resumes and ends with the uninterrupted run's metrics, run file and CSV rows."""
    import logging

    import mdr.pipeline
    from mdr.models.module import BiEncoderModule
    from mdr.run_folder import checkpoint_position

    reference, expected = uninterrupted
    dies_at, (epochs, steps, mid_epoch) = KILLS[kill]
    cfg = make_cfg(*EVERY_CHECKPOINT)
    out = Path(cfg.paths.output_dir)
    training_step, evaluate_and_report = BiEncoderModule.training_step, mdr.pipeline.evaluate_and_report

    def dies_one_step_after_a_checkpoint(self, batch, batch_idx):  # noqa: ANN001, ANN202
        if self.global_step == dies_at:  # this step's rows were not logged before the kill: the previous step's were
            raise RuntimeError("killed")
        return training_step(self, batch, batch_idx)

    def dies_during_evaluation(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
        raise RuntimeError("killed")

    if dies_at is None:
        monkeypatch.setattr(mdr.pipeline, "evaluate_and_report", dies_during_evaluation)
    else:
        monkeypatch.setattr(BiEncoderModule, "training_step", dies_one_step_after_a_checkpoint)
    with pytest.raises(RuntimeError, match="killed"):
        run_task(cfg, train)
    last = out / "checkpoints" / "last.ckpt"
    position = checkpoint_position(last)
    assert position is not None and (position.epochs, position.steps, position.mid_epoch) == (epochs, steps, mid_epoch)
    checkpoint = last.resolve()  # last.ckpt links to the checkpoint the log line names, epoch<e>-step<s>.ckpt

    monkeypatch.setattr(BiEncoderModule, "training_step", training_step)
    monkeypatch.setattr(mdr.pipeline, "evaluate_and_report", evaluate_and_report)
    with caplog.at_level(logging.INFO, logger="mdr"):
        resumed = run_task(cfg, train)
    resuming = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resuming from ")]
    where = (
        f"epoch {epochs + 1} of 2 after its first {steps - 4 * epochs} batch" if mid_epoch else f"{epochs} of 2 epoch"
    )
    assert len(resuming) == 1 and f"{checkpoint}: " in resuming[0] and checkpoint.name != last.name, resuming
    assert f"step {steps}" in resuming[0] and where in resuming[0], resuming

    assert (resumed["train"]["resumed_at_epoch"], resumed["train"]["resumed_at_step"]) == (epochs, steps)
    same = ("epochs", "steps", "train_queries", "hard_shortfall_last_epoch", "in_batch_false_negatives_masked")
    assert {key: resumed["train"][key] for key in same} == {key: expected["train"][key] for key in same}
    assert resumed["metrics"] == pytest.approx(expected["metrics"], abs=1e-6)
    assert (out / "runs/th.trec").read_text() == (reference / "runs/th.trec").read_text()
    _same_rows(_csv_rows(out), _csv_rows(reference))
