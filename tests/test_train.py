"""End to end on CPU: train.py writes config, encoder, run file and metrics.json; evaluate.py agrees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytrec_eval
from omegaconf import OmegaConf

from mdr import training
from mdr.lifecycle import run_task
from mdr.pipeline import evaluate, train

from conftest import DATA_DIR, ROOT


def _pytrec_mrr(run_file: Path, qrels_file: Path) -> float:
    with qrels_file.open() as handle:
        qrels = pytrec_eval.parse_qrel(handle)
    with run_file.open() as handle:
        run = pytrec_eval.parse_run(handle)
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(run)
    return sum(per_query.get(q, {"recip_rank": 0.0})["recip_rank"] for q in qrels) / len(qrels)


def test_train_then_evaluate_writes_consistent_outputs(make_cfg, tmp_path: Path) -> None:  # noqa: ANN001
    cfg = make_cfg("negatives.hard_proportion=0.5")
    result = run_task(cfg, train)
    out = Path(cfg.paths.output_dir)
    for name in (
        "config.yaml",
        "metrics.json",
        "runs/th.trec",
        "per_query/th.tsv",
        "encoder/config.json",
        "encoder/mdr_encoder.json",
        "csv/metrics.csv",
    ):
        assert (out / name).is_file(), name
    assert not (out / "failed.json").exists()
    assert not (out / "checkpoints").exists(), "a finished run keeps encoder/, not its resume state"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == result
    assert metrics["language"] == "th" and metrics["hard_proportion"] == 0.5 and metrics["train"]["steps"] == 4
    assert metrics["num_queries"] == 635
    qrels_file = DATA_DIR / "xquad/xquad-para/th/qrels/test.txt"
    assert round(metrics["metrics"]["mrr@100"], 4) == round(_pytrec_mrr(out / "runs/th.trec", qrels_file), 4)
    resolved = OmegaConf.load(out / "config.yaml")
    assert resolved.negatives.hard_proportion == 0.5 and "${" not in (out / "config.yaml").read_text()

    eval_cfg = make_cfg(
        f"checkpoint={out / 'encoder'}", f"paths.output_dir={tmp_path / 'eval'}", config_name="evaluate"
    )
    again = run_task(eval_cfg, evaluate)
    assert again["metrics"] == pytest.approx(metrics["metrics"], abs=1e-4)


@pytest.mark.parametrize("override", ["run.keep_checkpoints=true", "train.save_encoder=false"])
def test_resume_checkpoints_stay_when_asked_or_when_they_hold_the_only_weights(make_cfg, override: str) -> None:  # noqa: ANN001
    cfg = make_cfg(override)
    result = run_task(cfg, train)
    out = Path(cfg.paths.output_dir)
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert (out / "encoder").is_dir() == (result["encoder"] is not None) == (override != "train.save_encoder=false")


def test_zero_shot_stage_trains_nothing(make_cfg) -> None:  # noqa: ANN001
    cfg = make_cfg("stage=zero_shot")
    result = run_task(cfg, train)
    out = Path(cfg.paths.output_dir)
    assert result["train"] is None and not (out / "checkpoints").exists()
    assert 0.0 <= result["metrics"]["mrr@100"] <= 1.0
    assert result["hard_proportion"] is None and result["num_negatives"] is None, "no negatives were drawn"


def test_failure_leaves_failed_json_and_no_metrics(make_cfg) -> None:  # noqa: ANN001
    cfg = make_cfg("negatives.hard_proportion=1.5")
    with pytest.raises(ValueError, match=r"negatives.hard_proportion must be in \[0, 1\], got 1.5"):
        run_task(cfg, train)
    out = Path(cfg.paths.output_dir)
    assert "hard_proportion" in json.loads((out / "failed.json").read_text())["error"]
    assert not (out / "metrics.json").exists()


def test_unknown_language_names_the_key(make_cfg) -> None:  # noqa: ANN001
    cfg = make_cfg("language=sw")
    with pytest.raises(Exception, match=r"language 'sw' has no data: .*xquad-para/sw does not exist"):
        run_task(cfg, train)


def test_cli_with_wandb_offline(tmp_path: Path, cache_dir: Path, tiny_model: Path) -> None:
    env = {**os.environ, "MDR_DATA_DIR": str(DATA_DIR), "MDR_CACHE_DIR": str(cache_dir), "WANDB_MODE": "offline"}
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "data=demo",
        "language=hi",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "train.batch_size=4",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={tmp_path / 'cli'}",
    ]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[mdr] hi tiny target_only" in done.stdout and "MRR@100=" in done.stdout
    out = tmp_path / "cli"
    assert (out / "metrics.json").is_file() and (out / ".hydra" / "overrides.yaml").is_file()
    assert list((out / "wandb").glob("offline-run-*")), "W&B offline run folder missing"


def test_fast_dropout_run_saves_an_encoder_that_loads_and_scores_without_mdr(make_cfg, tmp_path: Path) -> None:  # noqa: ANN001
    cfg = make_cfg("train.fast_dropout=true")
    result = run_task(cfg, train)
    out = Path(cfg.paths.output_dir)
    assert result["train"]["steps"] == 4
    saved = json.loads((out / "encoder" / "config.json").read_text())
    assert "mdr" not in json.dumps(saved)  # the custom attention stays in the training process
    eval_cfg = make_cfg(
        f"checkpoint={out / 'encoder'}", f"paths.output_dir={tmp_path / 'eval'}", config_name="evaluate"
    )
    again = run_task(eval_cfg, evaluate)  # a fresh load: plain SDPA attention, torch's dropout modules
    assert again["metrics"] == pytest.approx(result["metrics"], abs=1e-4)


def test_fast_dropout_auto_is_on_for_cpu_training_and_keep_encoder_false_keeps_only_results(
    make_cfg,  # noqa: ANN001
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    retained: list[int] = []
    monkeypatch.setattr(training, "retain_freed_memory", lambda limit_mb: retained.append(limit_mb) or True)
    cfg = make_cfg("run.keep_encoder=false")  # train.fast_dropout=auto by default
    result = run_task(cfg, train)
    assert retained == [1024], "CPU training keeps freed memory for reuse (train.cpu_malloc_retain_mb)"
    out = Path(cfg.paths.output_dir)
    assert result["train"]["fast_dropout"] is True, "auto: CPU training of an SDPA model draws fast masks"
    for name in ("metrics.json", "config.yaml", "runs/th.trec", "per_query/th.tsv"):
        assert (out / name).is_file(), name
    assert not (out / "encoder").exists() and not (out / "checkpoints").exists()
    again = run_task(cfg, train)  # a finished run without weights is still complete: nothing retrained
    assert again == result
    (out / "encoder").mkdir()  # as a kill between metrics.json and the tidying leaves it
    (out / "encoder" / "model.safetensors").write_bytes(b"0" * 100)
    assert run_task(cfg, train) == result and not (out / "encoder").exists(), "the rerun tidies it"
    off = make_cfg("train.fast_dropout=false", f"paths.output_dir={tmp_path / 'torch'}")
    assert run_task(off, train)["train"]["fast_dropout"] is False
    assert (tmp_path / "torch" / "encoder" / "config.json").is_file()  # run.keep_encoder=true by default


def test_fast_dropout_auto_falls_back_to_torch_dropout_without_sdpa() -> None:
    from types import SimpleNamespace

    from mdr.training import fast_dropout_on

    def cfg(setting: object, accelerator: str) -> object:  # a spec's train and trainer
        return SimpleNamespace(
            train=SimpleNamespace(fast_dropout=setting), trainer=SimpleNamespace(accelerator=accelerator)
        )

    sdpa = SimpleNamespace(fast_dropout_supported=lambda: True)
    eager = SimpleNamespace(fast_dropout_supported=lambda: False)
    assert fast_dropout_on(cfg("auto", "cpu"), sdpa) is True
    assert fast_dropout_on(cfg("auto", "cpu"), eager) is False  # no refusal: auto only applies where it can
    assert fast_dropout_on(cfg("auto", "gpu"), sdpa) is False  # torch's CUDA dropout is fast
    assert fast_dropout_on(cfg(True, "gpu"), sdpa) is True and fast_dropout_on(cfg(False, "cpu"), sdpa) is False


def test_run_names_spell_p_once_and_show_none_where_nothing_trains(make_cfg) -> None:  # noqa: ANN001
    from mdr.tracking import run_name
    from mdr.validation import build_spec

    def name(*overrides: str) -> str:
        return run_name(build_spec(make_cfg(*overrides)))

    assert name("negatives.hard_proportion=0.0") == name("negatives.hard_proportion=0")
    assert name("negatives.hard_proportion=0.50") == "th-tiny-target_only-p0.5-s0"
    assert name("stage=zero_shot") == "th-tiny-zero_shot-p--s0"  # no negatives were drawn
