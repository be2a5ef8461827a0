"""Seed-aware statistics, the aggregation of a sweep folder (variants, newest outcome, missing jobs) and a real
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

from mdr.reporting.aggregate import aggregate, collect, expected_jobs, job_outcome, main, run_variant
from mdr.reporting.significance import Cell, bootstrap_contrast, holm, slope_weights, verdict

from conftest import DATA_DIR, ROOT

SEEDS = (0, 1, 2)


def _readme_cells(shifts: list[float], queries: int = 635, seed: int = 0) -> tuple[Cell, Cell]:
    """p = 0 runs, and p > 0 runs of the same seeds that move every query by ``shifts[seed]``."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 1, queries)
    p0 = np.clip(base + rng.normal(0, 0.05, (len(shifts), queries)), 0, 1)  # (S, Q)
    p1 = p0 + np.asarray(shifts)[:, None]
    return Cell(SEEDS[: len(shifts)], p1), Cell(SEEDS[: len(shifts)], p0)


def test_seeds_that_reverse_the_effect_are_not_significant() -> None:
    """The issue's example: +0.06, +0.06, -0.09 on every query. A test over queries alone calls it p < .001."""
    treated, baseline = _readme_cells([0.06, 0.06, -0.09])
    estimate = bootstrap_contrast([treated, baseline], [1.0, -1.0], trials=10_000)
    assert estimate.value == pytest.approx(0.01)
    assert estimate.p_value > 0.3 and estimate.ci_low < 0 < estimate.ci_high
    assert (estimate.seeds, estimate.queries, estimate.seed_level) == (3, 635, "paired")
    # the same runs with other seed numbers (no pairing by seed): still not significant
    unpaired = bootstrap_contrast([treated, Cell((7, 8, 9), baseline.scores)], [1.0, -1.0], trials=10_000)
    assert unpaired.seed_level == "unpaired" and unpaired.p_value > 0.3
    # what the old test saw: per-query MRR averaged over seeds, i.e. one pseudo-seed, queries only
    averaged = bootstrap_contrast(
        [Cell((0,), treated.scores.mean(0, keepdims=True)), Cell((0,), baseline.scores.mean(0, keepdims=True))],
        [1.0, -1.0],
        trials=10_000,
    )
    assert averaged.p_value < 0.001 and averaged.seed_level == "none"


@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_seeds_that_agree_are_significant(direction: float) -> None:
    treated, baseline = _readme_cells([direction * s for s in (0.05, 0.06, 0.07)], seed=1)
    estimate = bootstrap_contrast([treated, baseline], [1.0, -1.0], trials=10_000)
    assert estimate.p_value < 0.02 and estimate.value == pytest.approx(direction * 0.06)
    assert (estimate.ci_low > 0) if direction > 0 else (estimate.ci_high < 0)
    assert abs(estimate.ci_high - estimate.ci_low) < 0.06


def _null_cells(rng: np.random.Generator, seeds: int, seed_sd: float, residual_sd: float) -> list[np.ndarray]:
    """Two cells with equal expected means: shared query difficulty, per-run seed offsets, seed x query noise."""
    queries = 150
    base = rng.uniform(0.2, 0.8, queries)
    return [base + rng.normal(0, seed_sd, (seeds, 1)) + rng.normal(0, residual_sd, (seeds, queries)) for _ in "ab"]


def _pigeonhole_p(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, trials: int = 1000) -> float:
    """A plain two-level resample (seeds and queries drawn with replacement): what the t seed level replaces."""
    seeds, queries = a.shape
    seed_counts = rng.multinomial(seeds, [1 / seeds] * seeds, size=trials)  # (trials, S)
    query_counts = rng.multinomial(queries, [1 / queries] * queries, size=trials)  # (trials, Q)
    draws = np.einsum("ts,sq,tq->t", seed_counts, a - b, query_counts) / (seeds * queries)
    return min(1.0, 2 * min((draws <= 0).mean(), (draws >= 0).mean()) + 2 / trials)


