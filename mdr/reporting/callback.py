"""Hydra callback: aggregate a multirun when it ends, print its table, and exit 1 unless every job succeeded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from mdr.utils.logging import get_logger

log = get_logger(__name__)

EXIT_INCOMPLETE = 1  # a failed, missing, invalid or conflicting job, or a failed aggregation


class AggregateOnMultirunEnd(Callback):
    """Aggregates ``hydra.sweep.dir`` after the last job (to W&B with ``logger.wandb.enabled``) and prints it; raises
    ``SystemExit`` (Hydra makes a callback's ``Exception`` a warning) when a job or the aggregation failed."""

    def __init__(self, equivalence_margin: float = 0.01) -> None:
        # Hydra builds its callbacks before the first job: a bad margin stops the sweep before any work
        number = isinstance(equivalence_margin, (int, float)) and not isinstance(equivalence_margin, bool)
        if not (number and equivalence_margin > 0):
            raise ValueError(
                f"hydra.callbacks.aggregate.equivalence_margin must be a number > 0, got {equivalence_margin!r}"
            )
        self.equivalence_margin = float(equivalence_margin)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from mdr.reporting.aggregate import aggregate, exit_status, summary_settings

        if config.get("run", {}).get("stages_only", False):
            log.info("run.stages_only: the cached stages are trained; rerun the command without it for the cells")
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        wandb_cfg = OmegaConf.select(config, "logger.wandb", default=None)
        wandb = None
        if wandb_cfg is not None and wandb_cfg.get("enabled", False):
            wandb = summary_settings(OmegaConf.to_container(wandb_cfg, resolve=True), sweep_dir, sweep_dir)
        try:
            summary = aggregate(sweep_dir, self.equivalence_margin, wandb=wandb)
        except Exception:
            log.exception("aggregating the multirun in %s failed", sweep_dir)
            raise SystemExit(EXIT_INCOMPLETE) from None
        print(console_summary(summary), flush=True)
        if exit_status(summary):
            counts = (summary["failed"], summary["missing"], summary.get("invalid", 0), summary.get("conflicts", 0))
            log.error("%d job(s) failed, %d missing, %d invalid and %d in conflict: see %s", *counts, summary["table"])
            raise SystemExit(EXIT_INCOMPLETE)


def console_summary(summary: dict[str, Any]) -> str:
    """What a finished multirun prints: the counts, the table of cell means, and where the report and plot are."""
    lines = [summary["status"], *(["", summary["headline"]] if summary.get("headline") else [])]
    lines += ["", f"full report: {summary['table']}", *(f"plot: {path}" for path in summary.get("plots", []))]
    return "\n".join(lines + ([f"W&B summary run: {summary['wandb']}"] if summary.get("wandb") else []))
