"""What makes two runs "the same": which config keys count (:data:`IDENTITY`) for a run folder, a cached stage, a
hard-negative pool and a report cell, the canonical form a run folder's identity is the hash of, and the neutral
values of keys added after runs were recorded (left out while they hold it, so older runs keep their identity)."""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf

NEUTRAL_DEFAULTS: dict[str, Any] = {
    "train.fast_dropout": False,  # added with train.fast_dropout: torch's own dropout, as before
    "train.checkpoint_every_n_steps": None,  # checkpoints at epoch ends only, as before
    "run.stages_only": False,  # a policy key (run.* is no part of a run's identity): the whole run, as before
    "negatives.pool.tokenizer": "default",  # added for the Thai word arm: mdr's words + bigrams, as before
    "trainer.num_nodes": 1,  # added to conf/trainer: one node, Lightning's default, as before
}


def parent_of(data: dict[str, Any], dotted: str) -> tuple[dict[str, Any] | None, str]:
    """The dict of ``data`` holding ``dotted``'s last part (None: a parent is missing), and that part."""
    *parents, leaf = dotted.split(".")
    node: Any = data
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    return (node if isinstance(node, dict) else None), leaf


def drop_neutral_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of plain config ``data`` without the keys of :data:`NEUTRAL_DEFAULTS` that hold their neutral value."""
    result = copy.deepcopy(data)
    for dotted, neutral in NEUTRAL_DEFAULTS.items():
        node, leaf = parent_of(result, dotted)
        if node is not None and leaf in node and type(node[leaf]) is type(neutral) and node[leaf] == neutral:
            node.pop(leaf)  # type check: False is neutral, 0 is not
    return result


@dataclass(frozen=True)
class Counts:
    """Where a config key (and those under it without a row) counts: ``run`` folder, ``stage`` / ``pool`` cache key,
    ``report`` cell; ``shown``: the results column showing it; ``label``: its name in a variant split by it."""

    run: bool = True
    stage: bool = True
    pool: bool = False
    report: bool = True
    shown: str | None = None
    label: str | None = None


_POLICY = Counts(run=False, stage=False, report=False)  # where things go and how they are logged
_SPEED = Counts(run=False, stage=False, report=False)  # how fast, never what, is computed

IDENTITY: dict[str, Counts] = {
    "hydra": _POLICY,  # launcher and output folder settings
    "run": _POLICY,  # the run folder's own policy keys
    "logger": _POLICY,  # CSV / W&B settings: where logs go, not what is computed
    "task_name": Counts(stage=False, report=False),
    "checkpoint": Counts(stage=False),  # evaluate.py: the encoder evaluated
    "paths": Counts(stage=False, report=False),  # where data live; its content is keyed apart
    "paths.output_dir": _POLICY,  # the folder itself
    "paths.cache_dir": _POLICY,  # built models, pools, stage encoders: deterministic functions of the config
    "seed": Counts(shown="seed"),
    "language": Counts(stage=False),  # a stage key holds its sources' languages
    "language.code": Counts(stage=False, shown="language"),
    "data": Counts(stage=False),  # ... and their data configs and content
    "data.name": Counts(stage=False, shown="data"),
    "data.test_split": Counts(stage=False, shown="split"),
    "model": Counts(),
    "model.name": Counts(shown="model"),
    "model.build": Counts(stage=False),  # a stage key holds the weights' digest instead
    "stage": Counts(stage=False),  # a stage key holds its stage's resolved fields
    "stage.name": Counts(stage=False, shown="stage"),
    "stage.proportion_applies_to": Counts(stage=False, shown="variant"),
    "evaluation": Counts(stage=False),
    "evaluation.split": Counts(stage=False, shown="split"),
    "evaluation.depth": Counts(stage=False, shown="depth"),
    "evaluation.languages": Counts(stage=False, report=False),  # which other languages the job evaluated
    "evaluation.keep_embeddings": Counts(stage=False, report=False),
    "evaluation.batch_size": _SPEED,
    "evaluation.faiss_gpu": _SPEED,  # exact inner-product search either way
    "negatives": Counts(),
    "negatives.num_negatives": Counts(label="k"),
    "negatives.hard_proportion": Counts(shown="hard_proportion"),
    "negatives.denoise.enabled": Counts(shown="variant"),
    "negatives.pool.source": Counts(pool=True, shown="variant"),
    "negatives.pool.backend": Counts(pool=True, shown="variant"),
    "negatives.pool.depth": Counts(pool=True),
    "negatives.pool.tokenizer": Counts(pool=True),
    "negatives.pool.encoder": Counts(pool=True, shown="variant"),
    "negatives.pool.range_min": Counts(shown="variant"),  # a filter applied to the cached pool
    "negatives.pool.range_max": Counts(shown="variant"),
    "negatives.pool.margin": Counts(shown="variant"),
    "negatives.pool.threads": Counts(report=False),  # the same pool on any number of threads
    "loss": Counts(),
    "loss.mask_false_negatives": Counts(shown="variant"),
    "train": Counts(),
    "train.learning_rate": Counts(label="lr"),
    "train.batch_size": Counts(label="batch_size"),
    "train.num_workers": _SPEED,  # batches are functions of (seed, epoch), whatever process builds them
    "train.checkpoint_every_n_steps": _SPEED,  # a resume from a mid-epoch checkpoint is exact
    "train.token_cache": _SPEED,  # the same token ids, cached or not
    "train.cpu_malloc_retain_mb": _SPEED,  # where freed memory goes, not what is computed
    "train.save_encoder": _POLICY,
    "trainer": Counts(),
    "trainer.enable_progress_bar": _POLICY,
    "trainer.enable_model_summary": _POLICY,
    "trainer.log_every_n_steps": _POLICY,
    "trainer.max_epochs": Counts(stage=False, label="epochs"),  # a stage key holds the stage's own epochs
    "trainer.precision": Counts(stage=False),  # ... and the resolved precision
    "trainer.devices": Counts(stage=False),  # a cached stage is trained by one process on one device
    "trainer.num_nodes": Counts(stage=False),
    "trainer.strategy": Counts(stage=False),
}
"""Dotted config key -> where it counts; a key without a row counts where its nearest listed parent does."""


def counts(dotted: str) -> Counts:
    """Where ``dotted`` counts: its own row in :data:`IDENTITY`, else its nearest listed parent's."""
    parts = dotted.split(".")
    prefixes = (".".join(parts[:end]) for end in range(len(parts), 0, -1))
    return next((IDENTITY[key] for key in prefixes if key in IDENTITY), Counts())


