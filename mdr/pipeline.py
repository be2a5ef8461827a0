"""What ``train.py`` and ``evaluate.py`` do with a run's :class:`~mdr.spec.Spec`: read, train, evaluate."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

from mdr import training
from mdr.data.checks import test_split_problems
from mdr.data.schema import DataError, RetrievalSplit
from mdr.lifecycle import entry_point as entry_point
from mdr.lifecycle import output_dir
from mdr.run_evaluation import evaluate_and_report
from mdr.run_folder import remove_weights
from mdr.spec import Spec
from mdr.stage_cache import run_schedule, train_cached_stages
from mdr.utils.instantiate import build_reader
from mdr.validation import validate_splits


def load_splits(spec: Spec) -> tuple[RetrievalSplit | None, RetrievalSplit]:
    """(train split, or None when no stage trains on the run's language, test split) of that language."""
    reader = build_reader(spec.data.reader)
    trains = spec.schedule is not None and spec.schedule.trains_on_target
    return (reader.load(spec.data.train_split) if trains else None), reader.load(spec.data.test_split)


def evaluation_splits(spec: Spec, test: RetrievalSplit) -> RetrievalSplit | dict[str, RetrievalSplit]:
    """``test`` where the run evaluates its own language only, else language code -> test split (each checked)."""
    languages = spec.evaluation.languages
    if [item.language.code for item in languages] == [spec.language.code]:
        return test
    splits: dict[str, RetrievalSplit] = {}
    for item in languages:
        code, own = item.language.code, item.language.code == spec.language.code
        split = test if own else build_reader(item.data.reader).load(item.data.test_split)
        if not own and (problems := test_split_problems(split, item.data.test_split)):
            raise DataError(f"evaluation language {code}: {problems[0]}")
        splits[code] = split
    return splits


def train(spec: Spec) -> dict[str, Any]:
    """Run the stage schedule, evaluate the final encoder, write metrics.json, remove the weights not kept."""
    out = output_dir(spec)
    pl.seed_everything(spec.seed, workers=True, verbose=False)
    if spec.run.stages_only:  # a sweep's shared stages first, one job per stage
        return stages_only(spec)
    train_split, test_split = load_splits(spec)
    validate_splits(spec, train_split, test_split)
    training.check_fast_dropout(spec)  # before mining and training
    tests = evaluation_splits(spec, test_split)  # read and checked before training
    trained = run_schedule(spec, out, train_split)  # cached earlier stages, then the run's own stage in `out`
    payload = evaluate_and_report(
        spec, trained.encoder, trained.tokenizer, tests, out, trained.extra, distributed=trained.distributed
    )
    if payload:  # rank 0, metrics.json written: nothing resumes from the checkpoints any more
        remove_weights(out, spec.run)
    return payload


def stages_only(spec: Spec) -> dict[str, Any]:
    """``run.stages_only=true``: train the cached stages and stop (no ``metrics.json``)."""
    result = train_cached_stages(spec)
    stages = result["schedule"]["stages"]
    for record in stages:
        print(f"[mdr] run.stages_only: stage {record['name']} {record['status']} ({record['dir']})", flush=True)
    if not stages:
        print("[mdr] run.stages_only: no cached stage in this schedule; nothing to do", flush=True)
    return result


def evaluate(spec: Spec) -> dict[str, Any]:
    """Evaluate ``checkpoint`` (or the configured model as it is) on the run's language(s)."""
    out = output_dir(spec)
    _, test_split = load_splits(spec)
    validate_splits(spec, None, test_split)
    encoder, tokenizer = training.load_encoder(spec.model, spec.checkpoint)
    tests = evaluation_splits(spec, test_split)
    return evaluate_and_report(spec, encoder, tokenizer, tests, out, {"checkpoint": spec.checkpoint})
