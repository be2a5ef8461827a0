"""What ``train.py`` and ``evaluate.py`` do: check the config, read the data, run the stage schedule, evaluate."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from omegaconf import DictConfig

from mdr import training
from mdr.data.schema import RetrievalSplit
from mdr.lifecycle import entry_point as entry_point
from mdr.lifecycle import output_dir
from mdr.run_evaluation import evaluate_and_report
from mdr.run_folder import remove_weights
from mdr.stage_cache import run_schedule, train_cached_stages
from mdr.stages import evaluation_splits, trains_on_target
from mdr.utils.instantiate import build_reader
from mdr.validation import validate, validate_splits


def load_splits(cfg: DictConfig) -> tuple[RetrievalSplit | None, RetrievalSplit]:
    """(train split, or None when no stage trains on the configured language, test split) of that language."""
    reader = build_reader(cfg.data)
    train = reader.load(cfg.data.train_split) if trains_on_target(cfg) else None
    test = reader.load(cfg.data.test_split)
    return train, test


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run the stage schedule (``stage.stages``), save the final encoder, evaluate, write metrics.json, then
    remove the resume checkpoints and, with ``run.keep_encoder=false``, the encoder
    (:func:`mdr.run_folder.remove_weights`)."""
    out = output_dir(cfg)
    validate(cfg)  # config alone, before anything is read, built or trained
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    if cfg.get("run", {}).get("stages_only", False):  # a sweep's shared stages first, one job per stage
        return stages_only(cfg)
    train_split, test_split = load_splits(cfg)
    validate_splits(cfg, train_split, test_split)
    training.check_fast_dropout(cfg)  # before mining and training
    tests = evaluation_splits(cfg, test_split)  # evaluation.languages: read and checked before training
    # the stage schedule (mdr.stages): cached earlier stages, then the run's own stage in `out`
    trained = run_schedule(cfg, out, train_split)
    # after a DDP fit every rank encodes and searches its shards; rank 0 writes the files, the others get {}
    payload = evaluate_and_report(
        cfg, trained.encoder, trained.tokenizer, tests, out, trained.extra, distributed=trained.distributed
    )
    if payload:  # rank 0, metrics.json written: nothing resumes from the checkpoints any more
        remove_weights(cfg, out)
    return payload


def stages_only(cfg: DictConfig) -> dict[str, Any]:
    """``run.stages_only=true``: train the cached stages (:func:`mdr.stage_cache.train_cached_stages`), stop there.

    No ``metrics.json``: the folder stays unfinished, and the same command without the flag runs the cell,
    reusing the stages. Nothing is read for the run's own stage.
    """
    result = train_cached_stages(cfg)
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
    encoder, tokenizer = training.load_encoder(cfg, cfg.checkpoint)
    tests = evaluation_splits(cfg, test_split)  # evaluation.languages: several test splits
    return evaluate_and_report(cfg, encoder, tokenizer, tests, out, {"checkpoint": cfg.checkpoint})
