"""What makes two resolved configs one config: the canonical form a run folder's identity is the hash of.

:mod:`mdr.run_folder` records it in ``run_folder.json`` and refuses a folder to another config;
:mod:`mdr.reporting.collect` compares two jobs of one sweep cell on the same basis.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mdr.utils.config_compat import drop_neutral_defaults, parent_of

CACHE_PLACEHOLDER = "${paths.cache_dir}"

IGNORED_KEYS: tuple[str, ...] = (
    "hydra",  # launcher and output folder settings
    "run",  # the run folder's own policy keys
    "logger",  # CSV / W&B settings: where logs go, not what is computed
    "paths.output_dir",  # the folder itself
    "paths.cache_dir",  # built models, pools, stage-one encoders: deterministic functions of the config
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "train.num_workers",  # batches are functions of (seed, epoch), whatever process builds them
    "train.checkpoint_every_n_steps",  # a resume from a mid-epoch checkpoint is exact
    "train.token_cache",  # the same token ids, cached or not
    "train.cpu_malloc_retain_mb",  # where freed memory goes, not what is computed
    "train.save_encoder",
    "evaluation.batch_size",
    "evaluation.faiss_gpu",  # exact inner-product search either way
)
"""Dotted keys left out of a run folder's identity; every other resolved key is part of it."""


def _normalise(value: Any, cache_dir: str | None) -> Any:
    if isinstance(value, dict):
        return {str(k): _normalise(v, cache_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise(v, cache_dir) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)  # 1 and 1.0 are one config
    if isinstance(value, str) and cache_dir and (value == cache_dir or value.startswith(cache_dir.rstrip("/") + "/")):
        return CACHE_PLACEHOLDER + value[len(cache_dir.rstrip("/")) :]
    return value


def canonical_config(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """The resolved config without :data:`IGNORED_KEYS` and keys at their neutral default
    (:mod:`mdr.utils.config_compat`), with the cache folder written as a placeholder."""
    if isinstance(cfg, DictConfig):
        data: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    else:
        data = json.loads(json.dumps(cfg, default=str))
    cache_dir = (data.get("paths") or {}).get("cache_dir")
    for dotted in IGNORED_KEYS:
        node, leaf = parent_of(data, dotted)
        if node is not None:
            node.pop(leaf, None)
    if isinstance(data.get("paths"), dict) and not data["paths"]:
        data.pop("paths")
    return _normalise(drop_neutral_defaults(data), str(cache_dir) if cache_dir else None)


def config_hash(canonical: dict[str, Any]) -> str:
    """sha256 of the canonical config as sorted JSON."""
    return hashlib.sha256(json.dumps(canonical, sort_keys=True, default=str).encode()).hexdigest()


def flatten_config(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value of every leaf of a plain config (an empty mapping is a leaf)."""
    if isinstance(value, dict) and value:
        flat: dict[str, Any] = {}
        for key, child in value.items():
            flat.update(flatten_config(child, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every dotted key whose value differs (absent keys shown as <absent>)."""
    before, after = flatten_config(old), flatten_config(new)
    missing = "<absent>"
    return [
        f"{key}: {before.get(key, missing)!r} -> {after.get(key, missing)!r}"
        for key in sorted(set(before) | set(after))
        if before.get(key, missing) != after.get(key, missing)
    ]
