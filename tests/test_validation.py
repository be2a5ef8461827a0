"""mdr.validation: every config value is checked before any data is read, each problem naming its key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir

import mdr.pipeline
from mdr.data.schema import DataError
from mdr.lifecycle import run_task
from mdr.validation import config_problems

CONF = Path(__file__).resolve().parents[1] / "conf"


def _compose(*overrides: str, config_name: str = "train") -> Any:
    """conf/<config_name>.yaml composed with ``overrides`` (no data or model is touched)."""
    base = ["paths.output_dir=/tmp/unused", "logger.wandb.enabled=false"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config_name, overrides=[*base, *overrides])


@pytest.mark.parametrize("config_name", ["train", "evaluate"])
def test_the_composed_defaults_pass(config_name: str) -> None:
    assert config_problems(_compose(config_name=config_name)) == []


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("evaluation.bf16=maybe", "evaluation.bf16"),
        ("evaluation.shard_size=-1", "evaluation.shard_size"),
        ("evaluation.fp16_index=banana", "evaluation.fp16_index"),
        ("evaluation.keep_embeddings=2", "evaluation.keep_embeddings"),
        ("train.num_workers=-1", "train.num_workers"),
        ("train.chunk_tokens=0", "train.chunk_tokens"),
        ("train.checkpoint_every_n_steps=0", "train.checkpoint_every_n_steps"),
        ("train.gradient_clip_val=-1", "train.gradient_clip_val"),
        ("train.save_encoder=yes", "train.save_encoder"),
        ("train.gradient_checkpointing=1", "train.gradient_checkpointing"),
        ("train.grad_cache.enabled=on", "train.grad_cache.enabled"),
        ("train.grad_cache.chunk_size=0", "train.grad_cache.chunk_size"),
        ("loss.mask_false_negatives=sometimes", "loss.mask_false_negatives"),
        ("logger.wandb.enabled=maybe", "logger.wandb.enabled"),
        ("logger.wandb.mode=loud", "logger.wandb.mode"),
        ("run.stages_only=2", "run.stages_only"),
        ("negatives.pool.threads=0", "negatives.pool.threads"),
        ("negatives.denoise.relative_margin=0.9", "negatives.denoise.relative_margin"),
        ("negatives.denoise.batch_size=0", "negatives.denoise.batch_size"),
        ("+negatives.denoise.margin=1", "negatives.denoise"),
        ("trainer.deterministic=sometimes", "trainer.deterministic"),
        ("trainer.precision=99", "trainer.precision"),
        ("trainer.precision=bf16_mixed", "trainer.precision"),
        ("stage=two_stage stage.stages.0.epochs=0", "stage.stages[0].epochs"),
        ("evaluation.languages=[th,xx]", "evaluation.languages[1]"),
    ],
)
def test_a_bad_value_is_refused_naming_its_key(override: str, key: str) -> None:
    problems = config_problems(_compose(*override.split()))
    assert len(problems) == 1 and key in problems[0], problems


@pytest.mark.parametrize("precision", ["auto", "16", "32", "bf16-mixed", "32-true"])
def test_lightning_precisions_pass(precision: str) -> None:
    assert config_problems(_compose(f"trainer.precision={precision}")) == []


@pytest.mark.parametrize("key", ["on_config_change", "on_complete", "stages_only", "keep_checkpoints", "keep_encoder"])
def test_a_null_run_policy_is_refused_not_taken_as_its_default(key: str) -> None:
    """`run.keep_checkpoints=null` is no choice: refused naming the key, as a missing policy key is not."""
    problems = config_problems(_compose(f"run.{key}=null"))
    assert len(problems) == 1 and f"run.{key}" in problems[0], problems


@pytest.mark.parametrize("override", ["evaluation.bf16=maybe", "evaluation.shard_size=-1", "evaluation.fp16_index=x"])
def test_evaluation_values_are_refused_before_any_data_is_read(
    override: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: these were found only at evaluation, after training (or never, for fp16_index)."""

    def read(*_: Any) -> Any:
        raise AssertionError("data read before the config was checked")

    monkeypatch.setattr(mdr.pipeline, "load_splits", read)
    cfg = _compose(override, f"paths.output_dir={tmp_path}")
    with pytest.raises(DataError, match=override.split("=")[0].replace(".", r"\.")):
        run_task(cfg, mdr.pipeline.train)
