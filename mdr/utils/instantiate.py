"""The edge where Hydra configs become objects: ``_target_`` instantiation happens only here."""

from __future__ import annotations

import shutil
import textwrap
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import OmegaConf

from mdr.data.readers import RetrievalReader
from mdr.utils.cache import cache_lock, check_folder
from mdr.utils.errors import DataError
from mdr.utils.job_dirs import hydra_subdir, job_dirname
from mdr.utils.logging import get_logger

log = get_logger(__name__)


def register_resolvers() -> None:
    """Register mdr's OmegaConf resolvers (once)."""
    resolvers = {
        "abspath": lambda path: str(Path(path).expanduser().resolve()),
        "mdr_hydra_subdir": hydra_subdir,
        "mdr_job_dir": lambda overrides, exclude: job_dirname(list(overrides), list(exclude or [])),
        "mdr_config_groups": config_groups,
    }
    for name, resolver in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


def config_groups(*, _root_: Any) -> str:
    """Resolver ``${mdr_config_groups:}``: ``--help``'s line ``  group  a, b*, c`` (``*``: chosen) per mdr group."""
    from hydra.core.global_hydra import GlobalHydra

    def shown(name: str) -> bool:
        return not (name == "hydra" or name.startswith("hydra/") or name.rsplit("/", 1)[-1].startswith("_"))

    choices, loader = dict(_root_.hydra.runtime.choices), GlobalHydra.instance().config_loader()
    groups = sorted(group for group in choices if shown(group))
    width, lines = max((len(group) for group in groups), default=0), []
    for group in groups:
        options = [name for name in sorted(loader.get_group_options(group)) if shown(name)]
        text = ", ".join(f"{name}*" if name == choices[group] else name for name in options)
        text += "  (none by default)" if choices[group] is None else ""
        indents = {"initial_indent": f"  {group.ljust(width)}  ", "subsequent_indent": " " * (width + 4)}
        lines.append(textwrap.fill(text, width=116, **indents, break_on_hyphens=False))
    return "\n".join(lines)


def build_reader(reader: Mapping[str, Any]) -> RetrievalReader:
    """A data group's reader from its ``reader`` node (``_target_`` and arguments)."""
    return instantiate(reader)


def build_target_problem(name: str, name_or_path: str, build: Mapping[str, Any] | None) -> str | None:
    """Why a locally built model cannot be at ``name_or_path`` (not its ``build.out_dir``, not a folder), or None."""
    path, target = Path(str(name_or_path)), (build or {}).get("out_dir")
    if target is None or path.is_dir() or Path(str(target)).expanduser().resolve() == path.expanduser().resolve():
        return None
    return (
        f"model.name_or_path={str(path)!r} does not exist, and model={name} is built only at "
        f"model.build.out_dir={str(target)!r}: fix the path, or set model.build.out_dir to it to build there"
    )


def model_source_problem(key: str, value: Any, saved_encoder: bool = False) -> str | None:
    """Why ``value`` (at ``key``) is not a loadable model folder or hub id, or None (``saved_encoder``: a folder)."""
    text = "" if value is None else str(value)
    if not text.strip():
        return f"{key} must name a model folder{'' if saved_encoder else ' or hub id'}, got {value!r}"
    path = Path(text).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file() or (path / "query_encoder" / "config.json").is_file():
            return None
        return f"{key}={text!r} is a folder but not a saved model (no config.json in it)"
    if saved_encoder or path.exists() or text.startswith(("/", ".", "~")) or text.count("/") > 1:
        return f"{key}={text!r} does not exist (expected a saved encoder folder)"
    try:
        from huggingface_hub import try_to_load_from_cache
        from transformers import AutoConfig

        if isinstance(try_to_load_from_cache(text, "config.json"), str):
            return None  # in the local hub cache: no network call
        AutoConfig.from_pretrained(text)
    except Exception as error:  # noqa: BLE001 - any failure means the id cannot be used
        kind = type(error).__name__
        return f"{key}={text!r} is not a local folder and cannot be loaded from the Hugging Face hub ({kind})"
    return None


def ensure_model_files(name: str, name_or_path: str, build: Mapping[str, Any] | None) -> None:
    """Build a local model on first use or where it fails its manifest; a :class:`DataError` for a wrong path."""
    problem = build_target_problem(name, name_or_path, build)
    if problem:
        raise DataError(problem)
    if build is None:
        return
    target, out_dir = Path(str(name_or_path)), build.get("out_dir")
    users = out_dir is None or Path(str(out_dir)).expanduser().resolve() != target.resolve()  # not the build's
    if target.is_dir() and (users or check_folder(target) is None):
        return  # a model folder of the user's is never checked against a build manifest
    with cache_lock(target.with_name(f".{target.name}.lock"), f"another process is building {target}; waiting"):
        if target.is_dir():
            problem = check_folder(target)
            if problem is None:
                return
            log.warning("model %s at %s is not what was built (%s): building it again", name, target, problem)
            aside = target.with_name(f".{target.name}.broken-{uuid.uuid4().hex[:8]}")
            target.rename(aside)  # readers holding its files keep them; the name is free for the new build
            shutil.rmtree(aside, ignore_errors=True)
        log.info("building model %s at %s", name, target)
        instantiate(dict(build))
