"""The edge where Hydra configs become objects: ``_target_`` instantiation happens only here."""

from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mdr.data.readers import RetrievalReader
from mdr.models.bi_encoder import EncoderSettings
from mdr.utils.logging import get_logger

log = get_logger(__name__)


def register_resolvers() -> None:
    """``${abspath:...}`` makes a path absolute against the current directory."""
    if not OmegaConf.has_resolver("abspath"):
        OmegaConf.register_new_resolver("abspath", lambda path: str(Path(path).expanduser().resolve()))


def build_reader(data_cfg: DictConfig) -> RetrievalReader:
    """The data group's reader."""
    return instantiate(data_cfg.reader)


def ensure_model_files(model_cfg: DictConfig) -> None:
    """Build a locally made model (tiny, me5_small) on first use; hub models are left to transformers."""
    build = model_cfg.get("build")
    if build is not None and not Path(model_cfg.name_or_path).is_dir():
        log.info("building model %s at %s", model_cfg.name, model_cfg.name_or_path)
        instantiate(build)


def encoder_settings(model_cfg: DictConfig) -> EncoderSettings:
    """The model group's pooling, normalisation, lengths and prefixes."""
    return EncoderSettings(
        pooling=model_cfg.pooling,
        normalize=bool(model_cfg.normalize),
        shared=bool(model_cfg.shared),
        query_max_length=int(model_cfg.query_max_length),
        passage_max_length=int(model_cfg.passage_max_length),
        query_prefix=str(model_cfg.query_prefix),
        passage_prefix=str(model_cfg.passage_prefix),
    )
