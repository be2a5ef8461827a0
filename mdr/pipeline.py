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

from mdr import run_folder
from mdr.data.collator import BiEncoderCollator
from mdr.data.datamodule import RetrievalDataModule
from mdr.data.negatives import NegativeSampler
from mdr.data.schema import DataError, RetrievalSplit
from mdr.evaluation.evaluator import evaluate_language
from mdr.losses import InfoNCELoss
from mdr.mining.miner import PoolSettings, hard_negative_pools
from mdr.models.bi_encoder import SETTINGS_FILE, BiEncoder, EncoderSettings, ModelLoadError, load_tokenizer
from mdr.models.dropout import sdpa_supported
from mdr.models.module import BiEncoderModule, EpochEndCheckpoint
from mdr.models.precision import resolve_precision
from mdr.models.progress import ProgressLog, duration
from mdr.stages import StageFunctions, evaluation_splits, low_resource, run_schedule, trains_on_target
from mdr.utils.instantiate import build_reader, encoder_settings, ensure_model_files
from mdr.utils.io import atomic_write_json, atomic_write_text
from mdr.utils.logging import get_logger
from mdr.utils.quiet import drop_unset_wandb_anonymous
from mdr.validation import validate, validate_splits

log = get_logger(__name__)


def output_dir(cfg: DictConfig) -> Path:
    """The run's folder (the Hydra output folder unless ``paths.output_dir`` is set)."""
    path = Path(cfg.paths.output_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_task(cfg: DictConfig, task: Callable[[DictConfig], dict[str, Any]]) -> dict[str, Any]:
    """Claim the run folder for ``cfg``, write the resolved config, run ``task``; on failure leave ``failed.json``.

    ``metrics.json`` is written by the task itself, atomically, only once everything succeeded. The folder
    belongs to one config (:mod:`mdr.run_folder`): another config is refused before anything runs (and
    leaves no ``failed.json``), the same config resumes, and a finished run returns its stored metrics.
    """
    out = output_dir(cfg)
    if not run_folder.is_primary_process():  # a DDP / SLURM rank > 0: rank 0 owns the folder
        return task(cfg)
    with run_folder.exclusive(out):
        state = run_folder.claim(cfg, out)
        if state.complete is not None:
            log.info("%s already holds this config's finished run; nothing recomputed (run.on_complete=fresh)", out)
            print(f"[mdr] {out}: already complete (same config), metrics.json kept", flush=True)
            return state.complete
        atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        try:
            result = task(cfg)
        except BaseException as error:
            if not isinstance(error, KeyboardInterrupt):
                atomic_write_json(
                    out / "failed.json",
                    {
                        "error": f"{type(error).__name__}: {error}",
                        "traceback": traceback.format_exc(),
                        "time": time.time(),
                    },
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
    next job; the aggregation lists it. A single run re-raises, so the command exits non-zero. A job refused
    by its run folder (another config's results are there) stops the sweep in either case.
    """
    started = time.monotonic()
    try:
        result = run_task(cfg, task)
    except run_folder.RunFolderRefused:
        raise  # even in a multirun: the folder's old results would otherwise pass for this cell's
    except Exception:
        if not in_multirun():
            raise
        log.exception("job failed; recorded in %s/failed.json, continuing the sweep", cfg.paths.output_dir)
        return None
    mrr = result.get("metrics", {}).get("mrr@100")
    if mrr is not None:  # rank 0 of a finished job
        print(
            f"[mdr] done {run_name(cfg)} in {duration(time.monotonic() - started)}: MRR@100={mrr:.4f} -> "
            f"{cfg.paths.output_dir}",
            flush=True,
        )
    return mrr


def load_splits(cfg: DictConfig) -> tuple[RetrievalSplit | None, RetrievalSplit]:
    """(train split, or None when no stage trains on the configured language, test split) of that language."""
    reader = build_reader(cfg.data)
    train = reader.load(cfg.data.train_split) if trains_on_target(cfg) else None
    test = reader.load(cfg.data.test_split)
    return train, test


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


def wandb_settings(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Keyword arguments shared by ``WandbLogger`` and ``wandb.init``: one group per sweep, offline by default.

    The W&B run id is the run folder's (:func:`mdr.run_folder.run_id`) with ``resume="allow"``: every attempt of a
    resumed run logs to one W&B run (offline, ``wandb sync`` merges the attempts' folders into it).
    """
    wandb_cfg = cfg.logger.wandb
    os.environ.setdefault("WANDB_SILENT", "true")
    identity = run_folder.run_id(out)
    resume = {"id": identity, "resume": "allow"} if identity else {}
    return {
        **resume,
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
    """CSV always (kept across resume: :func:`mdr.run_folder.csv_logger`); W&B grouped by the multirun folder."""
    loggers: list[Any] = [run_folder.csv_logger(out)]
    if cfg.logger.wandb.enabled:
        from lightning.pytorch.loggers import WandbLogger

        settings = wandb_settings(cfg, out)
        settings["save_dir"] = settings.pop("dir")
        loggers.append(drop_unset_wandb_anonymous(WandbLogger(**settings)))
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
    for code, section in payload.get("per_language", {}).items():  # evaluation.languages
        summary.update({f"test/{code}/{name}": value for name, value in section["metrics"].items()})
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
    if cfg.train.fast_dropout:
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
        callbacks=[checkpoints, ProgressLog.from_config(run_name(cfg), cfg.logger.get("progress"))],
        reload_dataloaders_every_n_epochs=1,
        enable_model_summary=False,
        plugins=plugins,
    )
    last = out / "checkpoints" / "last.ckpt"
    module.train()  # from_pretrained returns modules in eval mode; training wants dropout on
    started = time.time()
    resumed_at = run_folder.checkpoint_epochs(last) if last.is_file() else None  # epochs done before this attempt
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
            "resumed_at_epoch": resumed_at if trainer.ckpt_path else None,
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
    cfg: DictConfig,
    encoder: BiEncoder,
    tokenizer: Any,
    test: RetrievalSplit | dict[str, RetrievalSplit],
    out: Path,
    extra: dict[str, Any],
    distributed: bool = False,
) -> dict[str, Any]:
    """Evaluate on the test split, write metrics.json atomically, and print MRR@100.

    ``test`` may map several language codes to test splits (``evaluation.languages``,
    :func:`mdr.stages.evaluation_splits`): each gets its own run file, per-query file and metrics under
    ``per_language``; the top-level fields are the primary language's (the run's ``language`` if evaluated,
    else the first listed).

    The corpus is encoded in ``evaluation.shard_size``-row shards under ``<out>/embeddings/<language>/`` (a rerun
    after a kill reuses the finished ones), with bf16 autocast where :mod:`mdr.models.precision` supports it
    (``evaluation.bf16: auto``; ``false``: fp32), and searched shard by shard (``evaluation.fp16_index``).

    Args:
        distributed: every rank of the initialised process group calls this (e.g. after a DDP fit): each encodes
            and searches its own shards on its own device; rank 0 writes the files and returns the payload, the
            other ranks return ``{}``. False: this process does it all.
    """
    from mdr.distributed import world_size_and_rank
    from mdr.models.precision import autocast_dtype

    evaluation = cfg.evaluation
    world, rank = world_size_and_rank() if distributed else (1, 0)
    use_cuda = torch.cuda.is_available() and cfg.get("trainer", {}).get("accelerator") != "cpu"
    device = torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")
    encoder.to(device)
    bf16 = evaluation.get("bf16", "auto")
    if bf16 not in ("auto", True, False):
        raise ValueError(f"evaluation.bf16 must be auto, true or false, got {bf16!r}")
    autocast = autocast_dtype(device) if bf16 == "auto" else (torch.bfloat16 if bf16 else None)
    tests = test if isinstance(test, dict) else {str(cfg.language.code): test}
    results = {}
    for code, split in tests.items():  # one run file and per-query file per evaluation language
        results[code] = evaluate_language(
            encoder,
            tokenizer,
            split,
            code,
            out,
            depth=int(evaluation.depth),
            batch_size=int(evaluation.batch_size),
            device=device,
            use_gpu_index=evaluation.faiss_gpu,
            autocast_dtype=autocast,
            fp16_index=bool(evaluation.get("fp16_index", False)),
            shard_rows=int(evaluation.get("shard_size", 50_000)),
            keep_embeddings=bool(evaluation.get("keep_embeddings", False)),
            distributed=distributed,
        )
    if rank != 0:
        return {}
    primary = str(cfg.language.code) if str(cfg.language.code) in results else next(iter(results))
    result = results[primary]
    payload = {
        "language": primary,
        "low_resource": low_resource(cfg, primary),
        "data": cfg.data.name,
        "model": cfg.model.name,
        "stage": cfg.stage.name if cfg.get("stage") else "zero_shot",
        "hard_proportion": float(cfg.negatives.hard_proportion) if cfg.get("negatives") else None,
        "num_negatives": int(cfg.negatives.num_negatives) if cfg.get("negatives") else None,
        "seed": int(cfg.seed),
        "split": cfg.evaluation.split,
        "num_queries": result.num_queries,
        "metrics": result.metrics,
        "run_file": f"runs/{primary}.trec",
        "per_query_file": f"per_query/{primary}.tsv",
        "evaluation": {
            "autocast": str(autocast).removeprefix("torch.") if autocast else None,
            "fp16_index": bool(evaluation.get("fp16_index", False)),
            "ranks": world,
        },
        **extra,
    }
    if isinstance(test, dict):  # evaluation.languages: one section per language, the primary's also on top
        payload["evaluation_languages"] = list(results)
        payload["per_language"] = {
            code: {
                "low_resource": low_resource(cfg, code),
                "num_queries": found.num_queries,
                "metrics": found.metrics,
                "run_file": f"runs/{code}.trec",
                "per_query_file": f"per_query/{code}.tsv",
            }
            for code, found in results.items()
        }
    atomic_write_json(out / "metrics.json", payload)
    publish_to_wandb(cfg, out, payload)
    for code, found in results.items():
        print(
            f"[mdr] {code} {payload['model']} {payload['stage']} p={payload['hard_proportion']} "
            f"seed={payload['seed']}: MRR@100={found.metrics['mrr@100']:.4f} "
            f"Recall@100={found.metrics['recall@100']:.4f} nDCG@10={found.metrics['ndcg@10']:.4f}",
            flush=True,
        )
    return payload


def check_fast_dropout(cfg: DictConfig) -> None:
    """With ``train.fast_dropout``, the configured model must run SDPA attention (read from its config alone).

    Raises:
        DataError: it does not; ModelLoadError: its config cannot be loaded.
    """
    if not cfg.train.fast_dropout:
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


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run the stage schedule (``stage.stages``), save the final encoder, evaluate, write metrics.json, then
    remove the resume checkpoints (:func:`mdr.run_folder.remove_checkpoints`)."""
    out = output_dir(cfg)
    validate(cfg)  # config alone, before anything is read, built or trained
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    train_split, test_split = load_splits(cfg)
    validate_splits(cfg, train_split, test_split)
    check_fast_dropout(cfg)  # before mining and training
    tests = evaluation_splits(cfg, test_split)  # evaluation.languages: read and checked before training
    # the stage schedule (mdr.stages): cached earlier stages, then the run's own stage in `out`
    trained = run_schedule(cfg, out, StageFunctions(fit, load_encoder, negative_pools), train_split)
    # after a DDP fit every rank encodes and searches its shards; rank 0 writes the files, the others get {}
    payload = evaluate_and_report(
        cfg, trained.encoder, trained.tokenizer, tests, out, trained.extra, distributed=trained.distributed
    )
    if payload:  # rank 0, metrics.json written: nothing resumes from the checkpoints any more
        run_folder.remove_checkpoints(cfg, out, out / "encoder")
    return payload


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``checkpoint`` (or the configured model as it is) on the configured language."""
    out = output_dir(cfg)
    validate(cfg)
    _, test_split = load_splits(cfg)
    validate_splits(cfg, None, test_split)
    encoder, tokenizer = load_encoder(cfg, cfg.checkpoint)
    tests = evaluation_splits(cfg, test_split)  # evaluation.languages: several test splits
    return evaluate_and_report(cfg, encoder, tokenizer, tests, out, {"checkpoint": cfg.checkpoint})
