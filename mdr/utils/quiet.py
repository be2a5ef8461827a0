"""Silence, at their source, the library messages a user of mdr cannot act on (:func:`install`, in every job)."""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Callable
from typing import Any

from lightning.fabric.utilities.warnings import PossibleUserWarning

QUIET_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (  # (message regex, category, module regex)
    # torch 2.13 deprecates LeafSpec(); Lightning 2.6's own pytree copy still builds one on every batch
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"lightning\.pytorch\.utilities\._pytree"),
    # a hint to run under `srun` on a machine with SLURM: mdr reaches SLURM through launcher=slurm (submitit)
    (
        r"The `srun` command is available on your system but is not used",
        PossibleUserWarning,
        r"lightning\.fabric\.plugins\.environments\.slurm",
    ),
)
# the loggers of Lightning's rank_zero_info (the second when only lightning.fabric is imported)
LIGHTNING_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
QUIET_LIGHTNING_INFO: tuple[str, ...] = (  # matched from the start of the message
    r"💡 Tip: .*litlogger",  # an advertisement
    r"GPU available: ",  # the device and precision are in mdr's own "training ..." line (mdr.models.progress)
    r"TPU available: ",
    r"HPU available: ",
    r"Using (16bit|bfloat16) Automatic Mixed Precision \(AMP\)",
    r"Loading `train_dataloader` to estimate number of stepping batches\.",
)
# faiss tries its builds from the most specific CPU down and reports each miss at INFO; a failure raises ImportError
QUIET_LOGGERS: dict[str, int] = {"faiss.loader": logging.WARNING}
# transformers' tqdm bars (by desc): saving and loading a model take seconds and print a bar each
QUIET_PROGRESS_BARS = frozenset({"Writing model shards", "Loading weights"})


def _shown(record: logging.LogRecord) -> bool:
    """False for a record whose message matches one of :data:`QUIET_LIGHTNING_INFO` (a logging filter)."""
    return not any(re.match(pattern, record.getMessage()) for pattern in QUIET_LIGHTNING_INFO)


def _quiet_bar(previous: Callable[..., Any] | None) -> Callable[..., Any]:
    def hook(factory: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if kwargs.get("desc") in QUIET_PROGRESS_BARS:
            kwargs = {**kwargs, "disable": True}
        return previous(factory, args, kwargs) if previous is not None else factory(*args, **kwargs)

    hook.mdr_quiet = True  # type: ignore[attr-defined]
    return hook


def install() -> None:
    """Install every filter above (idempotent)."""
    for message, category, module in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name in LIGHTNING_LOGGERS:
        logging.getLogger(name).addFilter(_shown)  # once: addFilter skips a filter it holds
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    from transformers.utils import logging as transformers_logging

    previous = transformers_logging.set_tqdm_hook(None)
    transformers_logging.set_tqdm_hook(previous if getattr(previous, "mdr_quiet", False) else _quiet_bar(previous))


def drop_unset_wandb_anonymous(logger: Any) -> Any:
    """``logger`` (a ``WandbLogger``) without its unset ``anonymous`` init argument, which wandb warns about."""
    init = getattr(logger, "_wandb_init", None)
    if isinstance(init, dict) and init.get("anonymous", "set") is None:
        init.pop("anonymous")
    return logger
