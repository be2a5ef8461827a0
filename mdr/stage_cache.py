"""Running a schedule's stages in order: every stage but the run's own is cached under
``<paths.cache_dir>/stages/<key hash>/``, keyed by content, not place, of what shapes it (docs/stages.md)."""

from __future__ import annotations

import copy
import json
import shutil
import uuid
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mdr import training
from mdr.data.schema import DataError, RetrievalSplit
from mdr.data.union import UnionSplit
from mdr.mining.denoise import NegativePools
from mdr.mining.pools import fingerprint as split_fingerprint
from mdr.models.bi_encoder import SETTINGS_FILE
from mdr.models.precision import resolve_precision
from mdr.run_folder import remove_checkpoints
from mdr.spec import Source, Spec, Stage, Trainer
from mdr.utils.cache import (
    LockBusy,
    cache_lock,
    check_folder,
    digests_dir,
    folder_digest,
    remove_stale_builds,
    staged_folder,
    write_folder_manifest,
)
from mdr.utils.config_identity import config_hash, drop_neutral_defaults, left_out
from mdr.utils.instantiate import build_reader, ensure_model_files
from mdr.utils.io import atomic_write_json
from mdr.utils.logging import get_logger

log = get_logger(__name__)

TRAINER_KEYS_IGNORED = left_out("stage", "trainer")  # epochs, precision keyed apart; one process trains a stage
TRAIN_KEYS_IGNORED = left_out("stage", "train")  # none changes the encoder
MODEL_KEYS_IGNORED = left_out("stage", "model")  # how a local model is built (its weights are keyed by content)
SplitMemo = dict[tuple[str, str], RetrievalSplit]  # training splits read for keys, by (source label, split)


def placeholders(tree: Any, roots: Mapping[str, str], drop: tuple[str, ...] = ()) -> Any:
    """``tree`` without its ``drop`` keys, each string under a ``roots`` folder written ``${<name>}/...`` (movable)."""
    if isinstance(tree, dict):
        return {key: placeholders(value, roots, drop) for key, value in tree.items() if key not in drop}
    if isinstance(tree, list):
        return [placeholders(value, roots, drop) for value in tree]
    if isinstance(tree, str):
        for name, root in roots.items():
            if root and (tree == root or tree.startswith(root.rstrip("/") + "/")):
                return "${" + name + "}" + tree[len(root.rstrip("/")) :]
    return tree


def model_identity(spec: Spec) -> str:
    """The starting model: ``folder:<digest of its files>`` for a local folder (built first), else the hub id."""
    model = spec.model
    if model.build is not None:
        ensure_model_files(model.name, model.name_or_path, model.build)
    path = Path(model.name_or_path)
    if path.is_dir():
        return f"folder:{folder_digest(path, digests_dir(spec.paths.cache_dir))}"
    return model.name_or_path


def _negatives_identity(cache_dir: str, negatives: Mapping[str, Any]) -> dict[str, Any]:
    """``negatives`` with local miner-encoder and teacher folders written as ``folder:<digest of their files>``."""
    result = copy.deepcopy(dict(negatives))
    for section, key in (("pool", "encoder"), ("denoise", "teacher")):
        value = (result.get(section) or {}).get(key)
        if value and Path(str(value)).is_dir():
            result[section][key] = f"folder:{folder_digest(Path(str(value)), digests_dir(cache_dir))}"
    return result


def load_source(source: Source) -> RetrievalSplit:
    """Read a source's training split."""
    return build_reader(source.data.reader).load(source.split)


def _training_split(source: Source, splits: SplitMemo | None, target_train: RetrievalSplit | None) -> RetrievalSplit:
    """``source``'s training split, read once into ``splits`` (``target_train``: the run's own, already read)."""
    memo = splits if splits is not None else {}
    slot = (source.label, source.split)
    if slot not in memo:
        memo[slot] = target_train if source.is_target and target_train is not None else load_source(source)
    return memo[slot]


