"""The aggregation of a sweep folder (variants, newest outcome, missing jobs) and a real
multirun whose failed cell makes the command exit non-zero."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mdr.reporting.aggregate import aggregate, collect, main
from mdr.reporting.collect import expected_jobs, job_outcome
from mdr.reporting.statistics import holm

from conftest import DATA_DIR, ROOT

SEEDS = (0, 1, 2)


# --- the aggregation, on hand-made job folders ---------------------------------------------------------------


def _job(
    sweep: Path,
    overrides: list[str],
    per_query: np.ndarray | None,
    *,
    proportion: float = 0.0,
    seed: int = 0,
    mask: bool | None = True,
    denoised: bool = False,
) -> Path:
    job = sweep / ",".join(overrides)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if per_query is None:
        return job
    lines = ["query_id\tmrr@100\tndcg@10\trecall@100"] + [f"q{i:03d}\t{v:.6f}\t0\t0" for i, v in enumerate(per_query)]
    (job / "per_query").mkdir()
    (job / "per_query" / "th.tsv").write_text("\n".join(lines) + "\n")
    train = {"num_hard": int(proportion * 4)}
    if mask is not None:
        train["mask_false_negatives"] = mask
    metrics = {
        "language": "th",
        "low_resource": True,
        "model": "tiny",
        "stage": "target_only",
        "hard_proportion": proportion,
        "seed": seed,
        "num_queries": len(per_query),
        "metrics": {"mrr@100": float(np.mean(per_query)), "recall@100": 0.0, "ndcg@10": 0.0},
        "per_query_file": "per_query/th.tsv",
        "train": train,
        "denoised": denoised,
    }
    (job / "metrics.json").write_text(json.dumps(metrics))
    return job


def test_newest_outcome_of_a_cell_wins(tmp_path: Path) -> None:
    stale = _job(tmp_path, ["seed=0"], np.full(5, 0.5))
    (stale / "failed.json").write_text(json.dumps({"error": "RuntimeError: later failure"}))
    os.utime(stale / "metrics.json", ns=(1_000_000_000, 1_000_000_000))
    os.utime(stale / "failed.json", ns=(2_000_000_000, 2_000_000_000))
    assert job_outcome(stale) == "failed"
    recovered = _job(tmp_path, ["seed=1"], np.full(5, 0.5), seed=1)
    (recovered / "failed.json").write_text(json.dumps({"error": "RuntimeError: earlier failure"}))
    os.utime(recovered / "failed.json", ns=(1_000_000_000, 1_000_000_000))
    os.utime(recovered / "metrics.json", ns=(2_000_000_000, 2_000_000_000))
    assert job_outcome(recovered) == "completed"
    assert job_outcome(_job(tmp_path, ["seed=2"], None)) == "missing"
    results, problems = collect(tmp_path)
    assert list(results.seed) == [1]
    failed = problems[problems.status == "failed"]
    assert "later failure" in failed.error.iloc[0] and "older metrics.json" in failed.error.iloc[0]
    assert list(problems.status) == ["failed", "missing"]


def test_jobs_the_sweep_never_started_are_missing(tmp_path: Path) -> None:
    multirun = {
        "hydra": {
            "sweeper": {
                "_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                "max_batch_size": None,
                "params": {"seed": "0,1"},
            },
            "overrides": {"task": ["language=th", "negatives.hard_proportion=0,1"]},
        }
    }
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump(multirun))
    jobs = expected_jobs(tmp_path)
    assert jobs is not None and len(jobs) == 4
    assert ["seed=0", "language=th", "negatives.hard_proportion=1"] in jobs
    for job in jobs[:3]:  # the fourth never made a folder
        values = dict(item.split("=") for item in job)
        seed, proportion = int(values["seed"]), float(values["negatives.hard_proportion"])
        _job(tmp_path, job, np.full(4, 0.3), proportion=proportion, seed=seed)
    _, problems = collect(tmp_path)
    assert len(problems) == 1 and problems.error.iloc[0] == "no job folder (never started)"
    assert problems.overrides.iloc[0] == " ".join(jobs[3])


def test_sweep_report_compares_like_with_like(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    queries = 200
    base = rng.uniform(0.2, 0.8, queries)

    def runs(shift: float) -> list[np.ndarray]:
        return [np.clip(base + shift + rng.normal(0, 0.002) + rng.normal(0, 0.05, queries), 0, 1) for _ in SEEDS]

    cells = {  # (variant flags, p) -> per-seed per-query MRR
        ((True, False), 0.0): runs(0.0),
        ((True, False), 0.5): runs(-0.01),
        ((True, False), 1.0): runs(-0.05),  # masking on: p = 1 clearly worse on every seed
        ((False, False), 0.0): runs(0.0),
        ((False, False), 1.0): runs(0.0),  # masking off: no effect
        ((True, True), 1.0): runs(-0.005),  # denoised, p = 1 only: compared with the default p = 0
    }
    for ((mask, denoised), proportion), seed_runs in cells.items():
        for seed, values in zip(SEEDS, seed_runs):
            overrides = [f"negatives.hard_proportion={proportion:g}", f"seed={seed}", f"mask={mask}", f"dn={denoised}"]
            _job(tmp_path, overrides, values, proportion=proportion, seed=seed, mask=mask, denoised=denoised)
    summary = aggregate(tmp_path)
    assert (summary["completed"], summary["failed"], summary["missing"]) == (18, 0, 0)
    tests = pd.read_csv(tmp_path / "significance.csv")
    assert list(tests.columns[:11]) == [
        "model",
        "stage",
        "language",
        "hard_proportion",
        "delta_mrr@100",
        "p_value",
        "p_holm",
        "ci_low",
        "ci_high",
        "seeds",
        "queries",
    ]
    assert {"variant", "baseline_variant", "seed_level", "note"} <= set(tests.columns)
    by = {(row.variant, row.hard_proportion): row for row in tests.itertuples()}
    assert set(by) == {
        ("mask=on,denoise=off", 0.5),
        ("mask=on,denoise=off", 1.0),
        ("mask=off,denoise=off", 1.0),
        ("mask=on,denoise=on", 1.0),
    }
    hurt = by[("mask=on,denoise=off", 1.0)]
    assert hurt.p_holm < 0.05 and hurt.ci_high < 0 and (hurt.seeds, hurt.queries) == (3, queries)
    assert hurt.baseline_variant == "mask=on,denoise=off"
    assert by[("mask=off,denoise=off", 1.0)].baseline_variant == "mask=off,denoise=off"
    assert by[("mask=off,denoise=off", 1.0)].p_holm > 0.05
    assert by[("mask=on,denoise=on", 1.0)].baseline_variant == "mask=on,denoise=off"
    # Holm within (model, stage, language, variant)
    default = tests[tests.variant == "mask=on,denoise=off"]
    assert list(default.p_holm) == pytest.approx(holm(list(default.p_value)))
    trends = pd.read_csv(tmp_path / "trends.csv").set_index("variant")
    assert {"slope", "ci_low", "ci_high", "p_value", "verdict"} <= set(trends.columns)
    assert trends.loc["mask=on,denoise=off", "slope"] < 0 and trends.loc["mask=on,denoise=off", "ci_high"] < 0
    hurts = trends.loc["mask=on,denoise=off", "verdict"]
    assert hurts.startswith("hard negatives hurt (slope < 0: -0.04") and hurts.endswith("at 3 seeds")
    assert "curved (quadratic term" in hurts  # 0, -0.01, -0.05: the drop steepens
    assert trends.loc["mask=off,denoise=off", "verdict"].startswith("no effect larger than 0.01 (TOST, p")
    effects = pd.read_csv(tmp_path / "variant_effects.csv")
    masked_off_p1 = effects[(effects.variant == "mask=off,denoise=off") & (effects.hard_proportion == 1.0)]
    assert masked_off_p1["delta_mrr@100"].iloc[0] > 0.03 and masked_off_p1.p_value.iloc[0] < 0.05
    cells_csv = pd.read_csv(tmp_path / "cells.csv")
    assert len(cells_csv) == 6 and (cells_csv.ci_low < cells_csv["mean"]).all()
    assert (cells_csv["mean"] < cells_csv.ci_high).all()
    report = (tmp_path / "results.md").read_text()
    assert "| th (low-resource) | mask=on,denoise=off |" in report and "(n=3)" in report
    assert "hard negatives hurt (slope < 0" in report and "| mask=on,denoise=off | 1 |" in report
    assert (tmp_path / "answer.png").stat().st_size > 10_000 and not (tmp_path / "delta_vs_proportion.png").exists()
    assert (tmp_path / "mrr_vs_proportion.png").stat().st_size > 10_000
    assert main([str(tmp_path)]) == 0


def test_single_seed_sweep_says_so(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    base = rng.uniform(0, 1, 100)
    for proportion in (0.0, 1.0):
        _job(tmp_path, [f"p={proportion}"], np.clip(base + rng.normal(0, 0.1, 100), 0, 1), proportion=proportion)
    aggregate(tmp_path)
    tests = pd.read_csv(tmp_path / "significance.csv")
    assert tests.seeds.tolist() == [1]
    assert tests.note.iloc[0] == "seeds=1: interval from queries only; estimate only, no verdict (below 3 paired seeds)"
    assert pd.read_csv(tmp_path / "trends.csv").verdict.iloc[0].startswith("no verdict: paired on seed 0,")


def test_callback_exits_non_zero_through_hydra_when_a_job_failed(tmp_path: Path) -> None:
    """Hydra turns a callback's Exception into a warning; the callback's SystemExit must pass through it."""
    from hydra._internal.callbacks import Callbacks
    from omegaconf import OmegaConf

    target = "mdr.reporting.callback.AggregateOnMultirunEnd"
    config = OmegaConf.create(
        {
            "hydra": {
                "callbacks": {"aggregate": {"_target_": target, "equivalence_margin": 0.01}},
                "sweep": {"dir": str(tmp_path)},
            }
        }
    )
    rng = np.random.default_rng(4)
    for proportion in (0.0, 1.0):
        _job(tmp_path, [f"p={proportion}"], rng.uniform(0, 1, 50), proportion=proportion)
    Callbacks(config).on_multirun_end(config=config)  # every job completed: returns normally
    failed = _job(tmp_path, ["p=2"], None)
    (failed / "failed.json").write_text(json.dumps({"error": "DataError: bad"}))
    with pytest.raises(SystemExit) as exit_info:
        Callbacks(config).on_multirun_end(config=config)
    assert exit_info.value.code == 1
    assert "1 failed" in (tmp_path / "results.md").read_text()


# --- a real multirun ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_multirun_with_a_failed_cell_exits_non_zero(tmp_path: Path, cache_dir: Path, tiny_model: Path) -> None:
    """One cell fails (a language without data): the others are aggregated and ``train.py -m`` exits 1."""
    env = {**os.environ, "MDR_DATA_DIR": str(DATA_DIR), "MDR_CACHE_DIR": str(cache_dir), "WANDB_MODE": "offline"}
    sweep = tmp_path / "sweep"
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        "data=demo",
        "language=th,sw",  # sw has a config but no XQuAD data
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "train.batch_size=8",
        "negatives.num_negatives=2",
        "negatives.hard_proportion=0,1",
        "trainer.enable_progress_bar=false",
        "hydra.callbacks.aggregate.equivalence_margin=0.01",
        f"hydra.sweep.dir={sweep}",
    ]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 1, done.stderr[-3000:]
    results = pd.read_csv(sweep / "results.csv")
    assert set(results.language) == {"th"} and set(results.hard_proportion) == {0.0, 1.0}
    table = (sweep / "results.md").read_text()
    assert "2 completed, 2 failed, 0 missing." in table and "language=sw" in table
    assert "seeds=1: interval from queries only" in table
    assert len(pd.read_csv(sweep / "significance.csv")) == 1
    # table values are the runs' metrics.json values
    runs = {
        json.loads(p.read_text())["hard_proportion"]: json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")
    }
    assert (
        f"| {runs[1.0]['metrics']['mrr@100']:.4f}* / {runs[1.0]['metrics']['ndcg@10']:.4f} (n=1)" in table
        or f"| {runs[1.0]['metrics']['mrr@100']:.4f} / {runs[1.0]['metrics']['ndcg@10']:.4f} (n=1)" in table
    )
    # W&B (offline): one run per job, none reused by the next job of the same process
    run_dirs = [sorted((p.parent / "wandb").glob("offline-run-*")) for p in sweep.glob("*/metrics.json")]
    assert all(len(dirs) == 1 for dirs in run_dirs), run_dirs
    assert len({dirs[0].name.rsplit("-", 1)[1] for dirs in run_dirs}) == 2
    assert expected_jobs(sweep) is not None and len(expected_jobs(sweep)) == 4  # every job found its folder
    # a job killed before writing anything is listed as missing, and the CLI exits 1 as well
    (sweep / "killed_job" / ".hydra").mkdir(parents=True)
    summary = aggregate(sweep)
    assert (summary["completed"], summary["failed"], summary["missing"]) == (2, 2, 1)
    assert main([str(sweep)]) == 1


def test_a_rerun_spelling_values_otherwise_finds_its_finished_jobs(tmp_path: Path) -> None:
    from mdr.utils.job_dirs import job_dirname

    exclude = ["experiment", "run.on_complete"]
    multirun = {  # the rerun: p spelled 0.0 and 1.0, a policy key added; the folders are the first command's
        "hydra": {
            "sweeper": {
                "_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                "max_batch_size": None,
                "params": {"negatives.hard_proportion": "0.0,1.0"},
            },
            "overrides": {"task": ["seed=0", "run.on_complete=skip"]},
            "job": {"config": {"override_dirname": {"exclude_keys": exclude}}},
        }
    }
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump(multirun))
    for proportion in (0, 1):
        first = [f"negatives.hard_proportion={proportion}", "seed=0"]  # as the first command typed them
        job = _job(tmp_path, first, np.full(4, 0.3), proportion=float(proportion))
        job.rename(tmp_path / job_dirname(first, exclude))
    _, problems = collect(tmp_path)
    assert problems.empty, problems.to_string()  # before: both jobs 'missing', the sweep exit status 1


@pytest.mark.parametrize("margin", [0, -0.01, "0.01", True])
def test_a_bad_equivalence_margin_is_refused_before_any_job(margin: object) -> None:
    from mdr.reporting.callback import AggregateOnMultirunEnd

    with pytest.raises(ValueError, match=r"^hydra\.callbacks\.aggregate\.equivalence_margin must be"):
        AggregateOnMultirunEnd(equivalence_margin=margin)  # type: ignore[arg-type]
    assert AggregateOnMultirunEnd(equivalence_margin=0.02).equivalence_margin == 0.02


def test_one_seed_cells_get_no_significance_mark(tmp_path: Path) -> None:
    """With one seed everywhere the interval is from queries only: the table must not mark it significant."""
    rng = np.random.default_rng(3)
    base = rng.uniform(0.2, 0.8, 300)
    _job(tmp_path, ["p=0"], base, proportion=0.0)
    _job(tmp_path, ["p=1"], np.clip(base - 0.1, 0, 1), proportion=1.0)  # far below: p < .001 from queries alone
    aggregate(tmp_path, 0.01)
    table = (tmp_path / "results.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| th"))
    assert "*" not in row, row
    tests = pd.read_csv(tmp_path / "significance.csv")
    assert tests.p_holm.iloc[0] < 0.05 and tests.seed_level.iloc[0] == "none"  # the test itself is still reported
