"""Cached stages: their keys, their folders, and running a schedule's stages in order.

Every stage but the run's own is cached under ``<paths.cache_dir>/stages/<key hash>/`` (``encoder/``,
``stage.json`` with its key, ``summary.json``), keyed by everything that shapes it
(:data:`mdr.utils.config_identity.IDENTITY` says which config keys): the model (its settings and the content of its
weight files, not its path), its training data (the data configs with ``paths.*`` written as placeholders, and a
fingerprint of the split's queries, qrels and corpus content), negatives, epochs, train / loss / trainer settings,
the resolved precision, the seed and the key of the stage before it. A moved or copied cache is reused; edited
training data or another starting model trains again. Jobs of a sweep that need the same stage wait on a lock
(:func:`mdr.utils.cache.cache_lock`, which holds across nodes) and reuse it, so a stage is trained once per sweep
however many cells start from it. A reused encoder is checked against its manifest (sizes and checksums,
:func:`mdr.utils.cache.check_folder`) and trained again, with a warning, when it is not what was saved.

A stage is trained by :mod:`mdr.training` (encoder, pools, fit); the run's own stage trains in the run folder
(resumable there, its encoder saved to ``<run>/encoder``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import uuid
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from mdr import training
from mdr.data.schema import DataError, RetrievalSplit
from mdr.data.union import UnionSplit
from mdr.mining.pools import fingerprint as split_fingerprint
from mdr.models.bi_encoder import SETTINGS_FILE
from mdr.models.precision import resolve_precision
from mdr.run_folder import remove_checkpoints
from mdr.stages import Schedule, Source, Stage, path_roots, placeholders, plain, schedule
from mdr.utils.cache import (
    LockBusy,
    cache_lock,
    check_folder,
    digests_dir,
    folder_digest,
    remove_stale_builds,
    staging_name,
    write_folder_manifest,
)
from mdr.utils.config_compat import drop_neutral_defaults
from mdr.utils.config_identity import left_out
from mdr.utils.instantiate import ensure_model_files
from mdr.utils.io import atomic_write_json
from mdr.utils.logging import get_logger

log = get_logger(__name__)

TRAINER_KEYS_IGNORED = left_out("stage", "trainer")
"""Trainer settings left out of a stage key (:data:`mdr.utils.config_identity.IDENTITY`): epochs and the resolved
precision are keyed apart, and a cached stage is always trained by one process on one device (:func:`cached_stage`),
so a DDP run reuses it."""
TRAIN_KEYS_IGNORED = left_out("stage", "train")
"""``train`` settings left out of a stage key: none of them changes the encoder."""
MODEL_KEYS_IGNORED = left_out("stage", "model")
"""``model`` settings left out of a stage key: how a local model is built (its weights are keyed by content)."""


SplitMemo = dict[tuple[str, str], RetrievalSplit]
"""Training splits read for keys, by (source label, split), so training does not read them again."""


def model_identity(cfg: DictConfig) -> str:
    """The starting model's identity: ``folder:<digest of its files>`` for a local folder (built first where the
    model group builds it), else the hub id. Digests are remembered under ``<paths.cache_dir>/digests``."""
    name = str(cfg.model.name_or_path)
    if cfg.model.get("build") is not None:
        ensure_model_files(cfg.model)
    path = Path(name)
    if path.is_dir():
        return f"folder:{folder_digest(path, digests_dir(cfg.paths.cache_dir))}"
    return name


def _negatives_identity(cfg: DictConfig, negatives: dict[str, Any]) -> dict[str, Any]:
    """``negatives`` with a dense miner's encoder folder and a denoising teacher folder written as the digest of
    their files: a retrained encoder re-keys the stage, a moved one does not (model groups and hub ids stay names)."""
    result = copy.deepcopy(negatives)
    for section, key in (("pool", "encoder"), ("denoise", "teacher")):
        value = (result.get(section) or {}).get(key)
        if value and Path(str(value)).is_dir():
            result[section][key] = f"folder:{folder_digest(Path(str(value)), digests_dir(cfg.paths.cache_dir))}"
    return result


def source_content(source: Source, splits: SplitMemo | None = None, target_train: RetrievalSplit | None = None) -> str:
    """The content fingerprint (queries, qrels, corpus) of ``source``'s training split, read once into ``splits``."""
    memo = splits if splits is not None else {}
    slot = (source.label, source.split)
    if slot not in memo:
        memo[slot] = target_train if source.is_target and target_train is not None else source.load()
    return split_fingerprint(memo[slot])


