"""Significance tests and the aggregation of a real (small) multirun, failures included."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mdr.reporting.aggregate import aggregate, main
from mdr.reporting.significance import holm, paired_randomization_test

from conftest import DATA_DIR, ROOT


def test_randomization_test_approaches_the_exact_permutation_p_value() -> None:
    a = np.array([0.9, 0.8, 0.5, 1.0, 0.3, 0.7, 0.6, 0.2])
    b = np.array([0.5, 0.6, 0.5, 0.2, 0.1, 0.7, 0.3, 0.3])
    diffs = a - b
    exact = np.mean(
        [
            abs((np.array(s) * diffs).mean()) >= abs(diffs.mean()) - 1e-12
            for s in itertools.product((-1, 1), repeat=len(diffs))
        ]
    )
    assert paired_randomization_test(a, b, trials=20_000) == pytest.approx(exact, abs=0.01)
    assert paired_randomization_test(a, a) == 1.0
    assert paired_randomization_test(np.ones(200), np.zeros(200), trials=999) == pytest.approx(1 / 1000)


def test_holm_adjustment() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([0.2, 0.01]) == pytest.approx([0.2, 0.02])


def test_multirun_is_aggregated_and_failures_are_isolated(tmp_path: Path, cache_dir: Path, tiny_model: Path) -> None:
    env = {**os.environ, "MDR_DATA_DIR": str(DATA_DIR), "MDR_CACHE_DIR": str(cache_dir), "WANDB_MODE": "offline"}
    sweep = tmp_path / "sweep"
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
        "trainer.enable_progress_bar=false",
        "hydra.callbacks.aggregate.trials=2000",
        "negatives.hard_proportion=0,1,1.5",
        "seed=0,1",
        f"hydra.sweep.dir={sweep}",
    ]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    # the callback aggregated at the end of the multirun
    results = pd.read_csv(sweep / "results.csv")
    assert len(results) == 4 and set(results.hard_proportion) == {0.0, 1.0} and set(results.seed) == {0, 1}
    table = (sweep / "results.md").read_text()
    assert "| th (low-resource) |" in table and "p=0 " in table and "p=1 " in table and "(n=2)" in table
    assert "2 failed" in table and "hard_proportion must be in [0, 1]" in table
    tests = pd.read_csv(sweep / "significance.csv")
    assert list(tests.hard_proportion) == [1.0] and 0 < tests.p_value.iloc[0] <= 1
    assert (sweep / "mrr_vs_proportion.png").stat().st_size > 10_000
    # table values are the seed means of the runs' metrics.json
    runs = [json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")]
    mean_p0 = np.mean([r["metrics"]["mrr@100"] for r in runs if r["hard_proportion"] == 0.0])
    assert f"{mean_p0:.4f} ±" in table
    # W&B (offline): one run per job, none reused by the next job of the same process
    run_dirs = [sorted((p.parent / "wandb").glob("offline-run-*")) for p in sweep.glob("*/metrics.json")]
    assert all(len(dirs) == 1 for dirs in run_dirs), run_dirs
    assert len({dirs[0].name.rsplit("-", 1)[1] for dirs in run_dirs}) == 4
    # a job killed before writing anything is listed as missing, and the CLI exits 1
    (sweep / "killed_job" / ".hydra").mkdir(parents=True)
    summary = aggregate(sweep, trials=500)
    assert (summary["completed"], summary["failed"], summary["missing"]) == (4, 2, 1)
    assert main([str(sweep), "--trials", "200"]) == 1
