"""A sweep's runs are counted once and only when sound (issue 19 items 2-3), several sweep folders form one
report, the miner is a variant, exported sweeps aggregate and resume like the originals, and the report reaches
W&B and the console (issue 18 items 2-3). Job folders are built by hand, with the real run-folder record."""

from __future__ import annotations

import copy
import gzip
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf

from mdr import run_folder
from mdr.reporting.aggregate import aggregate, main, summary_settings
from mdr.reporting.collect import collect, run_miner
from mdr.reporting.export import export
from mdr.spec import RunPolicy
from mdr.utils.config_identity import canonical_config
from mdr.utils.run_record import RunRecord

QUERIES = 60
POOL = {"source": "bm25", "backend": "bm25s", "depth": 100, "range_min": 0, "range_max": 50, "margin": None}


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and key in merged else value
    return merged


def make_job(
    sweep: Path,
    name: str,
    *,
    p: float,
    seed: int,
    scores: np.ndarray,
    overrides: list[str] | None = None,
    depth: int | None = None,
    config: dict[str, Any] | None = None,
    query_ids: list[str] | None = None,
    language: str = "th",
    low_resource: bool | None = True,
    split: str | None = None,
) -> Path:
    """A completed job folder as train.py leaves it (record by :func:`mdr.run_folder.claim`); ``low_resource``
    None: metrics.json does not record it (runs before it did), ``split``: the evaluated split it records."""
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    overrides = overrides if overrides is not None else [f"negatives.hard_proportion={p}", f"seed={seed}"]
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    resolved = {
        "seed": seed,
        "model": {"name": "tiny"},
        "stage": {"name": "target_only"},
        "data": {"name": "xquad"},
        "language": {"code": language},
        "negatives": {"num_negatives": 4, "hard_proportion": p, "pool": dict(POOL)},
        "loss": {"mask_false_negatives": True},
        "evaluation": {"depth": depth or 100, **({"split": split} if split else {})},
    }
    resolved = _merge(resolved, config or {})
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(resolved))
    run_folder.claim(job, canonical_config(resolved), RunPolicy())
    (job / "config.yaml").write_text(yaml.safe_dump(resolved))
    ids = query_ids or [f"q{i:03d}" for i in range(len(scores))]
    cut = min(depth or 100, 100)  # a run at depth 10 names its measures mrr@10, recall@10
    header = f"query_id\tmrr@{cut}\tndcg@10\trecall@{cut}"
    lines = [header] + [f"{q}\t{v:.6f}\t0\t0" for q, v in zip(ids, scores)]
    (job / "per_query").mkdir()
    (job / "per_query" / f"{language}.tsv").write_text("\n".join(lines) + "\n")
    metrics = {
        "language": language,
        "low_resource": low_resource,
        "data": "xquad",
        "model": "tiny",
        "stage": "target_only",
        "hard_proportion": p,
        "seed": seed,
        "num_queries": len(scores),
        "metrics": {f"mrr@{cut}": float(np.mean(scores)), f"recall@{cut}": 0.0, "ndcg@10": 0.0},
        "per_query_file": f"per_query/{language}.tsv",
        "run_file": f"runs/{language}.trec",
        "train": {"num_hard": round(p * 4), "mask_false_negatives": True},
        "denoised": False,
    }
    if depth is not None:
        metrics["depth"] = depth
    if low_resource is None:
        del metrics["low_resource"]
    if split is not None:
        metrics["split"] = split
    (job / "metrics.json").write_text(json.dumps(metrics))
    return job


def _scores(rng: np.random.Generator, shift: float = 0.0, queries: int = QUERIES) -> np.ndarray:
    return np.clip(rng.uniform(0.2, 0.8, queries) + shift, 0, 1)


def _grid(sweep: Path, rng: np.random.Generator, seeds: tuple[int, ...] = (0, 1), **kwargs: Any) -> None:
    for p in (0, 1):
        for seed in seeds:
            make_job(sweep, f"negatives.hard_proportion={p},seed={seed}", p=p, seed=seed, scores=_scores(rng), **kwargs)


def _job_scores(job: Path, language: str = "th") -> np.ndarray:
    """The per-query MRR@100 of a job folder made by :func:`make_job`."""
    return pd.read_csv(job / "per_query" / f"{language}.tsv", sep="\t")["mrr@100"].to_numpy()


def _cell(cells: pd.DataFrame, p: float) -> pd.Series:
    return cells[np.isclose(cells.hard_proportion, p)].iloc[0]