def stage_key(
    cfg: DictConfig,
    stage: Stage,
    previous: str | None,
    splits: SplitMemo | None = None,
    target_train: RetrievalSplit | None = None,
    model: str | None = None,
    content: bool = True,
) -> dict[str, Any]:
    """Everything that shapes a stage's encoder (not its name, nor the target language unless trained on).

    Content, not places: the starting model is keyed by its weights (:func:`model_identity`, ``model``), each
    source by its split's content fingerprint (:func:`source_content`), and paths under ``paths.data_dir`` /
    ``paths.cache_dir`` are written as placeholders. ``content=False`` leaves the data's content out (reads
    nothing: for comparing configs only, never for finding a cached stage).
    """
    roots = path_roots(cfg)
    settings = placeholders(plain(cfg.model), roots)
    for key in MODEL_KEYS_IGNORED:
        settings.pop(key, None)
    settings["name_or_path"] = model if model is not None else model_identity(cfg)
    trainer = {k: v for k, v in plain(cfg.trainer).items() if k not in TRAINER_KEYS_IGNORED}
    train_on = [
        source.key(roots, source_content(source, splits, target_train) if content else None) for source in stage.sources
    ]
    return {
        "model": settings,
        "previous": previous,
        "train_on": train_on,
        "epochs": stage.epochs,
        "negatives": placeholders(_negatives_identity(cfg, stage.negatives), roots),
        "train": drop_neutral_defaults(
            {"train": {k: v for k, v in plain(cfg.train).items() if k not in TRAIN_KEYS_IGNORED}}
        )["train"],
        "loss": plain(cfg.loss),
        "trainer": trainer,
        "precision": resolve_precision(str(cfg.trainer.precision), str(cfg.trainer.accelerator)),
        "seed": int(cfg.seed),
    }


def key_digest(key: Mapping[str, Any]) -> str:
    """A 16-hex-digit hash of a stage key."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage_keys(
    cfg: DictConfig,
    plan: Schedule,
    splits: SplitMemo | None = None,
    target_train: RetrievalSplit | None = None,
    content: bool = True,
) -> list[tuple[dict[str, Any], str]]:
    """(key, digest) of every stage, each chained to the one before.

    Reads each stage's training splits for their content fingerprints (into ``splits`` when given, so that
    training reuses them; ``target_train`` stands for the run's own). ``content=False``: config only
    (:func:`stage_key`).
    """
    keys: list[tuple[dict[str, Any], str]] = []
    previous = None
    model = model_identity(cfg) if plan.stages else None
    for stage in plan.stages:
        key = stage_key(cfg, stage, previous, splits, target_train, model, content)
        previous = key_digest(key)
        keys.append((key, previous))
    return keys


def stage_dir(cfg: DictConfig, digest: str) -> Path:
    """``<paths.cache_dir>/stages/<digest>``."""
    return Path(cfg.paths.cache_dir) / "stages" / digest


@dataclass
class StageRun:
    """A stage just trained: its encoder, tokenizer, fit summary and negatives record."""

    encoder: Any
    tokenizer: Any
    summary: dict[str, Any]
    denoise: Any
    is_global_zero: bool
    world_size: int = 1


def stage_config(cfg: DictConfig, stage: Stage, out: Path, own: bool) -> DictConfig:
    """The config ``fit`` gets for ``stage``: its epochs and negatives, its single source's language and data."""
    stage_cfg = copy.deepcopy(stage.sources[0].cfg if len(stage.sources) == 1 else cfg)
    with open_dict(stage_cfg):
        stage_cfg.negatives = OmegaConf.create(stage.negatives)
        stage_cfg.trainer.max_epochs = stage.epochs
        if not own:
            stage_cfg.paths.output_dir = str(out)
            stage_cfg.logger.wandb.enabled = False
    return stage_cfg