@pytest.mark.parametrize(
    ("seed_sd", "residual_sd"),
    [(0.05, 0.1), (0.0, 0.1), (0.01, 0.05)],
    ids=["seed-dominated", "residual-only", "mixed"],
)
def test_false_positive_rate_on_synthetic_nulls(seed_sd: float, residual_sd: float) -> None:
    """100 nulls at 3 seeds: at most 10% called significant, p-values spread over (0, 1], interval = test."""
    rng = np.random.default_rng(42)
    p_paired, p_unpaired, p_plain = [], [], []
    for index in range(100):
        a, b = _null_cells(rng, 3, seed_sd, residual_sd)
        paired = bootstrap_contrast([Cell(SEEDS, a), Cell(SEEDS, b)], [1.0, -1.0], trials=1000, seed=index)
        unpaired = bootstrap_contrast([Cell(SEEDS, a), Cell((5, 6, 7), b)], [1.0, -1.0], trials=1000, seed=index)
        p_paired.append(paired.p_value)
        p_unpaired.append(unpaired.p_value)
        p_plain.append(_pigeonhole_p(a, b, rng))
        if abs(paired.p_value - 0.05) > 0.01:  # the p-value inverts the interval
            assert (paired.ci_low <= 0 <= paired.ci_high) == (paired.p_value > 0.05)
    for p_values in (np.asarray(p_paired), np.asarray(p_unpaired)):
        assert np.mean(p_values < 0.05) <= 0.1
        assert 0.3 <= np.mean(p_values < 0.5) <= 0.7
    if seed_sd > 0.02:  # a plain seed resample cannot leave the range of 3 seed means: 3x too many "effects"
        assert np.mean(np.asarray(p_plain) < 0.05) >= 0.12


def test_single_seed_is_flagged_and_uses_queries_only() -> None:
    rng = np.random.default_rng(3)
    a, b = (rng.uniform(0, 1, (1, 300)) for _ in "ab")
    estimate = bootstrap_contrast([Cell((0,), a), Cell((0,), b)], [1.0, -1.0], trials=4000)
    assert (estimate.seeds, estimate.seed_level) == (1, "none")
    query_sd = (a - b)[0].std(ddof=1) / np.sqrt(300)  # the interval is the query bootstrap's
    assert estimate.ci_high - estimate.ci_low == pytest.approx(2 * 1.96 * query_sd, rel=0.1)
    partial = bootstrap_contrast([Cell(SEEDS, np.vstack([a] * 3)), Cell((0,), b)], [1.0, -1.0], trials=500)
    assert (partial.seeds, partial.seed_level) == (1, "partial")
    assert "1 seed" in verdict(None, [(1.0, 0.2, 0.001)], seeds=1) and "not estimated" in verdict(None, [], seeds=1)


def test_slope_is_the_least_squares_slope_of_cell_means() -> None:
    rng = np.random.default_rng(5)
    proportions = [0.0, 0.25, 0.5, 1.0]
    cells = [Cell(SEEDS, rng.uniform(0, 1, (3, 50)) - 0.1 * p) for p in proportions]
    estimate = bootstrap_contrast(cells, slope_weights(proportions), trials=1000)
    expected = np.polyfit(proportions, [cell.scores.mean() for cell in cells], 1)[0]
    assert estimate.value == pytest.approx(expected)
    with pytest.raises(ValueError, match="two distinct"):
        slope_weights([0.5, 0.5])


def test_holm_adjustment() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([0.2, 0.01]) == pytest.approx([0.2, 0.02])
    assert holm([0.04]) == pytest.approx([0.04])


def test_verdicts() -> None:
    from mdr.reporting.significance import Estimate

    up = Estimate(0.02, 0.01, 0.03, 0.001, 3, 100, "paired")
    flat = Estimate(0.0, -0.01, 0.01, 0.9, 3, 100, "paired")
    down = Estimate(-0.02, -0.03, -0.01, 0.001, 3, 100, "paired")
    assert verdict(up, [(0.5, 0.01, 0.2), (1.0, 0.02, 0.3)], 3) == "hard negatives help at 3 seeds"
    assert verdict(flat, [(1.0, -0.03, 0.01)], 3) == "hard negatives hurt at 3 seeds"
    assert verdict(flat, [(0.5, 0.01, 0.2), (1.0, -0.02, 0.06)], 3) == "no detectable effect at 3 seeds"
    assert verdict(down, [(0.5, 0.02, 0.01)], 2) == "mixed at 2 seeds: better at p=0.5, falling slope"


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