def test_one_config_in_two_folders_is_counted_once(tmp_path: Path) -> None:
    """The issue's probe: p=0 and p=0.0 made two folders of one config; results.md showed n=3 for 2 seeds."""
    rng = np.random.default_rng(0)
    _grid(tmp_path, rng)
    same = _job_scores(tmp_path / "negatives.hard_proportion=0,seed=0")  # one config gives the same numbers
    again = make_job(tmp_path, "negatives.hard_proportion=0.0,seed=0", p=0.0, seed=0, scores=same)
    first = json.loads((tmp_path / "negatives.hard_proportion=0,seed=0" / "run_folder.json").read_text())
    assert json.loads((again / "run_folder.json").read_text())["config_hash"] == first["config_hash"]
    summary = aggregate(tmp_path)
    assert (summary["completed"], summary["duplicates"]) == (4, 1)
    cells = pd.read_csv(tmp_path / "cells.csv")
    assert _cell(cells, 0).n == 2
    results = pd.read_csv(tmp_path / "results.csv")
    assert sorted(results[results.hard_proportion == 0].seed) == [0, 1]
    duplicates = pd.read_csv(tmp_path / "duplicates.csv")
    assert list(duplicates.job) == ["negatives.hard_proportion=0.0,seed=0"]
    assert (
        "same config" in duplicates.error.iloc[0] and "negatives.hard_proportion=0,seed=0" in duplicates.error.iloc[0]
    )
    report = (tmp_path / "results.md").read_text()
    assert "### Duplicates (counted once)" in report and "1 duplicate(s) (counted once)" in report
    assert main([str(tmp_path)]) == 0  # a duplicate is reported, not an error


@pytest.mark.parametrize(
    ("key", "first", "second", "label"),
    [
        ("negatives.num_negatives", 4, 8, "k"),
        ("train.learning_rate", 0.001, 0.0001, "lr"),
        ("trainer.max_epochs", 3, 4, "epochs"),
        ("train.batch_size", 16, 32, "batch_size"),
    ],
)
def test_a_sweep_over_a_key_the_cell_does_not_show_gets_one_cell_per_value(
    tmp_path: Path, key: str, first: float, second: float, label: str
) -> None:
    """Two sweeps of one cell that differ in k, the learning rate, epochs or batch size are one table with a cell
    per value (the variant names the key). Before, the second value's runs were set aside as invalid."""
    rng = np.random.default_rng(1)
    section, leaf = key.split(".")
    _grid(tmp_path / "a", rng, config={section: {leaf: first}})
    _grid(tmp_path / "b", rng, config={section: {leaf: second}})
    summary = aggregate([tmp_path / "a", tmp_path / "b"], out=tmp_path / "out")
    assert (summary["completed"], summary["invalid"], summary["duplicates"]) == (8, 0, 0)
    cells = pd.read_csv(tmp_path / "out" / "cells.csv")
    variants = {f"mask=on,denoise=off,{label}={value:g}" for value in (first, second)}
    assert set(cells.variant) == variants and len(cells) == 4 and set(cells.n) == {2}
    results = pd.read_csv(tmp_path / "out" / "results.csv")
    by_folder = results.groupby(results.job.str.split("/").str[0]).variant.unique()
    assert list(by_folder["a"]) == [f"mask=on,denoise=off,{label}={first:g}"]
    assert main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "out")]) == 0


def test_one_sweep_over_k_gets_one_cell_per_value(tmp_path: Path) -> None:
    """k swept inside one sweep folder (negatives.num_negatives=2,4 with p=0,1 and two seeds)."""
    rng = np.random.default_rng(2)
    for k in (2, 4):
        for p in (0, 1):
            for seed in (0, 1):
                overrides = [f"negatives.hard_proportion={p}", f"negatives.num_negatives={k}", f"seed={seed}"]
                config = {"negatives": {"num_negatives": k}}
                make_job(
                    tmp_path,
                    ",".join(overrides),
                    p=p,
                    seed=seed,
                    scores=_scores(rng),
                    overrides=overrides,
                    config=config,
                )
    summary = aggregate(tmp_path)
    assert (summary["completed"], summary["invalid"], summary["duplicates"]) == (8, 0, 0)
    cells = pd.read_csv(tmp_path / "cells.csv")
    assert sorted(zip(cells.variant, cells.hard_proportion, cells.n)) == [
        ("mask=on,denoise=off,k=2", 0.0, 2),
        ("mask=on,denoise=off,k=2", 1.0, 2),
        ("mask=on,denoise=off,k=4", 0.0, 2),
        ("mask=on,denoise=off,k=4", 1.0, 2),
    ]


