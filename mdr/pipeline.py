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
from mdr.evaluation.evaluator import evaluate_language, remove_if_empty
from mdr.evaluation.search import search_device
from mdr.losses import InfoNCELoss
from mdr.mining.miner import PoolSettings, hard_negative_pools
from mdr.models.bi_encoder import SETTINGS_FILE, BiEncoder, EncoderSettings, ModelLoadError, load_tokenizer
from mdr.models.dropout import sdpa_supported
from mdr.models.module import AtomicCheckpointIO, BiEncoderModule, EpochEndCheckpoint, checkpoint_every
from mdr.models.precision import resolve_precision
from mdr.models.progress import ProgressLog, duration
from mdr.stages import (
    StageFunctions,
    evaluation_splits,
    low_resource,
    run_schedule,
    train_cached_stages,
    trains_on_target,
)
from mdr.utils.allocator import retain_freed_memory
from mdr.utils.environment import code_version, device_name, faiss_version
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


REUSED_FROM = "reused_from"
"""Key :func:`run_task` adds to the metrics it returns from an earlier run's folder (written to no file)."""


def runs_folder(cfg: DictConfig) -> Path | None:
    """Where a single run looks for earlier runs of its config (:func:`reuse_earlier_run`): the folder of Hydra's
    ``<time>`` run folders (``outputs/<task>/runs``) when the command gave no ``hydra.run.dir``, so every command
    gets a new folder. None for a multirun, a folder the command chose, or a config composed outside Hydra."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.RUN:
        return None
    hydra_cfg = HydraConfig.get()
    if any(item.split("=", 1)[0].lstrip("+~") == "hydra.run.dir" for item in hydra_cfg.overrides.hydra):
        return None
    out = Path(str(cfg.paths.output_dir)).resolve()
    return out.parent if out == Path(hydra_cfg.runtime.output_dir).resolve() else None


def headline(payload: dict[str, Any]) -> str:
    """``MRR@100=0.7698`` from a metrics.json payload (the first ``mrr@*`` measure; ``?`` without one)."""
    metrics = payload.get("metrics") or {}
    name = next((key for key in metrics if key.startswith("mrr@")), None)
    return f"{name.upper()}={float(metrics[name]):.4f}" if name else "MRR=?"


def reuse_earlier_run(cfg: DictConfig, out: Path, runs_dir: Path) -> dict[str, Any] | None:
    """A single run in a new folder: the stored metrics of the newest finished run of the same config under
    ``runs_dir`` (``run.on_complete=skip``, the default), or None to run in ``out``. Logs what it found: a
    finished run (reused, or run again with ``run.on_complete=fresh`` or when its weights changed since), or an
    unfinished one that ``hydra.run.dir=<its folder>`` would resume."""
    runs = run_folder.earlier_runs(cfg, runs_dir, out)
    if not runs:
        return None
    newest = runs[0]
    if newest.metrics is None:
        log.info(
            "an unfinished run of this config is at %s (it holds a resume checkpoint); this command starts anew in "
            "%s, hydra.run.dir=%s resumes that one instead",
            newest.folder,
            out,
            newest.folder,
        )
        return None
    commit = str((newest.metrics.get("code") or {}).get("commit") or "")[:7]
    found = (
        f"a finished run of this config is at {newest.folder} ({headline(newest.metrics)}, "
        f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(newest.when))}{', commit ' + commit if commit else ''}"
        f"{f'; newest of {sum(run.metrics is not None for run in runs)}' if len(runs) > 1 else ''})"
    )
    changed = run_folder.weights_changed_since(cfg, newest.when)
    if changed:
        log.info("%s, but %s changed after it: running again in %s", found, changed, out)
        return None
    if run_folder.on_complete_policy(cfg) == "fresh":
        log.info("%s; run.on_complete=fresh: running again in %s", found, out)
        return None
    log.info(
        "%s: its metrics are returned and nothing is run (run.on_complete=fresh runs again; hydra.run.dir=<folder> "
        "runs in a folder of your choice)",
        found,
    )
    return {**newest.metrics, REUSED_FROM: str(newest.folder)}


def run_task(
    cfg: DictConfig, task: Callable[[DictConfig], dict[str, Any]], runs_dir: Path | None = None
) -> dict[str, Any]:
    """Claim the run folder for ``cfg``, write the resolved config, run ``task``; on failure leave ``failed.json``.

    ``metrics.json`` is written by the task itself, atomically, only once everything succeeded. The folder
    belongs to one config (:mod:`mdr.run_folder`): another config is refused before anything runs (and
    leaves no ``failed.json``), the same config resumes, and a finished run returns its stored metrics. With
    ``runs_dir`` (a single run in a new folder, :func:`runs_folder`), a finished run of the same config in a folder
    under it is returned instead of running again (:func:`reuse_earlier_run`).
    """
    out = output_dir(cfg)
    if not run_folder.is_primary_process():  # a DDP / SLURM rank > 0: rank 0 owns the folder
        return follow_rank_zero(out, task, cfg)
    told = False  # whether the launch's other ranks know what this rank does (SLURM tasks, torchrun)
    try:
        with run_folder.exclusive(out):
            earlier = reuse_earlier_run(cfg, out, runs_dir) if runs_dir and run_folder.is_new(out) else None
            if earlier is not None:  # this folder keeps only Hydra's files and this command's log
                run_folder.tell_other_ranks(out, "complete")
                return earlier
            state = run_folder.claim(cfg, out)
            run_folder.tell_other_ranks(out, "run" if state.complete is None else "complete")
            told = True
            if state.complete is not None:
                log.info("%s holds this config's finished run; nothing recomputed (run.on_complete=fresh reruns)", out)
                print(f"[mdr] {out}: already complete (same config), metrics.json kept", flush=True)
                # a kill between metrics.json and the tidying left them: nothing resumes from them any more
                run_folder.remove_weights(cfg, out)
                if not OmegaConf.select(cfg, "evaluation.keep_embeddings", default=False):
                    remove_if_empty(out / "embeddings")
                return state.complete
            atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
            try:
                result = task(cfg)
            except BaseException as error:
                if not isinstance(error, KeyboardInterrupt):
                    record_failure(out, error)
                run_folder.tell_other_ranks(out, "failed", f"{type(error).__name__}: {error}")  # none waits on it
                if isinstance(error, SIGTERMException):  # a SystemExit with code 0: say 128 + SIGTERM instead
                    raise SystemExit(128 + signal.SIGTERM) from error
                raise
            (out / "failed.json").unlink(missing_ok=True)
            return result
    except run_folder.RunFolderRefused as error:
        if not told:  # refused before anything ran (another config's results, folder in use)
            run_folder.tell_other_ranks(out, "refused", str(error))
        raise


def record_failure(out: Path, error: BaseException) -> None:
    """Log ``error`` and write it (message and traceback) to ``out/failed.json``; where even that cannot be written
    (a full disk), log why and leave the error to propagate as it is."""
    message = f"{type(error).__name__}: {error}"
    log.error("run failed: %s (recorded in %s)", message, out / "failed.json")
    try:
        atomic_write_json(
            out / "failed.json", {"error": message, "traceback": traceback.format_exc(), "time": time.time()}
        )
    except OSError as unwritten:
        log.error("cannot record the failure in %s: %s", out / "failed.json", unwritten)


def follow_rank_zero(out: Path, task: Callable[[DictConfig], dict[str, Any]], cfg: DictConfig) -> dict[str, Any]:
    """A rank > 0 takes rank 0's decision on the run folder: run ``task``, return ``{}`` (already complete), or
    raise what rank 0 raised; it neither locks nor records (:func:`mdr.run_folder.rank_zero_decision`).

    Raises:
        RunFolderRefused: rank 0 refused the folder.
    """
    decision = run_folder.rank_zero_decision(out)
    if decision["decision"] == "complete":
        print(f"[mdr] {out}: rank 0 found this config's finished run; this rank returns", flush=True)  # off rank 0
        return {}
    if decision["decision"] == "refused":
        raise run_folder.RunFolderRefused(f"rank 0 refused {out}: {decision['message']}")
    if decision["decision"] == "failed":
        raise RuntimeError(f"rank 0 failed on {out}: {decision['message']}")
    run_folder.watch_rank_zero(out)  # rank 0 failing later ends this rank instead of leaving it in a collective
    return task(cfg)


def in_multirun() -> bool:
    """True inside a Hydra multirun job."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def entry_point(cfg: DictConfig, task: Callable[[DictConfig], dict[str, Any]]) -> float | None:
    """Run ``task`` for a Hydra main; return MRR for sweepers (MRR@100; MRR@d below ``evaluation.depth=100``).

    In a multirun a failing job is recorded (``failed.json``) and logged, and the sweep goes on with the
    next job; the aggregation lists it. A single run re-raises, so the command exits non-zero. A job refused
    by its run folder (another config's results are there) stops the sweep in either case.
    """
    started = time.monotonic()
    try:
        result = run_task(cfg, task, runs_folder(cfg))
    except run_folder.RunFolderRefused:
        raise  # even in a multirun: the folder's old results would otherwise pass for this cell's
    except Exception:
        if not in_multirun():
            raise
        log.exception("job failed; recorded in %s/failed.json, continuing the sweep", cfg.paths.output_dir)
        return None
    metrics = result.get("metrics", {})
    name, mrr = next(((name, value) for name, value in metrics.items() if name.startswith("mrr@")), (None, None))
    if mrr is not None:  # rank 0 of a finished job
        reused = result.get(REUSED_FROM)
        print(
            f"[mdr] done {run_name(cfg)} in {duration(time.monotonic() - started)}: {name.upper()}"
            f"={mrr:.4f} -> {reused or cfg.paths.output_dir}{' (an earlier run, reused)' if reused else ''}",
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
    """The sweep folder's name (``hydra.sweep.dir``, wherever it is) for a multirun job, the run folder's
    otherwise: a sweep's jobs and its summary run (:mod:`mdr.reporting.wandb_summary`) share one W&B group."""
    if in_multirun():
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().sweep.dir).name
    return out.parent.name if out.parent.parent.name == "multiruns" else out.name