def test_variant_is_read_from_metrics_then_config() -> None:
    assert run_variant({"train": {"mask_false_negatives": False}, "denoised": True}, {}) == (False, True)
    assert run_variant({"train": {"num_hard": 2}, "loss": {"mask_false_negatives": True}}, {}) == (True, False)
    config = {"loss": {"mask_false_negatives": True}, "negatives": {"denoise": {"enabled": True}}}
    assert run_variant({"train": {"num_hard": 2}}, config) == (True, True)
    assert run_variant({"train": {"num_hard": 0}}, config) == (True, False)  # p = 0: nothing to denoise
    assert run_variant({"train": {}}, {}) == (False, False)  # predates masking
    assert run_variant({"train": None}, config) == (None, False)  # zero-shot: trained nothing


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
    summary = aggregate(tmp_path, trials=2000)
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
    assert trends.loc["mask=on,denoise=off", "verdict"] == "hard negatives hurt at 3 seeds"
    assert trends.loc["mask=off,denoise=off", "verdict"] == "no detectable effect at 3 seeds"
    effects = pd.read_csv(tmp_path / "variant_effects.csv")
    masked_off_p1 = effects[(effects.variant == "mask=off,denoise=off") & (effects.hard_proportion == 1.0)]
    assert masked_off_p1["delta_mrr@100"].iloc[0] > 0.03 and masked_off_p1.p_value.iloc[0] < 0.05
    cells_csv = pd.read_csv(tmp_path / "cells.csv")
    assert len(cells_csv) == 6 and (cells_csv.ci_low < cells_csv["mean"]).all()
    assert (cells_csv["mean"] < cells_csv.ci_high).all()
    report = (tmp_path / "results.md").read_text()
    assert "| th (low-resource) | mask=on,denoise=off |" in report and "(n=3)" in report
    assert "hard negatives hurt at 3 seeds" in report and "| mask=on,denoise=off | 1 |" in report
    assert (tmp_path / "mrr_vs_proportion.png").stat().st_size > 10_000
    assert main([str(tmp_path), "--trials", "200"]) == 0


def test_single_seed_sweep_says_so(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    base = rng.uniform(0, 1, 100)
    for proportion in (0.0, 1.0):
        _job(tmp_path, [f"p={proportion}"], np.clip(base + rng.normal(0, 0.1, 100), 0, 1), proportion=proportion)
    aggregate(tmp_path, trials=500)
    tests = pd.read_csv(tmp_path / "significance.csv")
    assert tests.seeds.tolist() == [1] and tests.note.iloc[0] == "seeds=1: interval from queries only"
    assert "training-seed variance not estimated" in pd.read_csv(tmp_path / "trends.csv").verdict.iloc[0]


def test_callback_exits_non_zero_through_hydra_when_a_job_failed(tmp_path: Path) -> None:
    """Hydra turns a callback's Exception into a warning; the callback's SystemExit must pass through it."""
    from hydra._internal.callbacks import Callbacks
    from omegaconf import OmegaConf

    target = "mdr.reporting.callback.AggregateOnMultirunEnd"
    config = OmegaConf.create(
        {"hydra": {"callbacks": {"aggregate": {"_target_": target, "trials": 200}}, "sweep": {"dir": str(tmp_path)}}}
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
        "hydra.callbacks.aggregate.trials=500",
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
        f"{runs[1.0]['metrics']['mrr@100']:.4f}* (n=1)" in table
        or f"{runs[1.0]['metrics']['mrr@100']:.4f} (n=1)" in table
    )
    # W&B (offline): one run per job, none reused by the next job of the same process
    run_dirs = [sorted((p.parent / "wandb").glob("offline-run-*")) for p in sweep.glob("*/metrics.json")]
    assert all(len(dirs) == 1 for dirs in run_dirs), run_dirs
    assert len({dirs[0].name.rsplit("-", 1)[1] for dirs in run_dirs}) == 2
    assert expected_jobs(sweep) is not None and len(expected_jobs(sweep)) == 4  # every job found its folder
    # a job killed before writing anything is listed as missing, and the CLI exits 1 as well
    (sweep / "killed_job" / ".hydra").mkdir(parents=True)
    summary = aggregate(sweep, trials=200)
    assert (summary["completed"], summary["failed"], summary["missing"]) == (2, 2, 1)
    assert main([str(sweep), "--trials", "200"]) == 1