def training_data(
    stage_cfg: DictConfig,
    stage: Stage,
    target_train: RetrievalSplit | None,
    splits: SplitMemo | None = None,
) -> tuple[RetrievalSplit | UnionSplit, Mapping[str, list[str]], Any]:
    """The stage's training split (a :class:`UnionSplit` for several sources), its pools and denoise record.

    Splits already read for the stage's key are taken from ``splits``.
    """
    loaded = []
    for source in stage.sources:
        if splits is not None and (source.label, source.split) in splits:
            split = splits[(source.label, source.split)]
        else:
            split = target_train if source.is_target and target_train is not None else source.load()
        log.info("stage %s: %s %s, %d queries", stage.name, source.label, source.split, len(split.queries))
        pools = training.negative_pools(stage_cfg, split, OmegaConf.create(source.language))
        loaded.append((source, split, pools))
    if len(loaded) == 1:
        _, split, pools = loaded[0]
        denoised = getattr(pools, "denoise", None)
        return split, pools, denoised.as_dict() if denoised is not None else None
    from mdr.mining.denoise import NegativePools

    union = UnionSplit([(source.part, split) for source, split, _ in loaded])
    merged = NegativePools()
    denoise: dict[str, Any] = {}
    for source, _, pools in loaded:
        merged.update(UnionSplit.namespace_pools(source.part, pools))
        if getattr(pools, "denoise", None) is not None:
            denoise[source.part] = pools.denoise.as_dict()
    return union, merged, denoise or None


def run_stage(
    cfg: DictConfig,
    stage: Stage,
    start: str | None,
    out: Path,
    target_train: RetrievalSplit | None = None,
    splits: SplitMemo | None = None,
) -> StageRun:
    """Train one stage from ``start`` (an encoder folder; None: the configured model) in ``out``.

    ``fit`` resumes from ``out/checkpoints/last.ckpt`` when a killed attempt left one.
    """
    stage_cfg = stage_config(cfg, stage, out, stage.own)
    data, pools, denoise = training_data(stage_cfg, stage, target_train, splits)
    encoder, tokenizer = training.load_encoder(stage_cfg, start)
    fitted = training.fit(stage_cfg, encoder, tokenizer, data, pools, out)
    trainer = fitted["trainer"]
    return StageRun(
        encoder, tokenizer, fitted["summary"], denoise, bool(trainer.is_global_zero), int(trainer.world_size)
    )


