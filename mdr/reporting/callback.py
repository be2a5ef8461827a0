"""Hydra callback: aggregate a multirun when it ends, and exit non-zero unless every job succeeded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from mdr.utils.logging import get_logger

log = get_logger(__name__)

EXIT_INCOMPLETE = 1
"""Exit status of a multirun with a failed or missing job, or whose aggregation failed."""


class AggregateOnMultirunEnd(Callback):
    """Runs :func:`mdr.reporting.aggregate.aggregate` on ``hydra.sweep.dir`` after the last job.

    Hydra turns an ``Exception`` raised by a callback into a warning (``hydra._internal.callbacks``), so the
    sweep's exit status is set with ``SystemExit`` (not an ``Exception``: it passes through Hydra and ends
    ``python train.py -m ...`` with status 1) when a job failed or is missing, or the aggregation itself failed.
    """

    def __init__(self, trials: int = 10_000) -> None:
        self.trials = trials

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from mdr.reporting.aggregate import aggregate

        if config.get("run", {}).get("stages_only", False):
            log.info("run.stages_only: the cached stages are trained; rerun the command without it for the cells")
            return
        try:
            summary = aggregate(config.hydra.sweep.dir, self.trials)
        except Exception:
            log.exception("aggregating the multirun in %s failed", config.hydra.sweep.dir)
            raise SystemExit(EXIT_INCOMPLETE) from None
        print(Path(summary["table"]).read_text(encoding="utf-8"), flush=True)
        if summary["failed"] or summary["missing"]:
            log.error(
                "%d job(s) failed and %d missing: see %s", summary["failed"], summary["missing"], summary["table"]
            )
            raise SystemExit(EXIT_INCOMPLETE)