def test_same_cell_and_seed_spelled_otherwise_or_elsewhere_is_still_a_duplicate(tmp_path: Path) -> None:
    """Only keys that change results count: another data folder (and the paths under it), task name, policy keys
    (run.*, logger.*, kept embeddings, BM25 threads), 4 vs 4.0, a key at its neutral default, or a folder without
    run_folder.json."""
    here = {
        "paths": {"data_dir": "/data"},
        "data": {"reader": {"root": "/data/xquad/th"}},
        "trainer": {"max_epochs": 4},
    }
    _grid(tmp_path / "a", np.random.default_rng(11), config={**here, "task_name": "train"})
    there = {
        "paths": {"data_dir": "/mnt/copy/data/"},
        "data": {"reader": {"root": "/mnt/copy/data/xquad/th"}},
        "trainer": {"max_epochs": 4.0, "num_nodes": 1},
        "task_name": "hardneg_sweep",
        "train": {"fast_dropout": False},
        "run": {"on_complete": "fresh"},
        "logger": {"wandb": {"enabled": False}},
        "evaluation": {"keep_embeddings": True},
        "negatives": {"pool": {"threads": 2}},
    }
    _grid(tmp_path / "b", np.random.default_rng(11), config=there)  # the same numbers
    (tmp_path / "b" / "negatives.hard_proportion=1,seed=1" / "run_folder.json").unlink()  # older folder: config.yaml
    summary = aggregate([tmp_path / "a", tmp_path / "b"], out=tmp_path / "out")
    assert (summary["completed"], summary["invalid"], summary["duplicates"]) == (4, 0, 4)
    errors = pd.read_csv(tmp_path / "out" / "duplicates.csv").error
    assert errors.str.contains("differs in no key that changes results").all()


def test_zero_shot_and_unmined_runs_ignore_the_keys_they_never_used(tmp_path: Path) -> None:
    """A run that trained nothing ignores p and the training keys; p = 0 mines nothing, so the miner does not
    matter: same cell and seed, counted once."""
    rng = np.random.default_rng(12)
    _grid(tmp_path / "a", rng)
    miner = {"negatives": {"pool": {"range_min": 10, "range_max": 60}}}
    same = _job_scores(tmp_path / "a" / "negatives.hard_proportion=0,seed=0")
    make_job(tmp_path / "b", "negatives.hard_proportion=0,seed=0", p=0, seed=0, scores=same, config=miner)
    zero_shot = _scores(rng)
    for sweep, p in (("a", 0.5), ("b", 1.0)):
        job = make_job(tmp_path / sweep, f"stage=zero_shot,p={p}", p=p, seed=0, scores=zero_shot)
        metrics = json.loads((job / "metrics.json").read_text())
        metrics.update(stage="zero_shot", hard_proportion=None, num_negatives=None)
        del metrics["train"]
        (job / "metrics.json").write_text(json.dumps(metrics))
        config = _merge(yaml.safe_load((job / "config.yaml").read_text()), {"stage": {"name": "zero_shot"}})
        (job / "config.yaml").write_text(yaml.safe_dump(config))
        (job / "run_folder.json").unlink()
    summary = aggregate([tmp_path / "a", tmp_path / "b"], out=tmp_path / "out")
    assert (summary["completed"], summary["invalid"], summary["duplicates"]) == (5, 0, 2)


def test_runs_evaluated_on_another_split_are_kept_apart(tmp_path: Path) -> None:
    """A dev-split sweep beside the test-split one: its runs were counted as duplicates of the test runs (the cell
    had no split), so the dev results were left out (or, seed by seed, pooled with the test ones)."""
    rng = np.random.default_rng(13)
    _grid(tmp_path / "test", rng, split="test")
    dev_ids = [f"d{i:03d}" for i in range(QUERIES)]
    _grid(tmp_path / "dev", rng, split="dev", query_ids=dev_ids)
    summary = aggregate([tmp_path / "test", tmp_path / "dev"], out=tmp_path / "out")
    assert (summary["completed"], summary["invalid"], summary["duplicates"]) == (8, 0, 0)
    cells = pd.read_csv(tmp_path / "out" / "cells.csv")
    assert sorted(zip(cells.split, cells.hard_proportion, cells.n)) == [
        ("dev", 0, 2),
        ("dev", 1, 2),
        ("test", 0, 2),
        ("test", 1, 2),
    ]
    report = (tmp_path / "out" / "results.md").read_text()
    assert "## data=xquad, split=dev, evaluation depth=100" in report
    assert "## data=xquad, split=test, evaluation depth=100" in report


