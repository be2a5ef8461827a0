"""What a run prints: progress and results, none of the library messages a user cannot act on (mdr.utils.quiet)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
from hydra import compose, initialize_config_dir
from lightning.pytorch.utilities.model_helpers import is_overridden

from mdr.data.datamodule import RetrievalDataModule
from mdr.lifecycle import entry_point
from mdr.models.module import BiEncoderModule

from conftest import DATA_DIR, ROOT

UNACTIONABLE = (
    "litlogger",
    "LeafSpec",
    "transfer_batch_to_device",
    "faiss.loader",
    "Could not load library",
    "Writing model shards",
    "Loading weights",
    "anonymous setting",
    "GPU available",
    "TPU available",
    "Automatic Mixed Precision",
    "estimate number of stepping batches",
    "`srun` command",
)


def test_batches_are_moved_by_the_datamodule_alone() -> None:
    """Lightning warns when the LightningModule overrides the hook while a LightningDataModule is passed."""
    assert is_overridden("transfer_batch_to_device", RetrievalDataModule, parent=pl.LightningDataModule)
    assert not is_overridden("transfer_batch_to_device", BiEncoderModule, parent=pl.LightningModule)


def test_a_training_run_prints_progress_and_a_summary_and_no_library_noise(
    tmp_path: Path, cache_dir: Path, tiny_model: Path
) -> None:
    env = {**os.environ, "MDR_DATA_DIR": str(DATA_DIR), "MDR_CACHE_DIR": str(cache_dir), "WANDB_MODE": "offline"}
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "data=demo",
        "language=hi",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "train.batch_size=4",
        "logger.progress.every_n_steps=1",
        f"hydra.run.dir={tmp_path / 'cli'}",
    ]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    console = done.stdout + done.stderr
    assert done.returncode == 0, console[-3000:]
    name = "hi-tiny-target_only-p0.5-s0"
    assert f"{name}: training 1 epochs x 2 steps = 2 steps on cpu (" in console
    for step in (1, 2):
        assert re.search(rf"{name}: epoch 1/1 step {step}/2 \(\d+%\) loss \d+\.\d+ [\d.]+ steps/s ETA \S+", console)
    assert re.search(rf"{name}: training done: 1 epochs, 2 steps in \S+", console)
    assert re.search(rf"\[mdr\] done {name} in \S+: MRR@100=0\.\d{{4}} -> {re.escape(str(tmp_path / 'cli'))}", console)
    assert list((tmp_path / "cli" / "wandb").glob("offline-run-*")), "W&B was on: its logger ran"
    assert "v_num" not in console and not re.search(r"Epoch \d+:", console), "Lightning's bar is off by default"
    noise = [line for line in console.splitlines() if any(text in line for text in UNACTIONABLE)]
    assert not noise, "\n".join(noise)


def test_a_finished_job_prints_one_summary_line_and_a_failed_one_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    overrides = [f"paths.output_dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'cache'}"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*overrides, "logger.wandb.enabled=false"])
    assert entry_point(cfg, lambda _: {"metrics": {"mrr@100": 0.25}}) == 0.25
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[mdr] done")]
    assert lines == [f"[mdr] done th-tiny-target_only-p0.5-s0 in 0s: MRR@100=0.2500 -> {tmp_path / 'run'}"]

    def fail(_: object) -> dict[str, object]:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        entry_point(cfg, fail)
    assert "[mdr] done" not in capsys.readouterr().out
