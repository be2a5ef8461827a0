"""Training one stage: the encoder and its tokenizer, the hard-negative pools, and the Lightning fit."""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.plugins.environments import SLURMEnvironment

from mdr import run_folder
from mdr.data.collator import BiEncoderCollator
from mdr.data.datamodule import RetrievalDataModule
from mdr.data.negatives import NegativeSampler, num_hard
from mdr.data.schema import DataError, RetrievalSplit
from mdr.losses import InfoNCELoss
from mdr.mining.denoise import NegativePools, denoise_pools
from mdr.mining.miner import PoolSettings, hard_negative_pools
from mdr.models.bi_encoder import SETTINGS_FILE, BiEncoder, EncoderSettings, ModelLoadError, load_tokenizer
from mdr.models.dropout import sdpa_supported
from mdr.models.module import AtomicCheckpointIO, BiEncoderModule, EpochEndCheckpoint
from mdr.models.precision import resolve_precision
from mdr.models.progress import ProgressLog
from mdr.spec import Language, Model, Negatives, Spec, Stage, Trainer
from mdr.tracking import build_loggers, run_name
from mdr.utils.allocator import retain_freed_memory
from mdr.utils.cache import digests_dir, folder_digest
from mdr.utils.config_identity import pool_keys
from mdr.utils.environment import device_name
from mdr.utils.instantiate import ensure_model_files
from mdr.utils.logging import get_logger

log = get_logger(__name__)


def load_encoder(model: Model, name_or_path: str | None = None) -> tuple[BiEncoder, Any]:
    """(encoder, tokenizer) at ``name_or_path`` (None: the model group's, built first); saved settings win."""
    if name_or_path is None:
        ensure_model_files(model.name, model.name_or_path, model.build)
        name_or_path = model.name_or_path
    saved = Path(name_or_path) / SETTINGS_FILE
    settings = EncoderSettings(**json.loads(saved.read_text())) if saved.is_file() else model.encoder
    return BiEncoder.from_pretrained(name_or_path, settings), load_tokenizer(name_or_path)


def pool_key(settings: PoolSettings, analyzer: str | None, cache_dir: str | Path) -> dict[str, Any]:
    """A mined pool's cache key: the IDENTITY pool settings that apply to its source, and bm25's analyzer."""
    from mdr.mining.bm25 import INDEX_VERSION
    from mdr.mining.tokenize import tokenizer_version

    bm25 = settings.source == "bm25"
    applies = {
        "backend": bm25,
        "tokenizer": bm25 and settings.backend == "bm25s",
        "encoder": settings.source == "dense",
    }
    key = {name: getattr(settings, name) for name in pool_keys() if applies.get(name, True)}
    if bm25:
        key["analyzer"] = analyzer
    if "tokenizer" in key:
        key.update(tokenizer=tokenizer_version(settings.tokenizer), index=INDEX_VERSION)
    if "encoder" in key and Path(str(settings.encoder)).is_dir():
        key["encoder"] = f"folder:{folder_digest(Path(str(settings.encoder)), digests_dir(cache_dir))}"
    return key


def negative_pools(spec: Spec, negatives: Negatives, split: RetrievalSplit, language: Language) -> NegativePools:
    """The hard-negative pools of ``negatives`` on ``split`` (empty when none is drawn), denoised where enabled."""
    if negatives.pool is None or num_hard(negatives.hard_proportion, negatives.num_negatives) == 0:
        return NegativePools()
    pool, device, cache_dir = negatives.pool, mining_device(spec.trainer), spec.paths.cache_dir
    encoder, key = partial(load_encoder, spec.model), pool_key(pool, language.analyzer, cache_dir)
    pools = hard_negative_pools(pool, split, language.code, language.analyzer, cache_dir, encoder, device, key=key)
    teacher = negatives.teacher
    if teacher is None:
        return NegativePools(pools)

    def load_teacher() -> tuple[BiEncoder, Any, str]:
        encoder, tokenizer = load_encoder(teacher.model, teacher.folder)
        return encoder, tokenizer, teacher.folder or teacher.model.name_or_path

    return denoise_pools(pools, split, language.code, negatives.denoise, load_teacher, cache_dir, device)


def mining_device(trainer: Trainer | None) -> str | None:
    """Where pools are mined and a teacher scores: the CPU for a CPU trainer, else None (CUDA where there is one)."""
    return "cpu" if trainer is not None and trainer.accelerator == "cpu" else None


def trains_on_cpu(trainer: Trainer) -> bool:
    """Whether ``trainer.accelerator`` puts training on the CPU (``auto`` does where there is no CUDA)."""
    return trainer.accelerator == "cpu" or (trainer.accelerator == "auto" and not torch.cuda.is_available())


def fast_dropout_on(spec: Spec, encoder: BiEncoder) -> bool:
    """``train.fast_dropout`` resolved for ``encoder``: true, false, or ``auto`` = CPU training of an SDPA model."""
    if spec.train.fast_dropout == "auto":
        return trains_on_cpu(spec.trainer) and encoder.fast_dropout_supported()
    return bool(spec.train.fast_dropout)


