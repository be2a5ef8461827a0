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
    """The sweep folder's name for a multirun job, else the run folder's: the W&B group of a sweep's runs."""
    if in_multirun():
        return Path(HydraConfig.get().sweep.dir).name
    return out.parent.name if out.parent.parent.name == "multiruns" else out.name


def run_name(spec: Spec, stage: Stage | None = None) -> str:
    """A readable name: language, model, stage, proportion (``-``: nothing trains), seed; with ``stage``: its own."""
    code = stage.sources[0].code if stage is not None and len(stage.sources) == 1 else spec.language.code
    schedule = spec.schedule.name if spec.schedule is not None else "eval"
    negatives = stage.negatives if stage is not None else spec.negatives if spec.trains else None
    proportion = f"{negatives.hard_proportion:g}" if negatives is not None else "-"
    return f"{code}-{spec.model.name}-{schedule}-p{proportion}-s{spec.seed}"


def wandb_settings(spec: Spec, out: Path) -> dict[str, Any]:
    """``WandbLogger`` / ``wandb.init`` arguments: one group per sweep, every attempt of a run in one W&B run."""
    logger = spec.logger
    os.environ.setdefault("WANDB_SILENT", "true")
    resume = {"id": identity, "resume": "allow"} if (identity := run_folder.run_id(out)) else {}
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
    """CSV always (kept across resume); W&B where ``logger.wandb.enabled`` and ``wandb``."""
    loggers: list[Any] = [ResumableCSVLogger(out)]
    if wandb and spec.logger.wandb_enabled:
        from lightning.pytorch.loggers import WandbLogger

        settings = wandb_settings(spec, out)
        settings["save_dir"] = settings.pop("dir")
        loggers.append(drop_unset_wandb_anonymous(WandbLogger(**settings)))
    return loggers


def publish_to_wandb(spec: Spec, out: Path, payload: dict[str, Any]) -> None:
    """Put the test metrics and the cell into the run's W&B summary and close the run (for the next multirun job)."""
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
    """Lightning's CSV writer, keeping an existing metrics.csv's rows before (epoch, step) ``keep``, not deleting it."""

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
    """``<out>/csv/metrics.csv``, written at every row; on resume from ``checkpoints/last.ckpt`` earlier rows stay."""

    def __init__(self, out: Path) -> None:
        super().__init__(save_dir=str(out), name="csv", version="", flush_logs_every_n_steps=1)
        last = out / "checkpoints" / "last.ckpt"
        position = run_folder.checkpoint_position(last) if last.is_file() else None
        self.keep: tuple[int, int | None] = (1 << 30, None) if last.is_file() else (0, None)  # position unknown: all
        if position is not None:
            self.keep = position.epochs, position.steps if position.mid_epoch else None

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(self.log_dir, self.keep)
        return self._experiment