def run_name(cfg: DictConfig) -> str:
    """A readable run name: language, model, stage, proportion (one spelling; ``-`` where nothing trains), seed."""
    stage = cfg.stage.name if cfg.get("stage") else "eval"
    proportion = f"{float(cfg.negatives.hard_proportion):g}" if trained_any(cfg) else "-"
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

    The measures carry the depth they were computed over (``evaluation.depth=10``: ``mrr@10``, ``recall@10``),
    and metrics.json records that depth in ``depth``.

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
    search = search_device(evaluation.faiss_gpu, torch.cuda.device_count() if use_cuda else 0)
    log.info("evaluation: encoding on %s (%s), faiss searching on %s", device, device_name(device), search)
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
        # null where nothing was trained (stage zero_shot, evaluate.py): no negatives were drawn
        "hard_proportion": float(cfg.negatives.hard_proportion) if trained_any(cfg) else None,
        "num_negatives": int(cfg.negatives.num_negatives) if trained_any(cfg) else None,
        "seed": int(cfg.seed),
        "split": published_split(cfg),  # the split read, by its published name (MIRACL's mdr `test` is its dev)
        "depth": int(evaluation.depth),  # what the measures were computed over: mrr@10 at depth 10
        "num_queries": result.num_queries,
        "metrics": result.metrics,
        "run_file": f"runs/{primary}.trec",
        "per_query_file": f"per_query/{primary}.tsv",
        "code": code_version(),  # mdr's git commit (dirty: uncommitted changes) and package versions
        "evaluation": {
            "autocast": str(autocast).removeprefix("torch.") if autocast else None,
            "fp16_index": bool(evaluation.get("fp16_index", False)),
            "ranks": world,
            "device": device_name(device),  # where the corpus was encoded
            "faiss": search,  # where faiss searched: gpu | cpu (evaluation.faiss_gpu, the faiss build)
            "faiss_version": faiss_version(),
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
    shown = {"mrr": "MRR", "recall": "Recall", "ndcg": "nDCG"}
    for code, found in results.items():
        values = " ".join(
            f"{shown[name.split('@')[0]]}@{name.split('@')[1]}={value:.4f}" for name, value in found.metrics.items()
        )
        print(
            f"[mdr] {code} {payload['model']} {payload['stage']} p={payload['hard_proportion']} "
            f"seed={payload['seed']}: {values}",
            flush=True,
        )
    return payload


def trains_on_cpu(cfg: DictConfig) -> bool:
    """Whether ``trainer.accelerator`` puts training on the CPU (``auto`` does where there is no CUDA)."""
    accelerator = str(cfg.trainer.accelerator)
    return accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())


