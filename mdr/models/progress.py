"""A training job's progress log line every N steps or M seconds (whichever first), and when it starts and ends:
``<run>: epoch e/E step s/S (p%) loss L r steps/s ETA t`` (loss: mean since the last line; rate: since the start)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch

from mdr.utils.logging import get_logger

log = get_logger(__name__)


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m`` (``?`` for an unknown or infinite time)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _loss_of(outputs: Any) -> torch.Tensor | None:
    """The step's loss from ``training_step``'s output (a tensor, or a dict holding ``loss``)."""
    if isinstance(outputs, dict):
        outputs = outputs.get("loss")
    return outputs.detach().float() if isinstance(outputs, torch.Tensor) else None


class ProgressLog(pl.Callback):
    """Logs a training job's progress as plain lines named by ``label`` (a None trigger is off)."""

    def __init__(
        self,
        label: str,
        every_n_steps: int | None = 500,
        every_seconds: float | None = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label, self.every_n_steps, self.every_seconds, self.clock = label, every_n_steps, every_seconds, clock
        self.started = self.last_time = 0.0
        self.start_step = self.last_step = 0
        self.total: float = 0
        self._loss_sum: torch.Tensor | None = None
        self._loss_count = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.started = self.last_time = self.clock()
        self.start_step = self.last_step = int(trainer.global_step)
        self.total = trainer.estimated_stepping_batches
        resumed = f", resuming at epoch {trainer.current_epoch + 1} step {self.start_step}" if self.start_step else ""
        world = f" x {trainer.world_size} processes" if trainer.world_size > 1 else ""
        steps = f"{_epochs(trainer)} epochs x {trainer.num_training_batches} steps = {self.total} steps"
        log.info(
            f"{self.label}: training {steps} on {trainer.strategy.root_device}{world} ({trainer.precision}){resumed}"
        )

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = _loss_of(outputs)
        if loss is not None:  # summed on the device: no synchronisation until a line is written
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
            self._loss_count += 1
        step, now = int(trainer.global_step), self.clock()
        due_steps = self.every_n_steps is not None and step - self.last_step >= self.every_n_steps
        due_time = self.every_seconds is not None and now - self.last_time >= self.every_seconds
        if step > self.last_step and (due_steps or due_time):
            self._line(trainer, step, now)

    def _line(self, trainer: pl.Trainer, step: int, now: float) -> None:
        rate = (step - self.start_step) / max(now - self.started, 1e-9)
        loss = f"{float(self._loss_sum) / self._loss_count:.4f}" if self._loss_sum is not None else "?"
        share = f" ({100 * step / self.total:.0f}%)" if math.isfinite(self.total) and self.total else ""
        eta = duration((self.total - step) / rate if rate > 0 else math.inf)
        where = f"epoch {trainer.current_epoch + 1}/{_epochs(trainer)} step {step}/{self.total}{share}"
        log.info(f"{self.label}: {where} loss {loss} {rate:.2f} steps/s ETA {eta}")
        self.last_step, self.last_time = step, now
        self._loss_sum, self._loss_count = None, 0

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        elapsed = self.clock() - self.started
        rate = (int(trainer.global_step) - self.start_step) / max(elapsed, 1e-9)
        done = f"{trainer.current_epoch} epochs, {int(trainer.global_step)} steps in {duration(elapsed)}"
        log.info(f"{self.label}: training done: {done} ({rate:.2f} steps/s)")


def _epochs(trainer: pl.Trainer) -> Any:
    """The trainer's epoch count, ``?`` when unbounded."""
    return trainer.max_epochs if trainer.max_epochs not in (None, -1) else "?"