def stage_key(
    spec: Spec,
    stage: Stage,
    previous: str | None,
    splits: SplitMemo | None = None,
    target_train: RetrievalSplit | None = None,
    model: str | None = None,
    content: bool = True,
) -> dict[str, Any]:
    """Everything that shapes a stage's encoder, by content, not place (``model``: :func:`model_identity`; sources by
    language, data config and split fingerprint, unless ``content=False``: for comparing configs only)."""
    roots = {"paths.cache_dir": spec.paths.cache_dir, "paths.data_dir": spec.paths.data_dir}  # longest first wins
    roots = dict(sorted(((name, root) for name, root in roots.items() if root), key=lambda item: -len(item[1])))
    resolved = spec.resolved
    settings = {k: v for k, v in placeholders(dict(resolved["model"]), roots).items() if k not in MODEL_KEYS_IGNORED}
    settings["name_or_path"] = model if model is not None else model_identity(spec)
    train_on = []
    for source in stage.sources:
        data = placeholders(dict(source.data.resolved), roots, ("cache_dir",))  # where a corpus is stored
        key = {"language": source.code, "data": data, "split": source.split}
        if content:
            key["content"] = split_fingerprint(_training_split(source, splits, target_train))
        train_on.append(key)
    train = {k: v for k, v in resolved["train"].items() if k not in TRAIN_KEYS_IGNORED}
    return {
        "model": settings,
        "previous": previous,
        "train_on": train_on,
        "epochs": stage.epochs,
        "negatives": placeholders(_negatives_identity(spec.paths.cache_dir, stage.negatives.resolved), roots),
        "train": drop_neutral_defaults({"train": train})["train"],
        "loss": dict(resolved["loss"]),
        "trainer": {k: v for k, v in resolved["trainer"].items() if k not in TRAINER_KEYS_IGNORED},
        "precision": resolve_precision(spec.trainer.precision, spec.trainer.accelerator),
        "seed": spec.seed,
    }


def key_digest(key: Any) -> str:
    """A 16-hex-digit hash of a stage key."""
    return config_hash(key)[:16]


def stage_keys(
    spec: Spec, splits: SplitMemo | None = None, target_train: RetrievalSplit | None = None, content: bool = True
) -> list[tuple[dict[str, Any], str]]:
    """(key, digest) of every stage, each chained to the one before; splits read go into ``splits`` for training."""
    keys: list[tuple[dict[str, Any], str]] = []
    previous = None
    model = model_identity(spec) if spec.schedule.stages else None
    for stage in spec.schedule.stages:
        key = stage_key(spec, stage, previous, splits, target_train, model, content)
        previous = key_digest(key)
        keys.append((key, previous))
    return keys


def stage_dir(spec: Spec, digest: str) -> Path:
    """``<paths.cache_dir>/stages/<digest>``."""
    return Path(spec.paths.cache_dir) / "stages" / digest


@dataclass
class StageRun:
    """A stage just trained: its encoder, tokenizer, fit summary and denoise record."""

    encoder: Any
    tokenizer: Any
    summary: dict[str, Any]
    denoise: Any
    is_global_zero: bool
    world_size: int = 1


def training_data(
    spec: Spec, stage: Stage, target_train: RetrievalSplit | None, splits: SplitMemo | None = None
) -> tuple[RetrievalSplit | UnionSplit, Mapping[str, list[str]], Any]:
    """The stage's training split (a :class:`UnionSplit` for several sources), its pools and its denoise record."""
    loaded = []
    for source in stage.sources:
        split = _training_split(source, splits, target_train)
        log.info("stage %s: %s %s, %d queries", stage.name, source.label, source.split, len(split.queries))
        loaded.append((source, split, training.negative_pools(spec, stage.negatives, split, source.language)))
    if len(loaded) == 1:
        _, split, pools = loaded[0]
        return split, pools, pools.denoise.as_dict() if pools.denoise is not None else None
    union = UnionSplit([(source.part, split) for source, split, _ in loaded])
    merged = NegativePools()
    denoise: dict[str, Any] = {}
    for source, _, pools in loaded:
        merged.update(UnionSplit.namespace_pools(source.part, pools))
        if pools.denoise is not None:
            denoise[source.part] = pools.denoise.as_dict()
    return union, merged, denoise or None


