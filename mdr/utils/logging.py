"""Rank-aware logging: info and warnings come from global rank 0 only."""

from __future__ import annotations

import logging

from lightning.pytorch.utilities import rank_zero_only


def get_logger(name: str) -> logging.Logger:
    """A standard logger whose debug/info/warning calls are no-ops off rank 0 (errors always pass)."""
    logger = logging.getLogger(name)
    if not getattr(logger, "_mdr_rank_zero", False):
        for level in ("debug", "info", "warning"):
            setattr(logger, level, rank_zero_only(getattr(logger, level)))
        logger._mdr_rank_zero = True  # type: ignore[attr-defined]
    return logger
