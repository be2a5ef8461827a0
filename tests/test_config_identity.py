"""mdr.utils.config_identity: one table says where each config key counts (run folder, stage, pool, report)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from mdr.mining.miner import PoolSettings
from mdr.stage_cache import MODEL_KEYS_IGNORED, TRAIN_KEYS_IGNORED, TRAINER_KEYS_IGNORED
from mdr.utils.config_identity import (
    IDENTITY,
    IGNORED_KEYS,
    canonical_config,
    config_hash,
    counts,
    left_out,
    pool_keys,
    shown_by,
)

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = sorted((ROOT / "docs" / "results").rglob("run_folder.json"))


def test_the_run_folder_identity_leaves_out_what_it_always_left_out() -> None:
    assert set(IGNORED_KEYS) == {
        "hydra",
        "run",
        "logger",
        "paths.output_dir",
        "paths.cache_dir",
        "trainer.enable_progress_bar",
        "trainer.enable_model_summary",
        "trainer.log_every_n_steps",
        "train.num_workers",
        "train.checkpoint_every_n_steps",
        "train.token_cache",
        "train.cpu_malloc_retain_mb",
        "train.save_encoder",
        "evaluation.batch_size",
        "evaluation.faiss_gpu",
    }


def test_stage_keys_leave_out_what_they_always_left_out() -> None:
    assert set(TRAINER_KEYS_IGNORED) == {
        "max_epochs",
        "precision",
        "log_every_n_steps",
        "enable_progress_bar",
        "enable_model_summary",
        "devices",
        "num_nodes",
        "strategy",
    }
    assert set(TRAIN_KEYS_IGNORED) == {
        "num_workers",
        "checkpoint_every_n_steps",
        "token_cache",
        "cpu_malloc_retain_mb",
        "save_encoder",
    }
    assert MODEL_KEYS_IGNORED == ("build",)


def test_every_pool_setting_has_a_row_and_the_pool_key_is_what_the_miner_keys() -> None:
    fields = {field.name for field in dataclasses.fields(PoolSettings)}
    assert {f"negatives.pool.{name}" for name in fields} <= set(IDENTITY)
    assert set(pool_keys()) == {"source", "backend", "depth", "tokenizer", "encoder"}


def test_a_key_without_a_row_counts_as_its_parent() -> None:
    assert counts("train.grad_cache.chunk_size") == IDENTITY["train"]
    assert counts("hydra.job.name") == IDENTITY["hydra"]
    assert not counts("logger.wandb.project").run
    assert shown_by("negatives.num_negatives") is None and shown_by("negatives.hard_proportion") == "hard_proportion"
    assert "negatives.pool.threads" in left_out("report") and "negatives.pool.threads" not in IGNORED_KEYS


@pytest.mark.skipif(not COMMITTED, reason="no committed run folders")
def test_every_committed_run_folder_keeps_its_identity() -> None:
    """Each committed job's resolved config.yaml canonicalises to the hash its run_folder.json recorded."""
    for record in COMMITTED:
        recorded = json.loads(record.read_text(encoding="utf-8"))
        resolved = yaml.safe_load((record.parent / "config.yaml").read_text(encoding="utf-8"))
        canonical = canonical_config(resolved)
        assert canonical == recorded["config"], record
        assert config_hash(canonical) == recorded["config_hash"], record
