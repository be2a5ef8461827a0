"""Silence, at their source, the library messages a user of mdr cannot act on; everything else stays as it is.

Each filter names one message and the module (or logger) that emits it: a new warning from the same library, or
the same text from anywhere else, still shows. :func:`install` is called once by the entry points (``train.py``,
``evaluate.py``), inside the Hydra main, so every job of a multirun, every DDP rank and every SLURM task has it.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Callable
from typing import Any

from lightning.fabric.utilities.warnings import PossibleUserWarning

QUIET_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    # torch 2.13 deprecates LeafSpec(); Lightning 2.6's own pytree copy still builds one on every batch
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"lightning\.pytorch\.utilities\._pytree"),
    # a hint to prefix the command with `srun` when the machine has SLURM: mdr reaches SLURM through
    # launcher=slurm (submitit), whose tasks run under SLURM already; a local run on such a machine is meant local
    (
        r"The `srun` command is available on your system but is not used",
        PossibleUserWarning,
        r"lightning\.fabric\.plugins\.environments\.slurm",
    ),
)
"""(message regex, category, module regex) of each warning dropped."""

LIGHTNING_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
"""The loggers of Lightning's ``rank_zero_info`` (the second when only ``lightning.fabric`` is imported)."""

QUIET_LIGHTNING_INFO: tuple[str, ...] = (
    r"💡 Tip: .*litlogger",  # an advertisement
    r"GPU available: ",  # the device and precision are in mdr's own "training ..." line (mdr.models.progress)
    r"TPU available: ",
    r"HPU available: ",
    r"Using (16bit|bfloat16) Automatic Mixed Precision \(AMP\)",
    r"Loading `train_dataloader` to estimate number of stepping batches\.",
)
"""Regexes of the Lightning info lines dropped (each matched from the start of the message)."""

QUIET_LOGGERS: dict[str, int] = {
    # "Loading faiss with AVX512 support", "Could not load library ... ModuleNotFoundError", ...: faiss tries its
    # builds from the most specific CPU down and reports each miss at INFO; a real failure raises ImportError
    "faiss.loader": logging.WARNING,
}
"""Logger name -> the lowest level it shows."""

QUIET_PROGRESS_BARS = frozenset({"Writing model shards", "Loading weights"})
"""transformers' tqdm bars (by ``desc``) left out: saving and loading a model take seconds and print a bar each."""


class MessageFilter(logging.Filter):
    """Drops a logger's records whose message matches one of ``patterns`` (from its start)."""

    def __init__(self, patterns: tuple[str, ...]) -> None:
        super().__init__()
        self.patterns = [re.compile(pattern) for pattern in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(pattern.match(message) for pattern in self.patterns)


def _quiet_bar(previous: Callable[..., Any] | None) -> Callable[..., Any]:
    def hook(factory: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if kwargs.get("desc") in QUIET_PROGRESS_BARS:
            kwargs = {**kwargs, "disable": True}
        return previous(factory, args, kwargs) if previous is not None else factory(*args, **kwargs)

    hook.mdr_quiet = True  # type: ignore[attr-defined]
    return hook


def install() -> None:
    """Install every filter above (idempotent: a second call changes nothing)."""
    for message, category, module in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, MessageFilter) for existing in logger.filters):
            logger.addFilter(MessageFilter(QUIET_LIGHTNING_INFO))
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    from transformers.utils import logging as transformers_logging

    previous = transformers_logging.set_tqdm_hook(None)
    if getattr(previous, "mdr_quiet", False):
        transformers_logging.set_tqdm_hook(previous)
    else:
        transformers_logging.set_tqdm_hook(_quiet_bar(previous))


def drop_unset_wandb_anonymous(logger: Any) -> Any:
    """Leave ``anonymous`` out of a Lightning ``WandbLogger``'s ``wandb.init`` arguments when it is unset.

    Lightning 2.6 always passes ``anonymous=None``; wandb 0.31 warns that the setting has no effect whenever it is
    passed at all ("wandb: WARNING The anonymous setting has no effect ..."). Returns ``logger``.
    """
    init = getattr(logger, "_wandb_init", None)
    if isinstance(init, dict) and init.get("anonymous", "set") is None:
        init.pop("anonymous")
    return logger