def cached_stage(
    cfg: DictConfig,
    stage: Stage,
    key: dict[str, Any],
    digest: str,
    start: str | None,
    splits: SplitMemo | None = None,
    wait: bool = True,
) -> tuple[Path, str, dict[str, Any] | None]:
    """(encoder folder, ``trained``, ``reused`` or ``busy``, summary) of a cached stage, trained now unless found.

    Jobs needing the same stage wait on ``<dir>/.lock`` (:func:`mdr.utils.cache.cache_lock`: it holds across
    nodes, so two jobs never train into one ``run/``); the encoder is saved with a manifest to
    ``.encoder.tmp-<host>-<pid>`` and renamed, so a folder with ``encoder/`` is complete. A found encoder is
    reused only when ``stage.json`` holds this key and the encoder matches its manifest (sizes, and every byte up
    to :data:`mdr.utils.cache.FULL_CHECK_BYTES`); otherwise the reason is logged and the stage is trained again.
    With ``wait=False`` (``run.stages_only``) a stage another job holds is left to it: ``busy``, nothing trained.
    """
    root = stage_dir(cfg, digest)
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
        if not one_process(cfg):  # its ranks would wait on this lock for each other
            raise DataError(
                f"stage {stage.name} ({root}) is not cached yet, and cached stages are trained by one process on one "
                "device: run the same command once with trainer=gpu (trainer=cpu on CPU) in place of trainer=ddp and "
                "without trainer.devices / trainer.num_nodes (with launcher=slurm its jobs then ask for one task and "
                "one GPU; not inside a multi-task allocation, whose tasks per node must equal trainer.devices), then "
                "this run reuses it"
            )
        atomic_write_json(root / "stage.json", {"name": stage.name, "key": key})
        log.info("stage %s: training on %s -> %s", stage.name, ", ".join(s.label for s in stage.sources), root)
        trained = run_stage(cfg, stage, start, root / "run", splits=splits)
        if not trained.is_global_zero:
            raise RuntimeError(
                f"stage {stage.name} is cached and must be trained before DDP spawns: train it first with trainer=gpu "
                "(one process, one device), then rerun"
            )
        remove_stale_builds(root, ".encoder.tmp*")  # saves of killed jobs (legacy '.encoder.tmp' included)
        staging = root / staging_name(".encoder")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            trained.encoder.save_pretrained(staging, trained.tokenizer)
            write_folder_manifest(staging)
            summary = {**trained.summary, "denoise": trained.denoise}
            atomic_write_json(root / "summary.json", summary)
            staging.rename(encoder_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        remove_checkpoints(cfg, root / "run", encoder_dir)  # later jobs reuse the encoder, never resume
        return encoder_dir, "trained", summary


def _reuse_problem(root: Path, key: Mapping[str, Any]) -> str | None:
    """Why the stage at ``root`` cannot be reused for ``key``, or None."""
    try:
        recorded = json.loads((root / "stage.json").read_text(encoding="utf-8")).get("key")
    except (OSError, ValueError, AttributeError) as error:
        return f"{root / 'stage.json'} cannot be read ({error})"
    if json.loads(json.dumps(recorded, sort_keys=True, default=str)) != json.loads(
        json.dumps(key, sort_keys=True, default=str)
    ):
        return f"{root / 'stage.json'} holds another key than this run's"
    return check_folder(root / "encoder", "auto")


def one_process(cfg: DictConfig) -> bool:
    """Whether the trainer runs as a single process on one device (no DDP)."""
    trainer = cfg.trainer
    devices = trainer.get("devices", 1)
    count = len(devices) if isinstance(devices, (list, ListConfig)) else devices
    if str(count) == "auto":
        count = 1 if str(trainer.get("accelerator")) == "cpu" else "auto"
    return str(count) == "1" and int(trainer.get("num_nodes") or 1) == 1


def _summary(root: Path) -> dict[str, Any] | None:
    path = root / "summary.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        log.warning("%s cannot be read (%s): the stage's training summary is left out", path, error)
        return None


@dataclass
class ScheduleResult:
    """What the schedule left to evaluate.

    Attributes:
        encoder / tokenizer: the final encoder (the configured model for zero-shot).
        extra: metrics.json fields: ``train`` (the final stage's training summary), ``initialised_from`` (the
            encoder the final stage started from), ``encoder`` (the evaluated encoder's folder), ``denoised`` /
            ``denoise``, ``proportion_applies_to`` and ``schedule`` (one record per stage).
    """

    encoder: Any
    tokenizer: Any
    extra: dict[str, Any]
    distributed: bool = False


def _record(stage: Stage, digest: str) -> dict[str, Any]:
    return {
        "name": stage.name,
        "train_on": [f"{source.label}:{source.split}" for source in stage.sources],
        "epochs": stage.epochs,
        "hard_proportion": stage.hard_proportion,
        "num_negatives": int(stage.negatives["num_negatives"]),
        "pool": (stage.negatives.get("pool") or {}).get("source"),
        "key": digest,
        "dir": None,
        "status": None,
        "train": None,
    }


def run_schedule(cfg: DictConfig, out: Path, target_train: RetrievalSplit | None = None) -> ScheduleResult:
    """Run the schedule's stages in order; return the final encoder (on every DDP rank).

    After a DDP fit every rank gets a result with ``distributed=True``: each evaluates its shards of the corpus
    (:func:`mdr.run_evaluation.evaluate_and_report`); only rank 0 saves the encoder and writes files.

    Cached stages come first (trained or reused); the run's own stage trains in ``out`` and, with
    ``train.save_encoder``, is saved to ``out/encoder``. Each record's ``status`` is ``trained`` or ``reused``
    (cached stages) or ``run`` (the run's own).

    Args:
        target_train: the run's own training split, already read (``mdr.pipeline.load_splits``), or None.
    """
    plan = schedule(cfg)
    splits: SplitMemo = {}
    keys = stage_keys(cfg, plan, splits, target_train)
    records = [_record(stage, digest) for stage, (_, digest) in zip(plan.stages, keys)]
    extra: dict[str, Any] = {
        "train": None,
        "initialised_from": None,
        "encoder": None,
        "denoised": False,
        "denoise": None,
        "proportion_applies_to": plan.proportion_applies_to,
        "schedule": {"name": plan.name, "proportion_applies_to": plan.proportion_applies_to, "stages": records},
    }
    start: str | None = None
    summary: dict[str, Any] | None = None
    for stage in (stage for stage in plan.stages if not stage.own):
        key, digest = keys[stage.index]
        encoder_dir, status, summary = cached_stage(cfg, stage, key, digest, start, splits)
        records[stage.index].update(dir=str(stage_dir(cfg, digest)), status=status, train=summary)
        extra["initialised_from"] = start
        start = str(encoder_dir)
    if not plan.stages:  # zero-shot
        encoder, tokenizer = training.load_encoder(cfg, None)
        return ScheduleResult(encoder, tokenizer, extra)
    last = plan.stages[-1]
    if not last.own:  # the final stage is cached: evaluate its encoder
        encoder, tokenizer = training.load_encoder(cfg, start)
        denoise = (summary or {}).get("denoise")
        extra.update(train=summary, encoder=start, denoised=denoise is not None, denoise=denoise)
        return ScheduleResult(encoder, tokenizer, extra)
    trained = run_stage(cfg, last, start, out, target_train, splits)
    distributed = trained.world_size > 1
    if not trained.is_global_zero:
        return ScheduleResult(trained.encoder, trained.tokenizer, extra, distributed)
    records[-1].update(status="run", train=trained.summary)
    extra.update(train=trained.summary, initialised_from=start, denoised=trained.denoise is not None)
    extra["denoise"] = trained.denoise
    if cfg.train.save_encoder:
        trained.encoder.save_pretrained(out / "encoder", trained.tokenizer)
        extra["encoder"] = str(out / "encoder")
    return ScheduleResult(trained.encoder, trained.tokenizer, extra, distributed)


def train_cached_stages(cfg: DictConfig) -> dict[str, Any]:
    """``run.stages_only``: train (or find) the run's cached stages in order, nothing else; return their records.

    A pass of this over a sweep's command trains each distinct cached stage in one job: a stage another job
    holds is not waited for (``busy``, and the later stages of this run are left for the run itself), so no
    job holds a device waiting on a stage lock. The run's own stage, evaluation and ``metrics.json`` are left
    to the normal run of the same command, which then reuses the cache.
    """
    plan = schedule(cfg)
    splits: SplitMemo = {}
    keys = stage_keys(cfg, plan, splits)
    records = [_record(stage, digest) for stage, (_, digest) in zip(plan.stages, keys)]
    start: str | None = None
    for stage in (stage for stage in plan.stages if not stage.own):
        key, digest = keys[stage.index]
        encoder_dir, status, summary = cached_stage(cfg, stage, key, digest, start, splits, wait=False)
        records[stage.index].update(dir=str(stage_dir(cfg, digest)), status=status, train=summary)
        if status == "busy":
            break
        start = str(encoder_dir)
    done = [record for record in records if record["status"] is not None]
    return {"stages_only": True, "schedule": {"name": plan.name, "stages": done}}
