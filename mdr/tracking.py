"""Tracking a run: its readable name, its sweep's name, the CSV and W&B loggers, the W&B summary."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mdr import run_folder
from mdr.utils.quiet import drop_unset_wandb_anonymous


def in_multirun() -> bool:
    """True inside a Hydra multirun job."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def sweep_name(out: Path) -> str:
    """The sweep folder's name (``hydra.sweep.dir``, wherever it is) for a multirun job, the run folder's
    otherwise: a sweep's jobs and its summary run (:mod:`mdr.reporting.wandb_summary`) share one W&B group."""
    if in_multirun():
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().sweep.dir).name
    return out.parent.name if out.parent.parent.name == "multiruns" else out.name


def run_name(cfg: DictConfig) -> str:
    """A readable run name: language, model, stage, proportion (one spelling; ``-`` where nothing trains), seed."""
    stage = cfg.stage.name if cfg.get("stage") else "eval"
    proportion = f"{float(cfg.negatives.hard_proportion):g}" if trained_any(cfg) else "-"
    return f"{cfg.language.code}-{cfg.model.name}-{stage}-p{proportion}-s{cfg.seed}"


def trained_any(cfg: DictConfig) -> bool:
    """Whether the run's schedule trains at all (not ``stage=zero_shot``, not evaluate.py)."""
    stage = cfg.get("stage")  # the listed stages, not resolved: a stage's own derived config must pass too
    return cfg.get("negatives") is not None and stage is not None and bool(stage.get("stages"))


def wandb_settings(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Keyword arguments shared by ``WandbLogger`` and ``wandb.init``: one group per sweep, offline by default.

    The W&B run id is the run folder's (:func:`mdr.run_folder.run_id`) with ``resume="allow"``: every attempt of a
    resumed run logs to one W&B run (offline, ``wandb sync`` merges the attempts' folders into it).
    """
    wandb_cfg = cfg.logger.wandb
    os.environ.setdefault("WANDB_SILENT", "true")
    identity = run_folder.run_id(out)
    resume = {"id": identity, "resume": "allow"} if identity else {}
    return {
        **resume,
        "project": wandb_cfg.project,
        "entity": wandb_cfg.entity,
        "group": wandb_cfg.group or sweep_name(out),
        "name": run_name(cfg),
        "dir": str(out),
        "mode": wandb_cfg.mode,
        "job_type": cfg.task_name,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }


def build_loggers(cfg: DictConfig, out: Path) -> list[Any]:
    """CSV always (kept across resume: :func:`mdr.run_folder.csv_logger`); W&B grouped by the multirun folder."""
    loggers: list[Any] = [run_folder.csv_logger(out)]
    if cfg.logger.wandb.enabled:
        from lightning.pytorch.loggers import WandbLogger

        settings = wandb_settings(cfg, out)
        settings["save_dir"] = settings.pop("dir")
        loggers.append(drop_unset_wandb_anonymous(WandbLogger(**settings)))
    return loggers


def publish_to_wandb(cfg: DictConfig, out: Path, payload: dict[str, Any]) -> None:
    """Put the test metrics and the cell into the run's W&B summary and close the run.

    Closing matters in a multirun: jobs share one process, and an open run would swallow the next job's logs.
    """
    if not cfg.logger.wandb.enabled:
        return
    import wandb

    if wandb.run is None:  # zero-shot / evaluate.py: no training logger opened a run
        wandb.init(**wandb_settings(cfg, out))
    summary = {f"test/{name}": value for name, value in payload["metrics"].items()}
    for code, section in payload.get("per_language", {}).items():  # evaluation.languages
        summary.update({f"test/{code}/{name}": value for name, value in section["metrics"].items()})
    summary.update({key: payload[key] for key in ("language", "model", "stage", "hard_proportion", "seed")})
    wandb.run.summary.update(summary)
    wandb.finish()
