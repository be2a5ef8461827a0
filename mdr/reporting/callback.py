"""Hydra callback: aggregate a multirun when it ends, print its table, and exit non-zero unless every job
succeeded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from mdr.utils.logging import get_logger

log = get_logger(__name__)

EXIT_INCOMPLETE = 1
"""Exit status of a multirun with a failed, missing, invalid or conflicting job, or whose aggregation failed."""


class AggregateOnMultirunEnd(Callback):
    """Runs :func:`mdr.reporting.aggregate.aggregate` on ``hydra.sweep.dir`` after the last job.

    Prints results.md's table of cell means, where the plot and the full report are, and, with
    ``logger.wandb.enabled``, logs the tables and plot to a summary run of the sweep's W&B group
    (:mod:`mdr.reporting.wandb_summary`).

    Hydra turns an ``Exception`` raised by a callback into a warning (``hydra._internal.callbacks``), so the
    sweep's exit status is set with ``SystemExit`` (not an ``Exception``: it passes through Hydra and ends
    ``python train.py -m ...`` with status 1) when a job failed, is missing, invalid or in a conflict, or the
    aggregation itself failed.
    """

    def __init__(self, equivalence_margin: float = 0.01) -> None:
        # Hydra builds its callbacks before the first job: a bad margin stops the sweep before any work
        if isinstance(equivalence_margin, bool) or not isinstance(equivalence_margin, (int, float)):
            raise ValueError(
                f"hydra.callbacks.aggregate.equivalence_margin must be a number > 0, got {equivalence_margin!r}"
            )
        if not equivalence_margin > 0:
            raise ValueError(f"hydra.callbacks.aggregate.equivalence_margin must be > 0, got {equivalence_margin}")
        self.equivalence_margin = float(equivalence_margin)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from mdr.reporting.aggregate import aggregate, exit_status
        from mdr.reporting.wandb_summary import summary_settings

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
            log.error(
                "%d job(s) failed, %d missing, %d invalid and %d in conflict: see %s",
                summary["failed"],
                summary["missing"],
                summary.get("invalid", 0),
                summary.get("conflicts", 0),
                summary["table"],
            )
            raise SystemExit(EXIT_INCOMPLETE)


def console_summary(summary: dict[str, Any]) -> str:
    """What a finished multirun prints: the counts, the table of cell means, and where the report and plot are."""
    lines = [summary["status"]]
    if summary.get("headline"):
        lines += ["", summary["headline"]]
    lines += ["", f"full report: {summary['table']}"]
    lines += [f"plot: {path}" for path in summary.get("plots", [])]
    if summary.get("wandb"):
        lines.append(f"W&B summary run: {summary['wandb']}")
    return "\n".join(lines)
