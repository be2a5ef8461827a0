"""Hydra callback: aggregate a multirun when it ends, so the sweep folder holds its table and plot."""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from mdr.utils.logging import get_logger

log = get_logger(__name__)


class AggregateOnMultirunEnd(Callback):
    """Runs :func:`mdr.reporting.aggregate.aggregate` on ``hydra.sweep.dir`` after the last job."""

    def __init__(self, trials: int = 10_000) -> None:
        self.trials = trials

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from mdr.reporting.aggregate import aggregate

        summary = aggregate(config.hydra.sweep.dir, self.trials)
        print(open(summary["table"]).read(), flush=True)
        if summary["failed"] or summary["missing"]:
            log.error(
                "%d job(s) failed and %d missing: see %s", summary["failed"], summary["missing"], summary["table"]
            )