def run_stage(
    spec: Spec,
    stage: Stage,
    start: str | None,
    out: Path,
    target_train: RetrievalSplit | None = None,
    splits: SplitMemo | None = None,
) -> StageRun:
    """Train one stage from ``start`` (an encoder folder; None: the configured model) in ``out``, resuming there."""
    data, pools, denoise = training_data(spec, stage, target_train, splits)
    encoder, tokenizer = training.load_encoder(spec.model, start)
    fitted = training.fit(spec, stage, encoder, tokenizer, data, pools, out)
    trainer = fitted["trainer"]
    return StageRun(
        encoder, tokenizer, fitted["summary"], denoise, bool(trainer.is_global_zero), int(trainer.world_size)
    )


def cached_stage(
    spec: Spec,
    stage: Stage,
    key: dict[str, Any],
    digest: str,
    start: str | None,
    splits: SplitMemo | None = None,
    wait: bool = True,
) -> tuple[Path, str, dict[str, Any] | None]:
    """(encoder folder, ``trained`` / ``reused`` / ``busy`` (``wait=False``, locked), summary) of a cached stage."""
    root = stage_dir(spec, digest)
    encoder_dir = root / "encoder"
    root.mkdir(parents=True, exist_ok=True)
    waiting = f"stage {stage.name}: another job is training {root}; waiting for it"
    with ExitStack() as held:
        try:  # a second job of the sweep waits here, then reuses the result
            held.enter_context(cache_lock(root / ".lock", waiting, wait=wait))
        except LockBusy:
            log.info("stage %s: another job is training %s; left to it (run.stages_only)", stage.name, root)
            return encoder_dir, "busy", None
        if (encoder_dir / SETTINGS_FILE).is_file():
            problem = _reuse_problem(root, key)
            if problem is None:
                log.info("stage %s: reusing %s", stage.name, encoder_dir)
                return encoder_dir, "reused", _summary(root)
            log.warning("stage %s: %s cannot be reused (%s): training the stage again", stage.name, root, problem)
            aside = root / f".encoder.broken-{uuid.uuid4().hex[:8]}"
            encoder_dir.rename(aside)  # a job loading it keeps its open files
            shutil.rmtree(aside, ignore_errors=True)
        if not one_process(spec.trainer):  # its ranks would wait on this lock for each other
            raise DataError(
                f"stage {stage.name} ({root}) is not cached yet, and cached stages are trained by one process on one "
                "device: run the same command once with trainer=gpu (trainer=cpu on CPU) in place of trainer=ddp and "
                "without trainer.devices / trainer.num_nodes (with launcher=slurm its jobs then ask for one task and "
                "one GPU; not inside a multi-task allocation, whose tasks per node must equal trainer.devices), then "
                "this run reuses it"
            )
        atomic_write_json(root / "stage.json", {"name": stage.name, "key": key})
        log.info("stage %s: training on %s -> %s", stage.name, ", ".join(s.label for s in stage.sources), root)
        trained = run_stage(spec, stage, start, root / "run", splits=splits)
        if not trained.is_global_zero:
            raise RuntimeError(
                f"stage {stage.name} is cached and must be trained before DDP spawns: train it first with trainer=gpu "
                "(one process, one device), then rerun"
            )
        remove_stale_builds(root, ".encoder.tmp")  # an older mdr's save of a killed job
        with staged_folder(encoder_dir, replace=True) as staging:
            trained.encoder.save_pretrained(staging, trained.tokenizer)
            write_folder_manifest(staging)
            summary = {**trained.summary, "denoise": trained.denoise}
            atomic_write_json(root / "summary.json", summary)
        remove_checkpoints(root / "run", encoder_dir)  # later jobs reuse the encoder, never resume
        return encoder_dir, "trained", summary


def _reuse_problem(root: Path, key: Mapping[str, Any]) -> str | None:
    """Why the stage at ``root`` cannot be reused for ``key``, or None."""
    try:
        recorded = json.loads((root / "stage.json").read_text(encoding="utf-8")).get("key")
    except (OSError, ValueError, AttributeError) as error:
        return f"{root / 'stage.json'} cannot be read ({error})"
    if key_digest(recorded) != key_digest(key):
        return f"{root / 'stage.json'} holds another key than this run's"
    return check_folder(root / "encoder", "auto")


def one_process(trainer: Trainer) -> bool:
    """Whether the trainer runs as a single process on one device (no DDP)."""
    devices = trainer.devices
    count = len(devices) if isinstance(devices, list) else devices
    if str(count) == "auto":
        count = 1 if trainer.accelerator == "cpu" else "auto"
    return str(count) == "1" and int(trainer.num_nodes or 1) == 1