def test_a_language_without_low_resource_in_metrics_is_not_counted_as_high_resource(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """metrics.json before low_resource was recorded: the language's config says (the job's config.yaml, else
    conf/language/<code>.yaml); a language none describes is left out of the contrast, by name. Before, each such
    language counted as high-resource (here: no low-resource language, no contrast)."""
    rng = np.random.default_rng(14)
    _grid(tmp_path / "th", rng, language="th", low_resource=None)  # conf/language/th.yaml: low
    _grid(tmp_path / "de", rng, language="de", low_resource=None)  # conf/language/de.yaml: high
    own = {"language": {"low_resource": True}}
    _grid(tmp_path / "xx", rng, language="xx", low_resource=None, config=own)  # its config.yaml: low
    _grid(tmp_path / "yy", rng, language="yy", low_resource=None)  # described nowhere
    with caplog.at_level("WARNING", logger="mdr.reporting.analysis"):
        summary = aggregate([tmp_path / code for code in ("th", "de", "xx", "yy")], out=tmp_path / "out")
    assert (summary["completed"], summary["invalid"]) == (16, 0)
    contrasts = pd.read_csv(tmp_path / "out" / "resource_contrasts.csv")
    assert (contrasts.low_resource.tolist(), contrasts.high_resource.tolist()) == (["th xx"], ["de"])
    assert "no low_resource recorded for yy" in caplog.text
    cells = pd.read_csv(tmp_path / "out" / "cells.csv")
    resource = cells.drop_duplicates("language").set_index("language").low_resource
    assert (resource.th, resource.xx, resource.de) == (True, True, False) and pd.isna(resource.yy)


def test_metrics_of_another_cell_is_reported_not_counted(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    _grid(tmp_path, rng)
    stray = make_job(tmp_path, "negatives.hard_proportion=1,seed=2", p=1, seed=2, scores=_scores(rng))
    shutil.copy(tmp_path / "negatives.hard_proportion=0,seed=0" / "metrics.json", stray / "metrics.json")
    summary = aggregate(tmp_path)
    assert (summary["completed"], summary["invalid"], summary["duplicates"]) == (4, 1, 0)
    report = (tmp_path / "results.md").read_text()
    assert "### Invalid runs (not counted)" in report
    assert "override negatives.hard_proportion=1 but metrics.json hard_proportion=0" in report
    assert "override seed=2 but metrics.json seed=0" in report
    assert _cell(pd.read_csv(tmp_path / "cells.csv"), 0).n == 2
    assert main([str(tmp_path)]) == 1


@pytest.mark.parametrize("damage", ["cut", "repeated", "other queries"])
def test_bad_per_query_file_is_an_error_naming_it_and_the_rest_is_reported(tmp_path: Path, damage: str) -> None:
    """Cut to fewer rows, repeated rows (pandas' 'duplicate labels' crash) or other query ids of the same count."""
    rng = np.random.default_rng(3)
    _grid(tmp_path, rng, seeds=(0, 1, 2))
    bad = tmp_path / "negatives.hard_proportion=1,seed=1" / "per_query" / "th.tsv"
    lines = bad.read_text().splitlines()
    if damage == "cut":
        lines = lines[:50]
    elif damage == "repeated":
        lines = lines[:-3] + lines[1:4]
    else:
        lines = [lines[0]] + [line.replace("q0", "x0", 1) for line in lines[1:]]
    bad.write_text("\n".join(lines) + "\n")
    summary = aggregate(tmp_path)
    assert (summary["completed"], summary["invalid"]) == (5, 1)
    report = (tmp_path / "results.md").read_text()
    assert f"{bad}: " in report and "not counted" in report
    tests = pd.read_csv(tmp_path / "significance.csv")
    assert tests["delta_mrr@100"].notna().all() and tests.seeds.tolist() == [2]
    assert _cell(pd.read_csv(tmp_path / "cells.csv"), 1).n == 2


def test_per_query_file_edited_away_from_its_metrics_is_invalid(tmp_path: Path) -> None:
    """The issue's probe: every MRR of one p = 1 file set to 1.0, row count kept, was counted (its deltas said hard
    negatives help while cells.csv, from metrics.json, showed p = 1 below p = 0)."""
    rng = np.random.default_rng(14)
    _grid(tmp_path, rng, seeds=(0, 1, 2))
    edited = tmp_path / "negatives.hard_proportion=1,seed=1" / "per_query" / "th.tsv"
    table = pd.read_csv(edited, sep="\t", dtype={"query_id": str})
    reported = json.loads((edited.parents[1] / "metrics.json").read_text())["metrics"]["mrr@100"]
    table["mrr@100"] = 1.0
    table.to_csv(edited, sep="\t", index=False)
    summary = aggregate(tmp_path)
    assert (summary["completed"], summary["invalid"]) == (5, 1)
    report = (tmp_path / "results.md").read_text()
    assert f"{edited}: its means disagree with {edited.parents[1] / 'metrics.json'}" in report
    assert f"mrr@100: file mean 1.0000000, metrics.json {reported!r}" in report
    assert pd.read_csv(tmp_path / "significance.csv").seeds.tolist() == [2]
    assert _cell(pd.read_csv(tmp_path / "cells.csv"), 1).n == 2
    assert main([str(tmp_path)]) == 1


def test_copies_of_one_config_with_other_numbers_are_a_conflict_none_counted(tmp_path: Path) -> None:
    """The issue's probe: a copy of a job folder (same config hash) with MRR .9 was counted once, the first by name
    winning (it became the cell mean, outside its own interval). Now neither copy is counted and both are named;
    an exact copy still counts once."""
    rng = np.random.default_rng(15)
    _grid(tmp_path / "a", rng)
    name = "negatives.hard_proportion=1,seed=0"
    make_job(tmp_path / "b", name, p=1, seed=0, scores=np.full(QUERIES, 0.9))  # consistent with its own metrics
    shutil.copytree(tmp_path / "a" / "negatives.hard_proportion=0,seed=1", tmp_path / "b" / "exact copy")
    summary = aggregate([tmp_path / "a", tmp_path / "b"], out=tmp_path / "out")
    assert (summary["completed"], summary["conflicts"], summary["duplicates"], summary["invalid"]) == (3, 2, 1, 0)
    report = (tmp_path / "out" / "results.md").read_text()
    assert "2 run(s) in conflict (not counted)" in report
    conflicts = report.split("### Conflicts: folders of one config with different numbers (none counted)")[1]
    conflicts = conflicts.split("###")[0]
    assert f"| a/{name} " in conflicts and f"| b/{name} " in conflicts
    first = json.loads((tmp_path / "a" / name / "metrics.json").read_text())["metrics"]["mrr@100"]
    assert f"a/{name} (mrr@100 {first:.7f})" in conflicts
    assert f"b/{name} (mrr@100 0.9000000)" in conflicts and "none counted" in conflicts
    results = pd.read_csv(tmp_path / "out" / "results.csv")
    assert name not in set(results.job.str.split("/").str[1])
    assert _cell(pd.read_csv(tmp_path / "out" / "cells.csv"), 1).n == 1
    assert list(pd.read_csv(tmp_path / "out" / "duplicates.csv").job) == ["b/exact copy"]
    assert main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "out")]) == 1


