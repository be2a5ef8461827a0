"""mdr.models.progress.ProgressLog: a training job's progress as log lines, with or without a progress bar."""

from __future__ import annotations

import logging
import re
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel
from omegaconf import OmegaConf

from mdr.models.progress import ProgressLog, duration
from mdr.validation import config_problems

LOGGER = "mdr.models.progress"


def _trainer(**fields: Any) -> SimpleNamespace:
    base = {
        "global_step": 0,
        "current_epoch": 0,
        "max_epochs": 2,
        "estimated_stepping_batches": 10,
        "num_training_batches": 5,
        "strategy": SimpleNamespace(root_device=torch.device("cpu")),
        "precision": "bf16-mixed",
        "world_size": 1,
    }
    return SimpleNamespace(**{**base, **fields})


def _run(callback: ProgressLog, clock: list[float], trainer: SimpleNamespace, losses: list[float]) -> None:
    """Drive ``callback`` through one training: a step per loss, one second per step."""
    callback.on_train_start(trainer, None)  # type: ignore[arg-type]
    for index, loss in enumerate(losses):
        clock[0] += 1.0
        trainer.global_step += 1
        trainer.current_epoch = index // trainer.num_training_batches
        callback.on_train_batch_end(trainer, None, torch.tensor(loss), None, index)  # type: ignore[arg-type]
    trainer.current_epoch = trainer.max_epochs
    callback.on_train_end(trainer, None)  # type: ignore[arg-type]


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == LOGGER]


def test_a_line_every_n_steps_with_epoch_step_loss_rate_and_eta(caplog: pytest.LogCaptureFixture) -> None:
    clock = [100.0]
    callback = ProgressLog("th-tiny", every_n_steps=3, every_seconds=None, clock=lambda: clock[0])
    with caplog.at_level(logging.INFO, logger=LOGGER):
        _run(callback, clock, _trainer(), [1.0, 2.0, 3.0, 4.0, 4.0, 4.0, 1.0, 1.0, 1.0, 1.0])
    assert _messages(caplog) == [
        "th-tiny: training 2 epochs x 5 steps = 10 steps on cpu (bf16-mixed)",
        "th-tiny: epoch 1/2 step 3/10 (30%) loss 2.0000 1.00 steps/s ETA 7s",  # loss: mean of steps 1-3
        "th-tiny: epoch 2/2 step 6/10 (60%) loss 4.0000 1.00 steps/s ETA 4s",
        "th-tiny: epoch 2/2 step 9/10 (90%) loss 1.0000 1.00 steps/s ETA 1s",
        "th-tiny: training done: 2 epochs, 10 steps in 10s (1.00 steps/s)",
    ]


def test_a_line_every_m_seconds_when_steps_are_slow(caplog: pytest.LogCaptureFixture) -> None:
    clock = [0.0]
    callback = ProgressLog("job", every_n_steps=None, every_seconds=2.5, clock=lambda: clock[0])
    with caplog.at_level(logging.INFO, logger=LOGGER):
        _run(callback, clock, _trainer(estimated_stepping_batches=6, num_training_batches=3), [1.0] * 6)
    steps = [re.search(r"step (\d+)/6", m).group(1) for m in _messages(caplog) if " step " in m]  # type: ignore[union-attr]
    assert steps == ["3", "6"]


def test_a_resumed_job_says_where_it_resumed_and_counts_its_rate_from_there(caplog: pytest.LogCaptureFixture) -> None:
    clock = [0.0]
    callback = ProgressLog("job", every_n_steps=2, every_seconds=None, clock=lambda: clock[0])
    trainer = _trainer(global_step=5, current_epoch=1)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        callback.on_train_start(trainer, None)  # type: ignore[arg-type]
        for _ in range(2):
            clock[0] += 2.0
            trainer.global_step += 1
            callback.on_train_batch_end(trainer, None, {"loss": torch.tensor(0.5)}, None, 0)  # type: ignore[arg-type]
    assert _messages(caplog) == [
        "job: training 2 epochs x 5 steps = 10 steps on cpu (bf16-mixed), resuming at epoch 2 step 5",
        "job: epoch 2/2 step 7/10 (70%) loss 0.5000 0.50 steps/s ETA 6s",
    ]


def test_a_real_trainer_without_progress_bar_logs_progress(caplog: pytest.LogCaptureFixture) -> None:
    trainer = pl.Trainer(
        max_epochs=2,
        limit_train_batches=3,
        limit_val_batches=0,
        callbacks=[ProgressLog("boring", every_n_steps=2, every_seconds=None)],
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        logger=False,
        accelerator="cpu",
    )
    with caplog.at_level(logging.INFO, logger=LOGGER):
        trainer.fit(BoringModel())
    messages = _messages(caplog)
    assert messages[0] == "boring: training 2 epochs x 3 steps = 6 steps on cpu (32-true)"
    line = re.compile(r"boring: epoch (\d)/2 step (\d)/6 \(\d+%\) loss \d+\.\d{4} [\d.]+ steps/s ETA \S+")
    found = [line.fullmatch(m) for m in messages if " step " in m]
    assert [m.groups() if m else None for m in found] == [("1", "2"), ("2", "4"), ("2", "6")]
    assert re.fullmatch(r"boring: training done: 2 epochs, 6 steps in \S+ \([\d.]+ steps/s\)", messages[-1])


@pytest.mark.parametrize(
    ("seconds", "text"), [(42.4, "42s"), (185, "3m05s"), (3720, "1h02m"), (float("inf"), "?"), (-1, "?")]
)
def test_duration(seconds: float, text: str) -> None:
    assert duration(seconds) == text


@pytest.mark.parametrize(
    ("progress", "problems"),
    [
        ({"every_n_steps": 50, "every_seconds": 60}, []),
        ({"every_n_steps": None, "every_seconds": None}, []),
        (
            {"every_n_steps": 0, "every_seconds": 60},
            ["logger.progress.every_n_steps must be null or an integer >= 1, got 0"],
        ),
        ({"every_n_steps": 5, "every_seconds": "often"},
         ["logger.progress.every_seconds must be a number > 0, got 'often'"]),
        ({"every_n_steps": 5, "every_seconds": 0}, ["logger.progress.every_seconds must be > 0, got 0"]),
    ],
)  # fmt: skip
def test_progress_settings_are_validated_before_any_work(progress: dict[str, Any], problems: list[str]) -> None:
    from test_validation import _compose

    cfg = _compose()
    cfg.logger.progress = OmegaConf.create(progress)
    assert config_problems(cfg) == problems