def _summary(root: Path) -> dict[str, Any] | None:
    path = root / "summary.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError) as error:
        log.warning("%s cannot be read (%s): the stage's training summary is left out", path, error)
        return None


@dataclass
class ScheduleResult:
    """The final encoder (the configured model for zero-shot) and the metrics.json fields the schedule fills."""

    encoder: Any
    tokenizer: Any
    extra: dict[str, Any]
    distributed: bool = False


def _record(stage: Stage, digest: str) -> dict[str, Any]:
    negatives = stage.negatives
    return {
        "name": stage.name,
        "train_on": [f"{source.label}:{source.split}" for source in stage.sources],
        "epochs": stage.epochs,
        "hard_proportion": negatives.hard_proportion,
        "num_negatives": negatives.num_negatives,
        "pool": negatives.pool.source if negatives.pool is not None else None,
        "key": digest,
        **dict.fromkeys(("dir", "status", "train")),
    }


def _cached_stages(
    spec: Spec, splits: SplitMemo, target_train: RetrievalSplit | None = None, wait: bool = True
) -> tuple[list[dict[str, Any]], list[str | None], dict[str, Any] | None]:
    """Train or find the cached stages in order: (a record per stage, the encoders they start from, last summary)."""
    keys = stage_keys(spec, splits, target_train)
    records = [_record(stage, digest) for stage, (_, digest) in zip(spec.schedule.stages, keys)]
    starts: list[str | None] = [None]
    summary = None
    for stage in (stage for stage in spec.schedule.stages if not stage.own):
        key, digest = keys[stage.index]
        encoder_dir, status, summary = cached_stage(spec, stage, key, digest, starts[-1], splits, wait)
        records[stage.index].update(dir=str(stage_dir(spec, digest)), status=status, train=summary)
        if status == "busy":
            break
        starts.append(str(encoder_dir))
    return records, starts, summary


def run_schedule(spec: Spec, out: Path, target_train: RetrievalSplit | None = None) -> ScheduleResult:
    """Run the cached stages, then the run's own in ``out``; return the final encoder on every DDP rank."""
    plan = spec.schedule
    splits: SplitMemo = {}
    records, starts, summary = _cached_stages(spec, splits, target_train)
    start = starts[-1]
    extra: dict[str, Any] = {
        "train": None,
        "initialised_from": starts[-2] if len(starts) > 1 else None,
        "encoder": None,
        "denoised": False,
        "denoise": None,
        "proportion_applies_to": plan.proportion_applies_to,
        "schedule": {"name": plan.name, "proportion_applies_to": plan.proportion_applies_to, "stages": records},
    }
    if not plan.trains_on_target:  # zero-shot, or the final stage is cached: evaluate its encoder
        encoder, tokenizer = training.load_encoder(spec.model, start)
        if plan.stages:
            denoise = (summary or {}).get("denoise")
            extra.update(train=summary, encoder=start, denoised=denoise is not None, denoise=denoise)
        return ScheduleResult(encoder, tokenizer, extra)
    trained = run_stage(spec, plan.stages[-1], start, out, target_train, splits)
    distributed = trained.world_size > 1
    if not trained.is_global_zero:
        return ScheduleResult(trained.encoder, trained.tokenizer, extra, distributed)
    records[-1].update(status="run", train=trained.summary)
    extra.update(train=trained.summary, initialised_from=start, denoised=trained.denoise is not None)
    extra["denoise"] = trained.denoise
    if spec.train.save_encoder:
        trained.encoder.save_pretrained(out / "encoder", trained.tokenizer)
        extra["encoder"] = str(out / "encoder")
    return ScheduleResult(trained.encoder, trained.tokenizer, extra, distributed)


def train_cached_stages(spec: Spec) -> dict[str, Any]:
    """``run.stages_only``: train or find the cached stages (one another job holds is left to it, ``busy``); records."""
    records, _, _ = _cached_stages(spec, {}, wait=False)
    done = [record for record in records if record["status"] is not None]
    return {"stages_only": True, "schedule": {"name": spec.schedule.name, "stages": done}}
