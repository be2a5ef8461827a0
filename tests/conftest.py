"""Shared fixtures: the shared data folder, a tiny local model, and composed configs."""

from __future__ import annotations

import os

# before anything imports huggingface_hub (mdr.data.readers does), which reads these once at import
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import inspect  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from mdr.utils.instantiate import register_resolvers  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("MDR_DATA_DIR", ROOT.parent / "shared" / "data")).resolve()
XQUAD_SENT = DATA_DIR / "xquad" / "xquad-sent"

register_resolvers()


DATA_MARKERS = ("DATA_DIR", "XQUAD", "tiny_model")
"""Names in a test's (or its fixtures') source that say it reads the shared data; ``make_cfg`` needs ``tiny_model``."""
REQUIRE_DATA = os.environ.get("MDR_REQUIRE_DATA") == "1"
"""Set by CI (.ci/run): missing shared data fails the run instead of skipping the tests that need it."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs_data: reads the shared data (skipped, with the reason, without it)")
    if REQUIRE_DATA and not XQUAD_SENT.is_dir():
        raise pytest.UsageError(f"shared data not found at {DATA_DIR} (MDR_REQUIRE_DATA=1): set MDR_DATA_DIR")


def _source(function: Any) -> str:
    try:
        return inspect.getsource(function)
    except (OSError, TypeError):
        return ""


def needs_data(item: pytest.Item) -> bool:
    """Whether ``item`` reads the shared data: it or a fixture it uses names it (``DATA_DIR``, ``tiny_model``)."""
    if item.get_closest_marker("needs_data") or "tiny_model" in getattr(item, "fixturenames", ()):
        return True
    functions = [getattr(item, "function", None)]
    info = getattr(item, "_fixtureinfo", None)
    for definitions in info.name2fixturedefs.values() if info else ():
        functions += [definition.func for definition in definitions]
    return any(marker in _source(function) for function in functions for marker in DATA_MARKERS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if XQUAD_SENT.is_dir():
        return
    skip = pytest.mark.skip(reason=f"needs the shared data, not found at {XQUAD_SENT} (set MDR_DATA_DIR)")
    for item in items:
        if needs_data(item):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache per test session: the tiny model and mined pools are built once."""
    return tmp_path_factory.mktemp("mdr-cache")


@pytest.fixture(scope="session")
def tiny_model(cache_dir: Path) -> Path:
    """A tiny random BERT with a WordPiece vocabulary trained on the xquad-sent corpora, saved locally."""
    from mdr.models.builders import build_tiny_bert

    path = cache_dir / "models" / "tiny-bert"
    if not path.is_dir():
        build_tiny_bert(str(path), str(XQUAD_SENT / "*" / "corpus.jsonl"), vocab_size=8000)
    return path


@pytest.fixture
def make_cfg(tmp_path: Path, cache_dir: Path, tiny_model: Path) -> Callable[..., DictConfig]:
    """Compose ``conf/<config_name>.yaml`` with test-sized settings plus ``overrides``."""

    def _make(*overrides: str, config_name: str = "train") -> DictConfig:
        base = [
            f"paths.data_dir={DATA_DIR}",
            f"paths.cache_dir={cache_dir}",
            f"paths.output_dir={tmp_path / 'run'}",
            "logger.wandb.enabled=false",
            "data=demo",
            "language=th",
        ]
        if config_name == "train":
            base += [
                "trainer.max_epochs=1",
                "trainer.enable_progress_bar=false",
                "+trainer.limit_train_batches=4",
                "train.batch_size=8",
                "negatives.num_negatives=2",
            ]
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            return compose(config_name=config_name, overrides=[*base, *overrides])

    return _make