def check_fast_dropout(spec: Spec) -> None:
    """A :class:`DataError` where ``train.fast_dropout=true`` but the model's config does not run SDPA attention."""
    if spec.train.fast_dropout is not True:
        return
    model = spec.model
    ensure_model_files(model.name, model.name_or_path, model.build)
    try:
        supported = sdpa_supported(model.name_or_path)
    except (OSError, ValueError) as error:
        raise ModelLoadError(
            f"model.name_or_path={model.name_or_path!r}: no model config can be loaded ({error})"
        ) from error
    if not supported:
        raise DataError(
            f"train.fast_dropout=true: model.name_or_path={model.name_or_path!r} does not run SDPA attention, the only "
            "one fast dropout replaces; set train.fast_dropout=false"
        )


def fit(
    spec: Spec,
    stage: Stage,
    encoder: BiEncoder,
    tokenizer: Any,
    split: RetrievalSplit,
    pools: dict[str, list[str]],
    out: Path,
) -> dict[str, Any]:
    """Train ``encoder`` on ``split`` for ``stage``, resuming from ``out/checkpoints/last.ckpt``."""
    train, negatives = spec.train, stage.negatives
    sampler = NegativeSampler(negatives.num_negatives, negatives.hard_proportion, spec.seed, negatives.strict)
    settings = encoder.settings
    collator = BiEncoderCollator(
        tokenizer,
        split.corpus,
        settings.query_max_length,
        settings.passage_max_length,
        settings.query_prefix,
        settings.passage_prefix,
        chunk_size=train.grad_cache_chunk_size,
        chunk_tokens=train.chunk_tokens,
        token_cache=train.token_cache,
    )
    if train.gradient_checkpointing:
        encoder.gradient_checkpointing_enable()
    if fast_dropout := fast_dropout_on(spec, encoder):
        modules = encoder.fast_dropout_enable()
        log.info("train.fast_dropout: %d dropout modules and the attention dropout draw 16-bit masks", modules)
    datamodule = RetrievalDataModule(split, pools, sampler, collator, train.batch_size, spec.seed, train.num_workers)
    module = BiEncoderModule(
        encoder,
        InfoNCELoss(spec.model.temperature, mask_false_negatives=train.mask_false_negatives),
        train.learning_rate,
        train.weight_decay,
        train.warmup_ratio,
        seed=spec.seed,
        grad_cache=train.grad_cache_chunk_size is not None,
        gradient_clip_val=train.gradient_clip_val,
    )
    # a killed job resumes from the last checkpoint and, all draws seeded by (seed, epoch, step), ends as if unkilled
    checkpoints = EpochEndCheckpoint(out / "checkpoints", train.checkpoint_every_n_steps)
    plugins: list[Any] = [AtomicCheckpointIO()]  # checkpoints written in their own folder, then renamed
    if SLURMEnvironment.detect():
        plugins.append(SLURMEnvironment(auto_requeue=False))  # submitit requeues and the rerun resumes
    trainer_args = {**spec.trainer.args, "max_epochs": stage.epochs}
    trainer_args["precision"] = resolve_precision(spec.trainer.precision, spec.trainer.accelerator)
    if trains_on_cpu(spec.trainer) and retain_freed_memory(retain := train.cpu_malloc_retain_mb):
        log.info("train.cpu_malloc_retain_mb: glibc keeps up to %s MiB of freed memory for reuse", retain)
    logger = spec.logger
    progress = ProgressLog(run_name(spec, stage), logger.progress_every_n_steps, logger.progress_every_seconds)
    trainer = pl.Trainer(
        **trainer_args,
        default_root_dir=str(out),
        logger=build_loggers(spec, out, wandb=stage.own),
        callbacks=[checkpoints, progress],
        reload_dataloaders_every_n_epochs=1,
        enable_model_summary=False,
        plugins=plugins,
    )
    last = out / "checkpoints" / "last.ckpt"
    module.train()  # from_pretrained returns modules in eval mode; training wants dropout on
    started = time.time()
    position = run_folder.checkpoint_position(last) if last.is_file() else None  # done before this attempt
    if last.is_file():
        where = position.describe(trainer.max_epochs) if position else "its position unreadable"
        log.info("resuming from %s: %s", last.resolve(), where)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if last.is_file() else None)
    root_device, stats, resumed = trainer.strategy.root_device, datamodule.last_stats, bool(trainer.ckpt_path)
    return {
        "trainer": trainer,
        "summary": {
            "epochs": trainer.current_epoch,
            "steps": trainer.global_step,
            "seconds": round(time.time() - started, 1),
            "resumed_from": str(last) if resumed else None,
            "resumed_at_epoch": position.epochs if position and resumed else None,
            "resumed_at_step": position.steps if position and resumed else None,
            "train_queries": stats.examples if stats else 0,
            "num_hard": sampler.num_hard,
            "hard_shortfall_last_epoch": stats.hard_shortfall if stats else 0,
            "precision": trainer_args["precision"],
            "device": device_name(root_device),  # where training ran: the CUDA card's name or the CPU model
            "accelerator": root_device.type,
            "devices": int(trainer.world_size),
            "mask_false_negatives": train.mask_false_negatives,
            "in_batch_false_negatives_masked": module.masked_total(),
            "grad_cache_chunk_size": train.grad_cache_chunk_size,
            "fast_dropout": fast_dropout,
        },
    }
