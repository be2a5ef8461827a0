"""The sweep's analysis tables and plots logged to a summary run in the sweep's W&B group (offline by default);
a W&B error is a warning, never a failed aggregate."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

log = logging.getLogger(__name__)

TABLE_NAMES = {"tests": "significance"}  # W&B keys (under ``tables/``) of tables not named as such
TIMEOUT_S = 30  # seconds W&B may take to start or to finish the summary run


def summary_settings(wandb_cfg: Mapping[str, Any], sweep_dir: Path, out: Path) -> dict[str, Any]:
    """``wandb.init`` arguments of the summary run in the sweep's group (``logger.wandb.group``, else the sweep
    folder's name), its id from project and group so that aggregating again updates it."""
    project = wandb_cfg.get("project") or "mdr"
    group = wandb_cfg.get("group") or Path(sweep_dir).name
    return {
        "id": "summary-" + hashlib.sha1(f"{project}/{group}".encode()).hexdigest()[:12],
        "resume": "allow",
        "project": project,
        "entity": wandb_cfg.get("entity"),
        "group": group,
        "mode": wandb_cfg.get("mode") or "offline",
        "name": "summary",
        "job_type": "aggregate",
        "dir": str(out),
    }


def settings_from_sweep(sweep_dir: Path, out: str | Path | None = None) -> dict[str, Any]:
    """:func:`summary_settings` from the sweep's ``multirun.yaml`` (``logger.wandb``), defaults if it has none."""
    path = Path(sweep_dir) / "multirun.yaml"
    loaded = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    wandb_cfg = ((loaded or {}).get("logger") or {}).get("wandb") or {}
    return summary_settings(wandb_cfg, Path(sweep_dir), Path(out) if out is not None else Path(sweep_dir))


def _table_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with text columns as str or None (W&B Tables refuse a column that mixes types)."""
    texts = [column for column in frame.columns if frame[column].dtype == object]
    return frame.assign(
        **{column: [None if v is None or v != v else str(v) for v in frame[column]] for column in texts}
    )


def publish_summary(
    settings: dict[str, Any], tables: dict[str, pd.DataFrame], plots: list[Path], summary: dict[str, Any]
) -> str | None:
    """Log ``tables`` and ``plots`` to a summary run; its folder, None when W&B is disabled or failed (a warning)."""
    if settings.get("mode") == "disabled":
        return None
    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        import wandb

        if wandb.run is not None:  # a job's run left open: it must not swallow the summary
            wandb.finish()
        Path(settings["dir"]).mkdir(parents=True, exist_ok=True)
        run = wandb.init(
            **settings,
            config={key: summary[key] for key in ("sweep_dir", "completed", "failed", "missing") if key in summary},
            settings=wandb.Settings(
                init_timeout=TIMEOUT_S, finish_timeout=TIMEOUT_S, silent=True, x_disable_stats=True
            ),
        )
        payload: dict[str, Any] = {
            f"tables/{TABLE_NAMES.get(name, name)}": wandb.Table(dataframe=_table_frame(frame))
            for name, frame in tables.items()
            if not frame.empty
        }
        payload.update({f"plots/{path.stem}": wandb.Image(str(path)) for path in plots})
        run.log(payload)
        counts = ("completed", "failed", "missing", "invalid", "conflicts", "duplicates")
        run.summary.update({key: summary[key] for key in counts if key in summary})
        folder = str(Path(run.dir).parent)
        run.finish()
    except Exception as error:  # noqa: BLE001 - the report is written; W&B is a copy of it
        log.warning("W&B summary run not written (%s: %s); the report files are complete", type(error).__name__, error)
        return None
    log.info("W&B summary run (group %s, %s): %s", settings["group"], settings["mode"], folder)
    return folder
