"""The edge where Hydra configs become objects: ``_target_`` instantiation happens only here."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mdr.data.readers import RetrievalReader
from mdr.models.bi_encoder import EncoderSettings
from mdr.utils.app_help import config_groups
from mdr.utils.cache import cache_lock, check_folder
from mdr.utils.errors import DataError
from mdr.utils.job_dirs import hydra_subdir, job_dirname
from mdr.utils.logging import get_logger

log = get_logger(__name__)


def register_resolvers() -> None:
    """``${abspath:...}`` makes a path absolute against the current directory; ``${mdr_job_dir:overrides,exclude}``
    names a multirun's job folder (:func:`mdr.utils.job_dirs.job_dirname`); ``${mdr_config_groups:}`` lists the
    config groups in ``--help`` (:func:`mdr.utils.app_help.config_groups`); ``${mdr_hydra_subdir:output_dir}`` is
    ``.hydra`` unless that folder cannot be written (:func:`mdr.utils.job_dirs.hydra_subdir`)."""
    if not OmegaConf.has_resolver("abspath"):
        OmegaConf.register_new_resolver("abspath", lambda path: str(Path(path).expanduser().resolve()))
    if not OmegaConf.has_resolver("mdr_hydra_subdir"):
        OmegaConf.register_new_resolver("mdr_hydra_subdir", hydra_subdir)
    if not OmegaConf.has_resolver("mdr_job_dir"):
        OmegaConf.register_new_resolver(
            "mdr_job_dir", lambda overrides, exclude: job_dirname(list(overrides), list(exclude or []))
        )
    if not OmegaConf.has_resolver("mdr_config_groups"):
        OmegaConf.register_new_resolver("mdr_config_groups", config_groups)


def build_reader(data_cfg: DictConfig) -> RetrievalReader:
    """The data group's reader."""
    return instantiate(data_cfg.reader)


def build_target_problem(model_cfg: DictConfig) -> str | None:
    """Why a locally built model (one with ``build``) cannot be built at ``model.name_or_path``, or None.

    A model group with a ``build`` section is built only at ``model.build.out_dir``: a ``model.name_or_path``
    pointing anywhere else (a typo) must exist, or it would silently become a new random model.
    """
    build = model_cfg.get("build")
    path = Path(str(model_cfg.name_or_path))
    if build is None or path.is_dir():
        return None
    target = build.get("out_dir")
    if target is not None and Path(str(target)).expanduser().resolve() != path.expanduser().resolve():
        return (
            f"model.name_or_path={str(path)!r} does not exist, and model={model_cfg.get('name')} is built only at "
            f"model.build.out_dir={str(target)!r}: fix the path, or set model.build.out_dir to it to build there"
        )
    return None


def ensure_model_files(model_cfg: DictConfig) -> None:
    """Build a locally made model (tiny, me5_small) on first use; hub models are left to transformers.

    A built folder is checked against its manifest (sizes, and every byte up to
    :data:`mdr.utils.cache.FULL_CHECK_BYTES`: :func:`mdr.utils.cache.check_folder`); one that is cut, garbled or
    has no manifest is logged and built again (the build is deterministic).

    Raises:
        DataError: ``model.name_or_path`` is missing and is not the model's build target.
    """
    problem = build_target_problem(model_cfg)
    if problem:
        raise DataError(problem)
    build = model_cfg.get("build")
    if build is None:
        return
    target = Path(str(model_cfg.name_or_path))
    out_dir = build.get("out_dir")
    if target.is_dir() and (out_dir is None or Path(str(out_dir)).expanduser().resolve() != target.resolve()):
        return  # a model folder of the user's, not the build's: never checked against a build manifest
    if target.is_dir() and check_folder(target) is None:
        return
    with cache_lock(target.with_name(f".{target.name}.lock"), f"another process is building {target}; waiting"):
        if target.is_dir():
            problem = check_folder(target)
            if problem is None:
                return
            log.warning("model %s at %s is not what was built (%s): building it again", model_cfg.name, target, problem)
            aside = target.with_name(f".{target.name}.broken-{uuid.uuid4().hex[:8]}")
            target.rename(aside)  # readers holding its files keep them; the name is free for the new build
            shutil.rmtree(aside, ignore_errors=True)
        log.info("building model %s at %s", model_cfg.name, target)
        instantiate(model_cfg.build)


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