def test_committed_sweeps_count_every_run() -> None:
    """Every committed job's per-query file agrees with its metrics.json, and no run is a conflict or duplicate."""
    results_dir = Path(__file__).resolve().parents[1] / "docs" / "results"
    sweeps = [[results_dir / "me5_grid" / block for block in ("dose", "parallel", "zero_shot", "miner")]]
    sweeps += [[results_dir / "tiny_hardneg"], [results_dir / "tiny_schedules"]]
    for folders in sweeps:
        results, problems = collect(folders)
        assert not results.empty
        left_out = problems[problems.status.isin(["invalid", "conflict", "duplicate"])]
        assert left_out.empty, left_out.to_string()


def test_evaluation_depth_is_kept_apart(tmp_path: Path) -> None:
    """Runs at depth 10 (MRR@10) are reported apart, never pooled with or analysed as MRR@100."""
    rng = np.random.default_rng(4)
    _grid(tmp_path, rng)
    for p in (0, 1):
        for seed in (0, 1):
            overrides = [f"negatives.hard_proportion={p}", f"seed={seed}", "evaluation.depth=10"]
            name = f"evaluation.depth=10,negatives.hard_proportion={p},seed={seed}"
            make_job(tmp_path, name, p=p, seed=seed, scores=_scores(rng, -0.2), overrides=overrides, depth=10)
    summary = aggregate(tmp_path)
    assert (summary["completed"], summary["duplicates"], summary["invalid"]) == (8, 0, 0)
    cells = pd.read_csv(tmp_path / "cells.csv")
    assert sorted(zip(cells.depth, cells.hard_proportion, cells.n)) == [(100, 0, 2), (100, 1, 2)]
    assert pd.read_csv(tmp_path / "significance.csv").depth.tolist() == [100]
    shallow = pd.read_csv(tmp_path / "cells_depth10.csv")
    results = pd.read_csv(tmp_path / "results.csv")
    at_10 = results[(results.depth == 10) & (results.hard_proportion == 1)]
    assert shallow[shallow.hard_proportion == 1]["mean_mrr@10"].iloc[0] == pytest.approx(at_10["mrr@10"].mean())
    assert shallow.n.tolist() == [2, 2] and at_10["mrr@100"].isna().all()
    report = (tmp_path / "results.md").read_text()
    assert "## data=xquad, evaluation depth=10" in report and "## data=xquad, evaluation depth=100" in report
    assert "Evaluated at depth 10: MRR@10, Recall@10, nDCG@10" in report
    # a run at depth 10 whose metrics.json does not say so (written before depth was recorded) is not counted
    overrides = ["seed=7", "evaluation.depth=10"]
    make_job(tmp_path, "evaluation.depth=10,seed=7", p=0, seed=7, scores=_scores(rng), overrides=overrides)
    summary = aggregate(tmp_path)
    assert summary["invalid"] == 1
    assert "override evaluation.depth=10 but metrics.json depth=100" in (tmp_path / "results.md").read_text()


