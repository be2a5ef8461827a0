"""Training one stage: the encoder and its tokenizer, the hard-negative pools, and the Lightning fit."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf

from mdr import run_folder
from mdr.data.collator import BiEncoderCollator
from mdr.data.datamodule import RetrievalDataModule
from mdr.data.negatives import NegativeSampler
from mdr.data.schema import DataError, RetrievalSplit
from mdr.losses import InfoNCELoss
from mdr.mining.miner import PoolSettings, hard_negative_pools
from mdr.models.bi_encoder import SETTINGS_FILE, BiEncoder, EncoderSettings, ModelLoadError, load_tokenizer
from mdr.models.dropout import sdpa_supported
from mdr.models.module import AtomicCheckpointIO, BiEncoderModule, EpochEndCheckpoint
from mdr.models.precision import resolve_precision
from mdr.models.progress import ProgressLog
from mdr.tracking import build_loggers, run_name
from mdr.utils.allocator import retain_freed_memory
from mdr.utils.environment import device_name
from mdr.utils.instantiate import encoder_settings, ensure_model_files
from mdr.utils.logging import get_logger

log = get_logger(__name__)


def load_encoder(cfg: DictConfig, name_or_path: str | None = None) -> tuple[BiEncoder, Any]:
    """The configured encoder (built locally first where the model group says how) and its tokenizer."""
    if name_or_path is None:
        ensure_model_files(cfg.model)
        name_or_path = str(cfg.model.name_or_path)
    settings = encoder_settings(cfg.model)
    saved = Path(name_or_path) / SETTINGS_FILE
    if saved.is_file():
        settings = EncoderSettings(**json.loads(saved.read_text()))
    return BiEncoder.from_pretrained(name_or_path, settings), load_tokenizer(name_or_path)


def negative_pools(cfg: DictConfig, split: RetrievalSplit, language: DictConfig) -> dict[str, list[str]]:
    """The run's hard-negative pools; nothing is mined when no hard negative is asked for.

    Returns a :class:`mdr.mining.denoise.NegativePools` (a dict): with ``negatives.denoise.enabled`` a teacher
    encoder has dropped likely false negatives, and its ``.denoise`` (:class:`~mdr.mining.denoise.DenoiseStats`,
    None when not denoised) says how many.
    """
    from mdr.mining.denoise import DenoiseSettings, NegativePools, denoise_pools, teacher_model

    denoise = DenoiseSettings.from_config(cfg.negatives.get("denoise"))
    if NegativeSampler(cfg.negatives.num_negatives, cfg.negatives.hard_proportion).num_hard == 0:
        return NegativePools()
    settings = PoolSettings(**OmegaConf.to_container(cfg.negatives.pool, resolve=True))  # type: ignore[arg-type]
    device = "cpu" if cfg.get("trainer", {}).get("accelerator") == "cpu" else None  # None: CUDA where there is one
    pools = hard_negative_pools(
        settings,
        split,
        language.code,
        language.analyzer,
        cfg.paths.cache_dir,
        lambda path: load_encoder(cfg, path),
        device,
    )
    if not denoise.enabled:
        return NegativePools(pools)
    teacher_cfg, teacher_path = teacher_model(cfg, denoise.teacher)

    def load_teacher() -> tuple[BiEncoder, Any, str]:
        encoder, tokenizer = load_encoder(teacher_cfg, teacher_path)
        return encoder, tokenizer, teacher_path or str(teacher_cfg.model.name_or_path)

    return denoise_pools(pools, split, language.code, denoise, load_teacher, cfg.paths.cache_dir, device)


def trains_on_cpu(cfg: DictConfig) -> bool:
    """Whether ``trainer.accelerator`` puts training on the CPU (``auto`` does where there is no CUDA)."""
    accelerator = str(cfg.trainer.accelerator)
    return accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())


def fast_dropout_on(cfg: DictConfig, encoder: BiEncoder) -> bool:
    """``train.fast_dropout`` resolved for ``encoder``: true, false, or ``auto`` = CPU training of an SDPA model."""
    setting = cfg.train.fast_dropout
    if setting == "auto":
        return trains_on_cpu(cfg) and encoder.fast_dropout_supported()
    return bool(setting)


def check_fast_dropout(cfg: DictConfig) -> None:
    """With ``train.fast_dropout=true``, the configured model must run SDPA attention (read from its config alone).

    ``auto`` needs no check: it is off for a model without SDPA (:func:`fast_dropout_on`).

    Raises:
        DataError: it does not; ModelLoadError: its config cannot be loaded.
    """
    if cfg.train.fast_dropout is not True:
        return
    ensure_model_files(cfg.model)
    name = str(cfg.model.name_or_path)
    try:
        supported = sdpa_supported(name)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"model.name_or_path={name!r}: no model config can be loaded ({error})") from error
    if not supported:
        raise DataError(
            f"train.fast_dropout=true: model.name_or_path={name!r} does not run SDPA attention, the only one fast "
            "dropout replaces; set train.fast_dropout=false"
        )


def fit(
    cfg: DictConfig, encoder: BiEncoder, tokenizer: Any, split: RetrievalSplit, pools: dict[str, list[str]], out: Path
) -> dict[str, Any]:
    """Train ``encoder`` on ``split`` with ``cfg.negatives``; resumes from ``out/checkpoints/last.ckpt``."""
    sampler = NegativeSampler(
        cfg.negatives.num_negatives, cfg.negatives.hard_proportion, seed=cfg.seed, strict=cfg.negatives.strict
    )
    settings = encoder.settings
    grad_cache = cfg.train.grad_cache
    collator = BiEncoderCollator(
        tokenizer,
        split.corpus,
        settings.query_max_length,
        settings.passage_max_length,
        settings.query_prefix,
        settings.passage_prefix,
        chunk_size=int(grad_cache.chunk_size) if grad_cache.enabled else None,
        chunk_tokens=int(cfg.train.chunk_tokens),
        token_cache=int(cfg.train.token_cache),
    )
    if cfg.train.gradient_checkpointing:
        encoder.gradient_checkpointing_enable()
    fast_dropout = fast_dropout_on(cfg, encoder)
    if fast_dropout:
        log.info(
            "train.fast_dropout: %d dropout modules and the attention dropout draw 16-bit masks",
            encoder.fast_dropout_enable(),
        )
    datamodule = RetrievalDataModule(
        split,
        pools,
        sampler,
        collator,
        cfg.train.batch_size,
        cfg.seed,
        cfg.train.num_workers,
    )
    module = BiEncoderModule(
        encoder,
        InfoNCELoss(cfg.model.temperature, mask_false_negatives=bool(cfg.loss.mask_false_negatives)),
        cfg.train.learning_rate,
        cfg.train.weight_decay,
        cfg.train.warmup_ratio,
        seed=int(cfg.seed),
        grad_cache=bool(grad_cache.enabled),
        gradient_clip_val=cfg.train.gradient_clip_val,
    )
    # one checkpoint per epoch end (and every train.checkpoint_every_n_steps steps): a killed or preempted job
    # resumes from the last one; negatives, batch order and dropout seeds are functions of (seed, epoch, step) and
    # the checkpoint says how many of the epoch's batches are done, so it ends where an uninterrupted run ends
    checkpoints = EpochEndCheckpoint(out / "checkpoints", cfg.train.get("checkpoint_every_n_steps"))
    plugins: list[Any] = [AtomicCheckpointIO()]  # checkpoints written in their own folder, then renamed
    if SLURMEnvironment.detect():
        plugins.append(SLURMEnvironment(auto_requeue=False))  # submitit requeues and the rerun resumes
    trainer_args = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_args["precision"] = resolve_precision(trainer_args["precision"], str(trainer_args["accelerator"]))
    if trains_on_cpu(cfg) and retain_freed_memory(int(cfg.train.cpu_malloc_retain_mb)):
        log.info(
            "train.cpu_malloc_retain_mb: glibc keeps up to %s MiB of freed memory for reuse",
            cfg.train.cpu_malloc_retain_mb,
        )
    trainer = pl.Trainer(
        **trainer_args,
        default_root_dir=str(out),
        logger=build_loggers(cfg, out),
        callbacks=[checkpoints, ProgressLog.from_config(run_name(cfg), cfg.logger.get("progress"))],
        reload_dataloaders_every_n_epochs=1,
        enable_model_summary=False,
        plugins=plugins,
    )
    last = out / "checkpoints" / "last.ckpt"
    module.train()  # from_pretrained returns modules in eval mode; training wants dropout on
    started = time.time()
    position = run_folder.checkpoint_position(last) if last.is_file() else None  # done before this attempt
    resumed_at = position.epochs if position else None
    if last.is_file():
        where = position.describe(trainer.max_epochs) if position else "its position unreadable"
        log.info("resuming from %s: %s", last.resolve(), where)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if last.is_file() else None)
    root_device = trainer.strategy.root_device
    stats = datamodule.last_stats
    masked = module.masked_total()
    return {
        "trainer": trainer,
        "summary": {
            "epochs": trainer.current_epoch,
            "steps": trainer.global_step,
            "seconds": round(time.time() - started, 1),
            "resumed_from": str(last) if trainer.ckpt_path else None,
            "resumed_at_epoch": resumed_at if trainer.ckpt_path else None,
            "resumed_at_step": position.steps if position and trainer.ckpt_path else None,
            "train_queries": stats.examples if stats else 0,
            "num_hard": sampler.num_hard,
            "hard_shortfall_last_epoch": stats.hard_shortfall if stats else 0,
            "precision": trainer_args["precision"],
            "device": device_name(root_device),  # where training ran: the CUDA card's name or the CPU model
            "accelerator": root_device.type,
            "devices": int(trainer.world_size),
            "mask_false_negatives": bool(cfg.loss.mask_false_negatives),
            "in_batch_false_negatives_masked": masked,
            "grad_cache_chunk_size": int(grad_cache.chunk_size) if grad_cache.enabled else None,
            "fast_dropout": fast_dropout,
        },
    }
