"""Slow end-to-end paths: Lightning DDP on 2 CPU processes, and a multirun through a real SLURM cluster."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import DATA_DIR, ROOT

pytestmark = pytest.mark.slow

SMALL = [
    "data=demo",
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=3",
    "trainer.enable_progress_bar=false",
    "logger.wandb.enabled=false",
    "train.batch_size=8",
]


def _run(args: list[str], cwd: Path, cache_dir: Path, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MDR_DATA_DIR": str(DATA_DIR), "MDR_CACHE_DIR": str(cache_dir)}
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_ddp_on_two_cpu_processes(tmp_path: Path, cache_dir: Path, tiny_model: Path) -> None:
    out = tmp_path / "ddp"
    done = _run(
        [
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.precision=32-true",
            "language=th",
            *SMALL,
            f"hydra.run.dir={out}",
        ],
        tmp_path,
        cache_dir,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    # 555 queries over 2 ranks of 8: each rank takes 3 batches (limit), i.e. 3 optimizer steps
    assert metrics["train"]["steps"] == 3 and metrics["num_queries"] == 635
    assert done.stdout.count("[mdr] th tiny") == 1, "only rank 0 reports"
    assert metrics["evaluation"]["ranks"] == 2, "every rank encodes and searches its shards of the corpus"


def _slurm_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    probe = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    return probe.returncode == 0 and any(state in probe.stdout for state in ("idle", "mix", "alloc"))


def test_multirun_through_slurm(tmp_path: Path, cache_dir: Path, tiny_model: Path) -> None:
    if not _slurm_up():
        if os.environ.get("MDR_REQUIRE_SLURM") == "1":
            pytest.fail("MDR_REQUIRE_SLURM=1 but no SLURM cluster answers sinfo (see .ci/run)")
        pytest.skip("no SLURM cluster (bring one up with shared/setup/slurm_up.sh)")
    sweep = tmp_path / "slurm"
    done = _run(
        [
            "-m",
            "launcher=slurm",
            "language=th,hi",
            "negatives.hard_proportion=0,1",
            *SMALL,
            "hydra.launcher.mem_gb=4",
            "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.timeout_min=20",
            "hydra.callbacks.aggregate.equivalence_margin=0.01",
            f"hydra.sweep.dir={sweep}",
        ],
        tmp_path,
        cache_dir,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    logs = list((sweep / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 4, "each cell should have run as its own SLURM job"
    results = pd.read_csv(sweep / "results.csv")
    assert len(results) == 4 and set(results.language) == {"th", "hi"}
    assert "4 completed, 0 failed, 0 missing" in (sweep / "results.md").read_text()


def test_ddp_sweep_through_slurm_two_tasks_per_job(tmp_path: Path, cache_dir: Path, tiny_model: Path) -> None:
    """Issue 16: a multirun whose jobs are 2-task SLURM DDP jobs (CPU, gloo); tasks_per_node follows
    trainer.devices. Each cell is trained by its job's 2 ranks; a rerun of the finished sweep returns on both
    ranks (rank 1 follows rank 0's 'already complete', no wait in Lightning's init); the aggregation counts both."""
    if not _slurm_up():
        if os.environ.get("MDR_REQUIRE_SLURM") == "1":
            pytest.fail("MDR_REQUIRE_SLURM=1 but no SLURM cluster answers sinfo (see .ci/run)")
        pytest.skip("no SLURM cluster (bring one up with shared/setup/slurm_up.sh)")
    sweep = tmp_path / "slurm-ddp"
    command = [
        "-m",
        "launcher=slurm",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.precision=32-true",
        "language=th",
        "negatives.hard_proportion=0",
        "seed=0,1",
        *SMALL,
        "hydra.launcher.mem_gb=4",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.timeout_min=20",
        f"hydra.sweep.dir={sweep}",
    ]
    done = _run(command, tmp_path, cache_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    scripts = sorted((sweep / ".submitit").glob("*/*_submission.sh"))  # one per launch (a job array)
    assert scripts and all("--ntasks-per-node=2" in script.read_text() for script in scripts)
    assert len(list((sweep / ".submitit").glob("*/*_1_log.out"))) == 2, "2 jobs, each with a task 1"
    jobs = sorted(p.parent for p in sweep.glob("*/.hydra"))
    assert len(jobs) == 2, "one folder per cell, one sweep folder"
    for job in jobs:
        metrics = json.loads((job / "metrics.json").read_text())
        assert f"seed={metrics['seed']}" in (job / ".hydra" / "overrides.yaml").read_text(), "the cell's own config"
        assert metrics["evaluation"]["ranks"] == 2
        assert metrics["train"]["steps"] == 3, "555 queries over 2 ranks of 8, limited to 3 batches"
    assert "2 completed, 0 failed, 0 missing" in (sweep / "results.md").read_text()
    first = {job: (job / "metrics.json").stat().st_mtime_ns for job in jobs}

    again = _run(command, tmp_path, cache_dir, timeout=600)  # rank 1 used to wait in init until killed
    assert again.returncode == 0, again.stderr[-3000:]
    assert {job: (job / "metrics.json").stat().st_mtime_ns for job in jobs} == first, "nothing recomputed"
    rerun_logs = sorted((sweep / ".submitit").glob("*/*_1_log.*"))
    assert len(rerun_logs) >= 4, "task 1 of every job (both launches) logged"
    returned = [p for p in rerun_logs if "rank 0 found this config's finished run" in p.read_text()]
    assert len(returned) == 2, "task 1 of each rerun job returned with rank 0"
    assert "2 completed, 0 failed, 0 missing" in (sweep / "results.md").read_text()