def test_several_sweep_folders_form_one_report(tmp_path: Path) -> None:
    """Blocks of a grid in their own folders; a cell run in two of them counts once."""
    rng = np.random.default_rng(5)
    first, second, out = tmp_path / "dose", tmp_path / "miner", tmp_path / "report"
    _grid(first, rng)
    miner = {"negatives": {"pool": {"range_min": 10, "range_max": 60}}}
    for seed in (0, 1):
        name = f"negatives.hard_proportion=1,negatives.pool.range_min=10,seed={seed}"
        make_job(second, name, p=1, seed=seed, scores=_scores(rng, 0.1), config=miner)
    same = _job_scores(first / "negatives.hard_proportion=0,seed=0")
    make_job(second, "negatives.hard_proportion=0,seed=0", p=0, seed=0, scores=same)  # also in `first`
    assert main([str(first), str(second), "--out", str(out)]) == 0
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 6 and set(results.job.str.split("/").str[0]) == {"dose", "miner"}
    duplicates = pd.read_csv(out / "duplicates.csv")
    assert list(duplicates.job) == ["miner/negatives.hard_proportion=0,seed=0"]
    effects = pd.read_csv(out / "variant_effects.csv")
    assert list(effects.variant) == ["mask=on,denoise=off,miner=bm25:11-60"]
    assert effects.hard_proportion.tolist() == [1.0] and effects["delta_mrr@100"].iloc[0] > 0.05
    trends = pd.read_csv(out / "trends.csv")
    miner_trend = trends[trends.variant.str.contains("miner")]
    assert miner_trend.baseline_variant.tolist() == ["mask=on,denoise=off"]  # p = 0 uses no miner
    assert not (first / "results.md").exists()
    with pytest.raises(SystemExit):
        main([str(first), str(second)])  # several folders need --out


def test_miner_label() -> None:
    used = RunRecord.from_json({"train": {"num_hard": 4}, "hard_proportion": 1.0})
    config = {"negatives": {"pool": dict(POOL)}}
    assert run_miner(used, config) is None
    assert run_miner(used, _merge(config, {"negatives": {"pool": {"range_min": 10, "range_max": 60}}})) == "bm25:11-60"
    dense = {"negatives": {"pool": {"source": "dense", "range_min": 3, "encoder": "/cache/models/me5_small"}}}
    assert run_miner(used, _merge(config, dense)) == "dense(me5_small):4-50"
    pyserini = {"negatives": {"pool": {"backend": "pyserini", "margin": 0.1}}}
    assert run_miner(used, _merge(config, pyserini)) == "bm25/pyserini:1-50,margin=0.1"
    unused = RunRecord.from_json({"train": {"num_hard": 0}, "hard_proportion": 0.0})
    assert run_miner(unused, _merge(config, dense)) is None  # p = 0 mines nothing: the default cell
    assert run_miner(used, {}) is None  # no config.yaml: cannot tell, default