def left_out(scope: str, under: str = "") -> tuple[str, ...]:
    """The :data:`IDENTITY` keys (relative to ``under``) that ``scope`` drops: not counting while their parent does."""
    found = []
    for key, role in IDENTITY.items():
        if under and not key.startswith(under + "."):
            continue
        parent = key.rpartition(".")[0]
        if not getattr(role, scope) and (not parent or getattr(counts(parent), scope)):
            found.append(key.removeprefix(under + ".") if under else key)
    return tuple(found)


def pool_keys() -> tuple[str, ...]:
    """The ``negatives.pool`` settings that are part of a pool's cache key."""
    return tuple(key.rpartition(".")[2] for key, role in IDENTITY.items() if role.pool)


def shown_by(dotted: str) -> str | None:
    """The report column that shows ``dotted`` itself (None: a cell does not show it)."""
    return IDENTITY[dotted].shown if dotted in IDENTITY else None


def label_of(dotted: str) -> str:
    """How a variant names ``dotted`` when it splits report cells by it."""
    return (IDENTITY[dotted].label if dotted in IDENTITY else None) or dotted


IGNORED_KEYS: tuple[str, ...] = left_out("run")  # left out of a run folder's identity
REPORT_IGNORED: tuple[str, ...] = left_out("report")  # cannot change one row's numbers
# cannot change the numbers of a run that trained nothing (the cell's stage and language say what was evaluated)
UNTRAINED_IGNORED: tuple[str, ...] = ("train", "negatives", "loss", "trainer", "stage", "language")
# cannot change the numbers of a one-stage run that drew no hard negative (nothing is mined)
UNMINED_IGNORED: tuple[str, ...] = ("negatives.pool", "negatives.denoise", "negatives.strict")


def _normalise(value: Any, cache_dir: str | None) -> Any:
    if isinstance(value, dict):
        return {str(k): _normalise(v, cache_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise(v, cache_dir) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)  # 1 and 1.0 are one config
    if isinstance(value, str) and cache_dir and (value == cache_dir or value.startswith(cache_dir.rstrip("/") + "/")):
        return "${paths.cache_dir}" + value[len(cache_dir.rstrip("/")) :]
    return value


def canonical_config(cfg: Any) -> dict[str, Any]:
    """The resolved config (a composed one, or a plain mapping) without :data:`IGNORED_KEYS` and keys at their
    neutral default (:data:`NEUTRAL_DEFAULTS`), with the cache folder written as a placeholder."""
    if OmegaConf.is_config(cfg):
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
    if not (isinstance(value, dict) and value):
        return {prefix: value}
    children = (flatten_config(child, f"{prefix}.{key}" if prefix else str(key)) for key, child in value.items())
    return {dotted: leaf for flat in children for dotted, leaf in flat.items()}


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every dotted key whose value differs (absent keys shown as <absent>)."""
    before, after = flatten_config(old), flatten_config(new)
    missing = "<absent>"
    return [
        f"{key}: {before.get(key, missing)!r} -> {after.get(key, missing)!r}"
        for key in sorted(set(before) | set(after))
        if before.get(key, missing) != after.get(key, missing)
    ]
