"""Tracking a run: its readable name, its sweep's name, the CSV and W&B loggers, the W&B summary."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from mdr import run_folder
from mdr.cluster import in_multirun
from mdr.spec import Spec, Stage
from mdr.utils.io import atomic_write_text
from mdr.utils.logging import get_logger
from mdr.utils.quiet import drop_unset_wandb_anonymous

log = get_logger(__name__)


def sweep_name(out: Path) -> str:
    """The sweep folder's name (``hydra.sweep.dir``, wherever it is) for a multirun job, the run folder's
    otherwise: a sweep's jobs and its summary run (:mod:`mdr.reporting.wandb_summary`) share one W&B group."""
    if in_multirun():
        return Path(HydraConfig.get().sweep.dir).name
    return out.parent.name if out.parent.parent.name == "multiruns" else out.name


def run_name(spec: Spec, stage: Stage | None = None) -> str:
    """A readable run name: language, model, stage, proportion (``-`` where nothing trains), seed; with ``stage``:
    that stage's (its one source's language, its proportion)."""
    code = stage.sources[0].code if stage is not None and len(stage.sources) == 1 else spec.language.code
    schedule = spec.schedule.name if spec.schedule is not None else "eval"
    negatives = stage.negatives if stage is not None else spec.negatives if spec.trains else None
    proportion = f"{negatives.hard_proportion:g}" if negatives is not None else "-"
    return f"{code}-{spec.model.name}-{schedule}-p{proportion}-s{spec.seed}"


def wandb_settings(spec: Spec, out: Path) -> dict[str, Any]:
    """Keyword arguments shared by ``WandbLogger`` and ``wandb.init``: one group per sweep, offline by default, the
    run folder's id with ``resume="allow"`` (every attempt of a resumed run logs to one W&B run)."""
    logger = spec.logger
    os.environ.setdefault("WANDB_SILENT", "true")
    identity = run_folder.run_id(out)
    resume = {"id": identity, "resume": "allow"} if identity else {}
    return {
        **resume,
        "project": logger.wandb_project,
        "entity": logger.wandb_entity,
        "group": logger.wandb_group or sweep_name(out),
        "name": run_name(spec),
        "dir": str(out),
        "mode": logger.wandb_mode,
        "job_type": spec.task_name,
        "config": dict(spec.resolved),
    }


def build_loggers(spec: Spec, out: Path, wandb: bool = True) -> list[Any]:
    """CSV always (kept across resume: :func:`csv_logger`); W&B (where ``logger.wandb.enabled`` and ``wandb``)
    grouped by the multirun folder."""
    loggers: list[Any] = [csv_logger(out)]
    if wandb and spec.logger.wandb_enabled:
        from lightning.pytorch.loggers import WandbLogger

        settings = wandb_settings(spec, out)
        settings["save_dir"] = settings.pop("dir")
        loggers.append(drop_unset_wandb_anonymous(WandbLogger(**settings)))
    return loggers


def publish_to_wandb(spec: Spec, out: Path, payload: dict[str, Any]) -> None:
    """Put the test metrics and the cell into the run's W&B summary and close the run (a multirun's jobs share one
    process: an open run would swallow the next job's logs)."""
    if not spec.logger.wandb_enabled:
        return
    import wandb

    if wandb.run is None:  # zero-shot / evaluate.py: no training logger opened a run
        wandb.init(**wandb_settings(spec, out))
    summary = {f"test/{name}": value for name, value in payload["metrics"].items()}
    for code, section in payload.get("per_language", {}).items():  # evaluation.languages
        summary.update({f"test/{code}/{name}": value for name, value in section["metrics"].items()})
    summary.update({key: payload[key] for key in ("language", "model", "stage", "hard_proportion", "seed")})
    wandb.run.summary.update(summary)
    wandb.finish()


class _KeepingWriter(ExperimentWriter):
    """Lightning's CSV writer, but an existing metrics.csv keeps its rows before epoch ``keep_epochs`` (and, with
    ``keep_steps``, a mid-epoch checkpoint's, that epoch's rows below that step) instead of being deleted."""

    def __init__(self, log_dir: str, keep: tuple[int, int | None]) -> None:
        self.keep_epochs, self.keep_steps = keep
        super().__init__(log_dir)

    def _kept(self, row: dict[str, str]) -> bool:
        epoch = int(float(row["epoch"])) if row.get("epoch") else -1
        step = int(float(row["step"])) if self.keep_steps is not None and row.get("step") else None
        return epoch < self.keep_epochs or (epoch == self.keep_epochs and step is not None and step < self.keep_steps)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header, rows = list(reader.fieldnames or []), list(reader)
        kept = [row for row in rows if self._kept(row)]
        if len(kept) < len(rows):
            counts = (path, len(rows) - len(kept), len(kept))
            log.info("%s: dropped %d row(s) of the interrupted epoch (logged again on resume), kept %d", *counts)
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\r\n")
            writer.writeheader()
            writer.writerows(kept)
            atomic_write_text(path, buffer.getvalue())
        self.metrics_keys = sorted(header)


class ResumableCSVLogger(CSVLogger):
    """CSV log that survives resume (see :func:`csv_logger`), written through at every row (a kill loses none)."""

    def __init__(self, save_dir: str, keep_epochs: int, keep_steps: int | None = None) -> None:
        super().__init__(save_dir=save_dir, name="csv", version="", flush_logs_every_n_steps=1)
        self.keep = keep_epochs, keep_steps

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(self.log_dir, self.keep)
        return self._experiment


def csv_logger(out: Path) -> ResumableCSVLogger:
    """``<out>/csv/metrics.csv``; on resume from ``checkpoints/last.ckpt`` the rows logged before it are kept."""
    last = out / "checkpoints" / "last.ckpt"
    keep, steps = 0, None
    if last.is_file():
        position = run_folder.checkpoint_position(last)
        keep = position.epochs if position is not None else 1 << 30  # unknown: keep every row rather than lose any
        steps = position.steps if position is not None and position.mid_epoch else None
    return ResumableCSVLogger(save_dir=str(out), keep_epochs=keep, keep_steps=steps)