def test_export_aggregates_and_resumes_like_the_sweep(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    sweep, dest = tmp_path / "sweep", tmp_path / "docs" / "results" / "grid"
    _grid(sweep, rng)
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"sweeper": {"_target_": "other"}}}))
    heavy = sweep / "negatives.hard_proportion=1,seed=0"
    for name in ("encoder/model.safetensors", "checkpoints/last.ckpt", "runs/th.trec", "embeddings/th/0.npy"):
        (heavy / name).parent.mkdir(parents=True, exist_ok=True)
        (heavy / name).write_bytes(b"x" * 1000)
    failed = make_job(sweep, "negatives.hard_proportion=1,seed=5", p=1, seed=5, scores=_scores(rng))
    (failed / "metrics.json").unlink()
    (failed / "failed.json").write_text(json.dumps({"error": "RuntimeError: boom"}))
    done = export(sweep, dest)
    assert (len(done.completed), len(done.failed)) == (4, 1)
    copied = {str(path.relative_to(dest / heavy.name)) for path in (dest / heavy.name).rglob("*") if path.is_file()}
    assert copied == {
        ".hydra/config.yaml",
        ".hydra/overrides.yaml",
        "run_folder.json",
        "config.yaml",
        "metrics.json",
        "per_query/th.tsv.gz",
    }
    packed = dest / heavy.name / "per_query" / "th.tsv.gz"
    assert gzip.decompress(packed.read_bytes()) == (heavy / "per_query" / "th.tsv").read_bytes()
    export(sweep, tmp_path / "again")  # the same files pack the same bytes (no time in the gzip header)
    assert (tmp_path / "again" / heavy.name / "per_query" / "th.tsv.gz").read_bytes() == packed.read_bytes()
    # (a) the same report from the copy
    aggregate(sweep)
    aggregate(dest)
    for name in ("cells.csv", "significance.csv", "trends.csv"):
        assert (dest / name).read_text() == (sweep / name).read_text(), name
    assert "1 failed" in (dest / "results.md").read_text()
    # (b) copied back as a sweep folder, the run folder check finds the jobs finished (the failed one reruns)
    restored = tmp_path / "restored"
    shutil.copytree(dest, restored)
    for job in (heavy.name, failed.name):
        config = yaml.safe_load((sweep / job / "config.yaml").read_text())
        state = run_folder.claim(restored / job, canonical_config(config), RunPolicy())
        if job == heavy.name:
            assert state.complete == json.loads((heavy / "metrics.json").read_text())
        else:
            assert state.complete is None and state.resumed


def test_wandb_summary_run_holds_the_tables_and_plot(tmp_path: Path) -> None:
    """Offline: the summary run's folder holds the cells / significance / trends tables and the plot."""
    rng = np.random.default_rng(7)
    _grid(tmp_path, rng)
    settings = summary_settings({"mode": "offline", "project": "mdr"}, tmp_path, tmp_path)
    summary = aggregate(tmp_path, wandb=settings)
    folder = Path(summary["wandb"])
    assert folder.parent == tmp_path / "wandb" and folder.name.startswith("offline-run-")
    media = folder / "files" / "media"
    tables = {path.name.split("_")[0]: path for path in (media / "table" / "tables").glob("*.table.json")}
    assert set(tables) == {"cells", "significance", "trends"}
    logged = json.loads(tables["cells"].read_text())
    cells = pd.read_csv(tmp_path / "cells.csv")
    means = [row[logged["columns"].index("mean")] for row in logged["data"]]
    assert means == pytest.approx(cells["mean"].tolist())
    assert len(list((media / "images" / "plots").glob("mrr_vs_proportion*.png"))) == 1
    assert list(folder.glob("run-*.wandb"))  # the run's own record, for `wandb sync`
    again = Path(aggregate(tmp_path, wandb=settings)["wandb"])  # aggregated again: the same summary run
    assert folder.name.endswith(settings["id"]) and again.name.endswith(settings["id"])
    # W&B failing never fails the aggregation
    broken = {**settings, "mode": "not-a-mode"}
    assert aggregate(tmp_path, wandb=broken)["wandb"] is None
    assert (tmp_path / "results.md").is_file()


