"""mdr.utils.quiet drops exactly the named library messages, by message and module (or logger), and no others."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from lightning.fabric.utilities.warnings import PossibleUserWarning
from transformers.utils import logging as transformers_logging

from mdr.utils import quiet

LEAFSPEC = "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec) and treespec.is_leaf()`"
SRUN = "The `srun` command is available on your system but is not used. HINT: If your intention is to run Lightning"


@pytest.fixture
def installed() -> Iterator[None]:
    """:func:`quiet.install` inside a sandbox: the warning filters, logger filters/levels and tqdm hook are restored."""
    loggers = [logging.getLogger(name) for name in (*quiet.LIGHTNING_LOGGERS, *quiet.QUIET_LOGGERS)]
    saved = [(logger, list(logger.filters), logger.level) for logger in loggers]
    hook = transformers_logging.set_tqdm_hook(None)
    transformers_logging.set_tqdm_hook(hook)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        quiet.install()
        quiet.install()  # idempotent
        yield
    for logger, filters, level in saved:
        logger.filters[:] = filters
        logger.setLevel(level)
    transformers_logging.set_tqdm_hook(hook)


def _shown(message: str, category: type[Warning], module: str) -> bool:
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn_explicit(message, category, "somefile.py", 1, module=module, registry={})
    return bool(caught)


@pytest.mark.parametrize(
    ("message", "category", "module", "shown"),
    [
        (LEAFSPEC, FutureWarning, "lightning.pytorch.utilities._pytree", False),
        (LEAFSPEC, FutureWarning, "mdr.models.module", True),  # the same text from elsewhere still shows
        ("`isinstance(x, Foo)` is deprecated", FutureWarning, "lightning.pytorch.utilities._pytree", True),
        (SRUN, PossibleUserWarning, "lightning.fabric.plugins.environments.slurm", False),
        (SRUN, PossibleUserWarning, "lightning.fabric.plugins.environments.lightning", True),
        ("The number of training batches (2) is smaller than the logging interval", PossibleUserWarning,
         "lightning.pytorch.loops.fit_loop", True),
    ],
)  # fmt: skip
def test_warnings_are_dropped_by_message_and_module(
    installed: None, message: str, category: type[Warning], module: str, shown: bool
) -> None:
    assert _shown(message, category, module) is shown


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("name", quiet.LIGHTNING_LOGGERS)
def test_lightning_info_lines_are_dropped_by_message_on_lightnings_logger(installed: None, name: str) -> None:
    logger, other = logging.getLogger(name), logging.getLogger("mdr.pipeline")
    collect = _Collect()
    for target in (logger, other):
        target.addHandler(collect)
    try:
        for message in (
            "💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger](https://pypi.org)",
            "GPU available: False, used: False",
            "TPU available: False, using: 0 TPU cores",
            "Using bfloat16 Automatic Mixed Precision (AMP)",
            "Loading `train_dataloader` to estimate number of stepping batches.",
            "`Trainer.fit` stopped: `max_epochs=5` reached.",
            "Restoring states from the checkpoint path at /x/last.ckpt",
        ):
            logger.warning(message)
        other.warning("GPU available: False, used: False")  # mdr's own loggers are not filtered
    finally:
        for target in (logger, other):
            target.removeHandler(collect)
    assert collect.messages == [
        "`Trainer.fit` stopped: `max_epochs=5` reached.",
        "Restoring states from the checkpoint path at /x/last.ckpt",
        "GPU available: False, used: False",
    ]


def test_faiss_loader_chatter_is_below_the_shown_level(installed: None) -> None:
    loader = logging.getLogger("faiss.loader")
    assert not loader.isEnabledFor(logging.INFO) and loader.isEnabledFor(logging.WARNING)
    assert logging.getLogger("faiss").getEffectiveLevel() == logging.getLogger().getEffectiveLevel()


def test_only_transformers_save_and_load_bars_are_disabled(installed: None, tmp_path: Path) -> None:
    with (tmp_path / "bars.txt").open("w") as stream:
        quiet_bars = [transformers_logging.tqdm(range(2), desc=desc, file=stream) for desc in quiet.QUIET_PROGRESS_BARS]
        other = transformers_logging.tqdm(range(2), desc="Downloading", file=stream)
        assert all(bar.disable for bar in quiet_bars) and not other.disable
        for bar in (*quiet_bars, other):
            bar.close()


def test_wandb_logger_no_longer_passes_an_unset_anonymous(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import WandbLogger

    logger = quiet.drop_unset_wandb_anonymous(WandbLogger(save_dir=str(tmp_path), mode="offline"))
    assert "anonymous" not in logger._wandb_init and logger._wandb_init["mode"] == "offline"
    asked = quiet.drop_unset_wandb_anonymous(WandbLogger(save_dir=str(tmp_path), mode="offline", anonymous=True))
    assert asked._wandb_init["anonymous"] == "allow"  # a user's explicit choice stays