def published_split(cfg: DictConfig) -> str:
    """The split ``data.test_split`` reads, by the name its publisher gives it (the data group's reader says)."""
    return build_reader(cfg.data).published_split(str(cfg.data.test_split))


def fast_dropout_on(cfg: DictConfig, encoder: BiEncoder) -> bool:
    """``train.fast_dropout`` resolved for ``encoder``: true, false, or ``auto`` = CPU training of an SDPA model."""
    setting = cfg.train.fast_dropout
    if setting == "auto":
        return trains_on_cpu(cfg) and encoder.fast_dropout_supported()
    return bool(setting)


def trained_any(cfg: DictConfig) -> bool:
    """Whether the run's schedule trains at all (not ``stage=zero_shot``, not evaluate.py)."""
    stage = cfg.get("stage")  # the listed stages, not resolved: a stage's own derived config must pass too
    return cfg.get("negatives") is not None and stage is not None and bool(stage.get("stages"))


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


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run the stage schedule (``stage.stages``), save the final encoder, evaluate, write metrics.json, then
    remove the resume checkpoints and, with ``run.keep_encoder=false``, the encoder
    (:func:`mdr.run_folder.remove_weights`)."""
    out = output_dir(cfg)
    validate(cfg)  # config alone, before anything is read, built or trained
    checkpoint_every(cfg.train.get("checkpoint_every_n_steps"))
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    if cfg.get("run", {}).get("stages_only", False):  # a sweep's shared stages first, one job per stage
        return stages_only(cfg)
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
        run_folder.remove_weights(cfg, out)
    return payload


def stages_only(cfg: DictConfig) -> dict[str, Any]:
    """``run.stages_only=true``: train the run's cached stages (:func:`mdr.stages.train_cached_stages`), stop there.

    No ``metrics.json``: the folder stays unfinished, and the same command without the flag runs the cell,
    reusing the stages. Nothing is read for the run's own stage.
    """
    result = train_cached_stages(cfg, StageFunctions(fit, load_encoder, negative_pools))
    stages = result["schedule"]["stages"]
    for record in stages:
        print(f"[mdr] run.stages_only: stage {record['name']} {record['status']} ({record['dir']})", flush=True)
    if not stages:
        print("[mdr] run.stages_only: no cached stage in this schedule; nothing to do", flush=True)
    return result


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``checkpoint`` (or the configured model as it is) on the configured language."""
    out = output_dir(cfg)
    validate(cfg)
    _, test_split = load_splits(cfg)
    validate_splits(cfg, None, test_split)
    encoder, tokenizer = load_encoder(cfg, cfg.checkpoint)
    tests = evaluation_splits(cfg, test_split)  # evaluation.languages: several test splits
    return evaluate_and_report(cfg, encoder, tokenizer, tests, out, {"checkpoint": cfg.checkpoint})