def test_multirun_end_prints_the_table_and_where_the_plot_is(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from hydra._internal.callbacks import Callbacks

    rng = np.random.default_rng(8)
    _grid(tmp_path, rng)
    target = "mdr.reporting.callback.AggregateOnMultirunEnd"
    config = OmegaConf.create(
        {
            "hydra": {
                "callbacks": {"aggregate": {"_target_": target, "equivalence_margin": 0.01}},
                "sweep": {"dir": str(tmp_path)},
            },
            "logger": {"wandb": {"enabled": True, "mode": "offline", "project": "mdr", "group": None}},
        }
    )
    Callbacks(config).on_multirun_end(config=config)
    printed = capsys.readouterr().out
    assert "4 completed, 0 failed, 0 missing." in printed
    assert "### MRR@100, model=tiny, stage=target_only" in printed and "| th (low-resource) |" in printed
    assert f"plot: {tmp_path / 'mrr_vs_proportion.png'}" in printed
    assert f"full report: {tmp_path / 'results.md'}" in printed
    assert "against p=0" not in printed  # the headline only: the rest is in results.md
    assert "W&B summary run: " in printed and list((tmp_path / "wandb").glob("offline-run-*"))
    collected, _ = collect(tmp_path)
    assert len(collected) == 4


def test_jobs_of_a_sweep_folder_anywhere_share_its_wandb_group(tmp_path: Path) -> None:
    """With hydra.sweep.dir outside multiruns/ each job was its own W&B group (its folder's name), so the
    summary run had no group to join."""
    from hydra.conf import HydraConf
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from mdr.tracking import sweep_name

    sweep = tmp_path / "grid_a"
    assert sweep_name(sweep / "seed=0") == "seed=0"  # a single run: its own folder
    hydra = OmegaConf.structured(HydraConf)
    hydra.mode, hydra.sweep.dir = RunMode.MULTIRUN, str(sweep)
    HydraConfig.instance().set_config(OmegaConf.create({"hydra": hydra}))
    try:
        assert sweep_name(sweep / "seed=0") == "grid_a"
        assert summary_settings({}, sweep, sweep)["group"] == "grid_a"
    finally:
        HydraConfig.instance().cfg = None


@pytest.mark.slow
def test_an_exported_sweep_copied_back_is_not_recomputed(tmp_path: Path, cache_dir: Path, tiny_model: Path) -> None:
    """A real two-job sweep, exported and copied back as a sweep folder: the same command recomputes nothing
    (no training, no encoder written) and reports the same cells."""
    import os
    import subprocess
    import sys

    from conftest import DATA_DIR, ROOT

    env = {**os.environ, "MDR_DATA_DIR": str(DATA_DIR), "MDR_CACHE_DIR": str(cache_dir), "WANDB_MODE": "offline"}
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        "data=demo",
        "language=th",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "train.batch_size=8",
        "negatives.num_negatives=2",
        "negatives.hard_proportion=0,1",
        "trainer.enable_progress_bar=false",
    ]
    sweep, exported, restored = tmp_path / "sweep", tmp_path / "docs" / "results" / "demo", tmp_path / "restored"
    first = subprocess.run([*command, f"hydra.sweep.dir={sweep}"], env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    done = export(sweep, exported)
    assert len(done.completed) == 2 and not list(exported.rglob("encoder"))
    shutil.copytree(exported, restored)
    again = subprocess.run(
        [*command, f"hydra.sweep.dir={restored}"], env=env, capture_output=True, text=True, timeout=900
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("already complete (same config)") == 2
    assert not list(restored.rglob("encoder")) and not list(restored.rglob("checkpoints"))
    assert pd.read_csv(restored / "cells.csv")["mean"].tolist() == pd.read_csv(sweep / "cells.csv")["mean"].tolist()


def test_zero_shot_runs_of_evaluate_join_the_report(tmp_path: Path) -> None:
    """The grid's zero-shot row (evaluate.py: no training, no p) from its own folder, beside a trained sweep."""
    rng = np.random.default_rng(9)
    _grid(tmp_path / "dose", rng)
    job = make_job(tmp_path / "zero", "language=th", p=0, seed=0, scores=_scores(rng), overrides=["language=th"])
    metrics = json.loads((job / "metrics.json").read_text())
    metrics.update(stage="zero_shot", hard_proportion=None, num_negatives=None)
    del metrics["train"]
    (job / "metrics.json").write_text(json.dumps(metrics))
    config = yaml.safe_load((job / "config.yaml").read_text())
    for key in ("negatives", "stage", "loss"):  # evaluate.yaml has none of these
        del config[key]
    (job / "config.yaml").write_text(yaml.safe_dump(config))
    (job / "run_folder.json").unlink()
    run_folder.claim(job, canonical_config(config), RunPolicy())
    summary = aggregate([tmp_path / "dose", tmp_path / "zero"], out=tmp_path / "out")
    assert (summary["completed"], summary["invalid"], summary["duplicates"]) == (5, 0, 0)
    cells = pd.read_csv(tmp_path / "out" / "cells.csv")
    zero = cells[cells.stage == "zero_shot"]
    assert zero.variant.tolist() == ["mask=n/a,denoise=off"] and zero.hard_proportion.isna().all()
    assert zero["mean"].iloc[0] == pytest.approx(metrics["metrics"]["mrr@100"])
    assert "### MRR@100, model=tiny, stage=zero_shot" in (tmp_path / "out" / "results.md").read_text()
