"""Stage schedules: two-stage runs share one source-stage checkpoint; zero-shot and source-only train no target."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mdr.models.bi_encoder import BiEncoder, EncoderSettings
from mdr.pipeline import run_task, train
from mdr.stages import stage_dir

STAGE = ["stage=two_stage", "stage.source.max_epochs=1"]


def test_two_stage_trains_the_source_once_and_starts_targets_from_it(make_cfg, tmp_path: Path) -> None:  # noqa: ANN001
    first = make_cfg(*STAGE, "language=th", "negatives.hard_proportion=0", f"paths.output_dir={tmp_path / 'a'}")
    second = make_cfg(*STAGE, "language=hi", "negatives.hard_proportion=1", f"paths.output_dir={tmp_path / 'b'}")
    other_seed = make_cfg(*STAGE, "language=th", "seed=1", f"paths.output_dir={tmp_path / 'c'}")
    assert stage_dir(first) == stage_dir(second), "target language and proportion must not change the stage key"
    assert stage_dir(first) != stage_dir(other_seed)

    result_a = run_task(first, train)
    encoder_dir = stage_dir(first) / "encoder"
    stamp = (encoder_dir / "model.safetensors").stat().st_mtime_ns
    result_b = run_task(second, train)
    assert result_a["initialised_from"] == result_b["initialised_from"] == str(encoder_dir)
    assert (encoder_dir / "model.safetensors").stat().st_mtime_ns == stamp, "source stage was retrained"
    stage = json.loads((stage_dir(first) / "stage.json").read_text())
    assert stage["source"]["language"]["code"] == "en"
    # the source stage did train: its weights differ from the starting model's
    start = BiEncoder.from_pretrained(first.model.name_or_path, EncoderSettings())
    trained = BiEncoder.from_pretrained(encoder_dir, EncoderSettings())
    assert not torch.allclose(
        start.query_backbone.embeddings.word_embeddings.weight, trained.query_backbone.embeddings.word_embeddings.weight
    )
    assert result_b["stage"] == "two_stage" and result_b["train"]["steps"] == 4


def test_source_only_is_zero_shot_transfer(make_cfg) -> None:  # noqa: ANN001
    cfg = make_cfg("stage=source_only", "stage.source.max_epochs=1")
    result = run_task(cfg, train)
    assert result["train"] is None and result["initialised_from"] == str(stage_dir(cfg) / "encoder")
