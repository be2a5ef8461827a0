"""Rank-aware logging: info and warnings come from global rank 0 only."""

from __future__ import annotations

import logging
import sys

from lightning.pytorch.utilities import rank_zero_only


def get_logger(name: str) -> logging.Logger:
    """A standard logger whose debug/info/warning calls are no-ops off rank 0 (errors always pass)."""
    logger = logging.getLogger(name)
    if not getattr(logger, "_mdr_rank_zero", False):
        for level in ("debug", "info", "warning"):
            setattr(logger, level, rank_zero_only(getattr(logger, level)))
        logger._mdr_rank_zero = True  # type: ignore[attr-defined]
    return logger


class RunLogFileHandler(logging.FileHandler):
    """The run's log file; where it cannot be opened it says so once on stderr and drops the records (not fail)."""

    def __init__(self, filename: str, mode: str = "a", encoding: str | None = None, delay: bool = False) -> None:
        self.unwritable: OSError | None = None
        try:
            super().__init__(filename, mode, encoding, delay)
        except OSError as error:
            super().__init__(filename, mode, encoding, delay=True)  # opens nothing
            self.unwritable = error
            sys.stderr.write(
                f"[mdr] WARNING: cannot write the log file {filename} ({error.strerror or error}): the log goes to "
                "the console only\n"
            )

    def emit(self, record: logging.LogRecord) -> None:
        if self.unwritable is None:
            super().emit(record)
