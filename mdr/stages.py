"""Multi-stage fine-tuning: train once on a source set, then start every target run from that checkpoint.

The source-stage encoder is cached under ``<cache_dir>/stages/<hash>/encoder``, keyed by everything that
shapes it (model, source data, its negatives, epochs, optimiser settings, seed) and nothing that does not
(target language, target hard-negative proportion). Concurrent jobs of one sweep that need the same
source stage wait on a file lock, so the stage is trained once per sweep, not once per cell.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from mdr.models.precision import resolve_precision
from mdr.utils.instantiate import build_reader
from mdr.utils.logging import get_logger

log = get_logger(__name__)


def stage_key(cfg: DictConfig) -> dict[str, object]:
    """What determines the source-stage encoder."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    model.pop("build", None)  # type: ignore[union-attr]
    return {
        "model": model,
        "source": OmegaConf.to_container(cfg.stage.source, resolve=True),
        "train": {
            k: v
            for k, v in OmegaConf.to_container(cfg.train, resolve=True).items()  # type: ignore[union-attr]
            if k not in ("num_workers", "save_encoder")
        },
        "loss": OmegaConf.to_container(cfg.loss, resolve=True),
        "precision": resolve_precision(str(cfg.trainer.precision), str(cfg.trainer.accelerator)),
        "seed": int(cfg.seed),
    }


def stage_dir(cfg: DictConfig) -> Path:
    """``<cache_dir>/stages/<source language>-<model>-s<seed>-<hash>``."""
    key = json.dumps(stage_key(cfg), sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return (
        Path(cfg.paths.cache_dir) / "stages" / f"{cfg.stage.source.language.code}-{cfg.model.name}-s{cfg.seed}-{digest}"
    )


def _source_cfg(cfg: DictConfig, root: Path) -> DictConfig:
    """The run's config with the source language, data, negatives and epochs put in."""
    source = OmegaConf.create(OmegaConf.to_container(cfg.stage.source, resolve=True))  # before it points at itself
    stage_cfg = cfg.copy()
    with open_dict(stage_cfg):
        stage_cfg.language = source.language
        stage_cfg.negatives = source.negatives
        stage_cfg.trainer.max_epochs = source.max_epochs
        stage_cfg.paths.output_dir = str(root / "run")
        stage_cfg.logger.wandb.enabled = False
    return stage_cfg


def source_stage_encoder(cfg: DictConfig) -> Path:
    """The source-stage encoder folder, trained now unless this key was trained before."""
    from mdr.pipeline import fit, load_encoder, negative_pools

    root = stage_dir(cfg)
    encoder_dir = root / "encoder"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second job of the sweep waits here, then reuses the result
        if (encoder_dir / "mdr_encoder.json").is_file():
            log.info("reusing source stage %s", encoder_dir)
            return encoder_dir
        stage_cfg = _source_cfg(cfg, root)
        (root / "stage.json").write_text(json.dumps(stage_key(cfg), indent=2, default=str) + "\n")
        split = build_reader(cfg.stage.source.data).load(cfg.stage.source.split)
        log.info("training source stage on %s (%d queries) -> %s", stage_cfg.language.code, len(split.queries), root)
        encoder, tokenizer = load_encoder(stage_cfg)
        pools = negative_pools(stage_cfg, split, stage_cfg.language)
        fitted = fit(stage_cfg, encoder, tokenizer, split, pools, root / "run")
        if not fitted["trainer"].is_global_zero:
            raise RuntimeError("the source stage must run before DDP spawns: run it with trainer.devices=1 first")
        staging = root / ".encoder.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        encoder.save_pretrained(staging, tokenizer)
        staging.rename(encoder_dir)
        return encoder_dir
