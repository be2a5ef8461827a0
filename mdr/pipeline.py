"""What ``train.py`` and ``evaluate.py`` do, as functions of a composed config."""

from __future__ import annotations

import json
import os
import signal
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from mdr.data.collator import BiEncoderCollator
from mdr.data.datamodule import RetrievalDataModule
from mdr.data.negatives import NegativeSampler
from mdr.data.schema import RetrievalSplit
from mdr.evaluation.evaluator import evaluate_language
from mdr.losses import InfoNCELoss
from mdr.mining.miner import PoolSettings, hard_negative_pools
from mdr.models.bi_encoder import BiEncoder, EncoderSettings, load_tokenizer
from mdr.models.module import BiEncoderModule, EpochEndCheckpoint
from mdr.models.precision import resolve_precision
from mdr.utils.instantiate import build_reader, encoder_settings, ensure_model_files
from mdr.utils.io import atomic_write_json, atomic_write_text
from mdr.utils.logging import get_logger

log = get_logger(__name__)


def output_dir(cfg: DictConfig) -> Path:
    """The run's folder (the Hydra output folder unless ``paths.output_dir`` is set)."""
    path = Path(cfg.paths.output_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_task(cfg: DictConfig, task: Callable[[DictConfig], dict[str, Any]]) -> dict[str, Any]:
    """Write the resolved config, run ``task``, and on failure leave ``failed.json`` with the error.

    ``metrics.json`` is written by the task itself, atomically, only once everything succeeded.
    """
    out = output_dir(cfg)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0:
        atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    try:
        result = task(cfg)
    except BaseException as error:
        if not isinstance(error, KeyboardInterrupt):
            atomic_write_json(
                out / "failed.json",
                {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc(), "time": time.time()},
            )
        if isinstance(error, SIGTERMException):  # a SystemExit with code 0: say 128 + SIGTERM instead
            raise SystemExit(128 + signal.SIGTERM) from error
        raise
    (out / "failed.json").unlink(missing_ok=True)
    return result


def in_multirun() -> bool:
    """True inside a Hydra multirun job."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def entry_point(cfg: DictConfig, task: Callable[[DictConfig], dict[str, Any]]) -> float | None:
    """Run ``task`` for a Hydra main; return MRR@100 for sweepers.

    In a multirun a failing job is recorded (``failed.json``) and logged, and the sweep goes on with the
    next job; the aggregation lists it. A single run re-raises, so the command exits non-zero.
    """
    try:
        result = run_task(cfg, task)
    except Exception:
        if not in_multirun():
            raise
        log.exception("job failed; recorded in %s/failed.json, continuing the sweep", cfg.paths.output_dir)
        return None
    return result.get("metrics", {}).get("mrr@100")


def load_splits(cfg: DictConfig) -> tuple[RetrievalSplit | None, RetrievalSplit]:
    """(train split or None for zero-shot, test split) of the configured language."""
    reader = build_reader(cfg.data)
    train = reader.load(cfg.data.train_split) if cfg.get("stage") and cfg.stage.train_target else None
    test = reader.load(cfg.data.test_split)
    return train, test


def negative_pools(cfg: DictConfig, split: RetrievalSplit, language: DictConfig) -> dict[str, list[str]]:
    """The run's hard-negative pools; nothing is mined when no hard negative is asked for."""
    if NegativeSampler(cfg.negatives.num_negatives, cfg.negatives.hard_proportion).num_hard == 0:
        return {}
    settings = PoolSettings(**OmegaConf.to_container(cfg.negatives.pool, resolve=True))  # type: ignore[arg-type]
    return hard_negative_pools(
        settings, split, language.code, language.analyzer, cfg.paths.cache_dir, lambda path: load_encoder(cfg, path)
    )


def load_encoder(cfg: DictConfig, name_or_path: str | None = None) -> tuple[BiEncoder, Any]:
    """The configured encoder (built locally first where the model group says how) and its tokenizer."""
    if name_or_path is None:
        ensure_model_files(cfg.model)
        name_or_path = str(cfg.model.name_or_path)
    settings = encoder_settings(cfg.model)
    saved = Path(name_or_path) / "mdr_encoder.json"
    if saved.is_file():
        settings = EncoderSettings(**json.loads(saved.read_text()))
    return BiEncoder.from_pretrained(name_or_path, settings), load_tokenizer(name_or_path)


def wandb_settings(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Keyword arguments shared by ``WandbLogger`` and ``wandb.init``: one group per sweep, offline by default."""
    wandb_cfg = cfg.logger.wandb
    os.environ.setdefault("WANDB_SILENT", "true")
    return {
        "project": wandb_cfg.project,
        "entity": wandb_cfg.entity,
        "group": wandb_cfg.group or sweep_name(out),
        "name": run_name(cfg),
        "dir": str(out),
        "mode": wandb_cfg.mode,
        "job_type": cfg.task_name,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }


def build_loggers(cfg: DictConfig, out: Path) -> list[Any]:
    """CSV always; W&B (offline unless configured otherwise) grouped by the multirun folder."""
    from lightning.pytorch.loggers import CSVLogger

    loggers: list[Any] = [CSVLogger(save_dir=str(out), name="csv", version="")]
    if cfg.logger.wandb.enabled:
        from lightning.pytorch.loggers import WandbLogger

        settings = wandb_settings(cfg, out)
        settings["save_dir"] = settings.pop("dir")
        loggers.append(WandbLogger(**settings))
    return loggers


def publish_to_wandb(cfg: DictConfig, out: Path, payload: dict[str, Any]) -> None:
    """Put the test metrics and the cell into the run's W&B summary and close the run.

    Closing matters in a multirun: jobs share one process, and an open run would swallow the next job's logs.
    """
    if not cfg.logger.wandb.enabled:
        return
    import wandb

    if wandb.run is None:  # zero-shot / evaluate.py: no training logger opened a run
        wandb.init(**wandb_settings(cfg, out))
    summary = {f"test/{name}": value for name, value in payload["metrics"].items()}
    summary.update({key: payload[key] for key in ("language", "model", "stage", "hard_proportion", "seed")})
    wandb.run.summary.update(summary)
    wandb.finish()


def sweep_name(out: Path) -> str:
    """The multirun folder's name for a sweep job, the run folder's otherwise."""
    return out.parent.name if out.parent.parent.name == "multiruns" else out.name


def run_name(cfg: DictConfig) -> str:
    """A readable run name: language, model, stage, proportion, seed."""
    stage = cfg.stage.name if cfg.get("stage") else "eval"
    proportion = cfg.negatives.hard_proportion if cfg.get("negatives") else "-"
    return f"{cfg.language.code}-{cfg.model.name}-{stage}-p{proportion}-s{cfg.seed}"


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
    )
    if cfg.train.gradient_checkpointing:
        encoder.gradient_checkpointing_enable()
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
    # one checkpoint per epoch end: a killed or preempted job resumes from the last finished epoch, whose
    # negatives, batch order and dropout seeds are all functions of (seed, epoch), so it ends where an
    # uninterrupted run ends
    checkpoints = EpochEndCheckpoint(dirpath=out / "checkpoints")
    plugins = []
    if SLURMEnvironment.detect():
        plugins.append(SLURMEnvironment(auto_requeue=False))  # submitit requeues and the rerun resumes
    trainer_args = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_args["precision"] = resolve_precision(trainer_args["precision"], str(trainer_args["accelerator"]))
    trainer = pl.Trainer(
        **trainer_args,
        default_root_dir=str(out),
        logger=build_loggers(cfg, out),
        callbacks=[checkpoints],
        reload_dataloaders_every_n_epochs=1,
        enable_model_summary=False,
        plugins=plugins,
    )
    last = out / "checkpoints" / "last.ckpt"
    module.train()  # from_pretrained returns modules in eval mode; training wants dropout on
    started = time.time()
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if last.is_file() else None)
    stats = datamodule.last_stats
    masked = module.masked_total()
    return {
        "trainer": trainer,
        "summary": {
            "epochs": trainer.current_epoch,
            "steps": trainer.global_step,
            "seconds": round(time.time() - started, 1),
            "resumed_from": str(last) if trainer.ckpt_path else None,
            "resumed_at_epoch": module.start_epoch if trainer.ckpt_path else None,
            "train_queries": stats.examples if stats else 0,
            "num_hard": sampler.num_hard,
            "hard_shortfall_last_epoch": stats.hard_shortfall if stats else 0,
            "precision": trainer_args["precision"],
            "mask_false_negatives": bool(cfg.loss.mask_false_negatives),
            "in_batch_false_negatives_masked": masked,
            "grad_cache_chunk_size": int(grad_cache.chunk_size) if grad_cache.enabled else None,
        },
    }


def evaluate_and_report(
    cfg: DictConfig, encoder: BiEncoder, tokenizer: Any, test: RetrievalSplit, out: Path, extra: dict[str, Any]
) -> dict[str, Any]:
    """Evaluate on the test split, write metrics.json atomically, and print MRR@100."""
    device = "cuda" if torch.cuda.is_available() and cfg.get("trainer", {}).get("accelerator") != "cpu" else "cpu"
    encoder.to(device)
    result = evaluate_language(
        encoder,
        tokenizer,
        test,
        cfg.language.code,
        out,
        depth=int(cfg.evaluation.depth),
        batch_size=int(cfg.evaluation.batch_size),
        device=device,
        use_gpu_index=cfg.evaluation.faiss_gpu,
    )
    payload = {
        "language": cfg.language.code,
        "low_resource": bool(cfg.language.low_resource),
        "data": cfg.data.name,
        "model": cfg.model.name,
        "stage": cfg.stage.name if cfg.get("stage") else "zero_shot",
        "hard_proportion": float(cfg.negatives.hard_proportion) if cfg.get("negatives") else None,
        "num_negatives": int(cfg.negatives.num_negatives) if cfg.get("negatives") else None,
        "seed": int(cfg.seed),
        "split": cfg.evaluation.split,
        "num_queries": result.num_queries,
        "metrics": result.metrics,
        "run_file": f"runs/{cfg.language.code}.trec",
        "per_query_file": f"per_query/{cfg.language.code}.tsv",
        **extra,
    }
    atomic_write_json(out / "metrics.json", payload)
    publish_to_wandb(cfg, out, payload)
    print(
        f"[mdr] {payload['language']} {payload['model']} {payload['stage']} p={payload['hard_proportion']} "
        f"seed={payload['seed']}: MRR@100={result.metrics['mrr@100']:.4f} "
        f"Recall@100={result.metrics['recall@100']:.4f} nDCG@10={result.metrics['ndcg@10']:.4f}",
        flush=True,
    )
    return payload


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit on the target language (unless zero-shot), save the encoder, evaluate, write metrics.json."""
    out = output_dir(cfg)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    train_split, test_split = load_splits(cfg)
    extra: dict[str, Any] = {"train": None, "initialised_from": None}
    start = None
    if cfg.stage.get("source"):
        from mdr.stages import source_stage_encoder

        start = str(source_stage_encoder(cfg))
        extra["initialised_from"] = start
    encoder, tokenizer = load_encoder(cfg, start)
    if train_split is not None:
        pools = negative_pools(cfg, train_split, cfg.language)
        fitted = fit(cfg, encoder, tokenizer, train_split, pools, out)
        if not fitted["trainer"].is_global_zero:
            return {}
        extra["train"] = fitted["summary"]
        if cfg.train.save_encoder:
            encoder.save_pretrained(out / "encoder", tokenizer)
    return evaluate_and_report(cfg, encoder, tokenizer, test_split, out, extra)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``checkpoint`` (or the configured model as it is) on the configured language."""
    out = output_dir(cfg)
    reader = build_reader(cfg.data)
    test_split = reader.load(cfg.data.test_split)
    encoder, tokenizer = load_encoder(cfg, cfg.checkpoint)
    return evaluate_and_report(cfg, encoder, tokenizer, test_split, out, {"checkpoint": cfg.checkpoint})
