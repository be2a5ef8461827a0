"""The install's faiss / torch builds: one faiss build per extra, and the check that a venv suits a GPU install."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mdr.utils import environment
from mdr.utils.environment import Installed, install_problems, torch_problem

from conftest import ROOT


def _faiss(requirements: list[str]) -> set[str]:
    return {name for r in requirements if (name := re.split(r"[=<>\[; ]", r, maxsplit=1)[0]).startswith("faiss")}


def test_no_install_of_mdr_gets_two_faiss_builds() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not _faiss(project["dependencies"]), "faiss must come from the cpu or gpu extra, not the core"
    extras = project["optional-dependencies"]
    assert _faiss(extras["cpu"]) == {"faiss-cpu"} and _faiss(extras["gpu"]) == {"faiss-gpu"}
    for name, requirements in extras.items():
        assert len(_faiss(requirements)) <= 1, f"extra {name} installs two faiss builds"


def test_setup_script_picks_one_faiss_extra() -> None:
    script = (ROOT / "scripts/setup.sh").read_text()
    assert "--gpu" in script and "EXTRAS=${EXTRAS:+$EXTRAS,}$WANT" in script
    assert "uninstall -y -q faiss-cpu faiss-gpu" in script  # a venv switching builds loses both, then gets one


@pytest.mark.parametrize(
    ("version", "cuda", "broken"),
    [("2.13.0+cpu", None, True), ("2.13.0", "13.0", True), ("2.13.0+cu128", "12.8", False), (None, None, True)],
)
def test_a_reused_cpu_venv_is_refused_for_a_gpu_install(version: str | None, cuda: str | None, broken: bool) -> None:
    assert (torch_problem("gpu", version, cuda) is not None) is broken
    assert torch_problem("cpu", version, cuda) is None  # the CPU install pins torch itself, as before


def test_mixed_cuda_majors_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(environment.MIXED_CUDA_ENV, "1")
    assert torch_problem("gpu", "2.13.0", "13.0") is None


GOOD_GPU = Installed("2.13.0+cu128", "12.8", ("faiss-gpu",), 12, 8, 8)


def test_install_problems() -> None:
    assert install_problems("gpu", GOOD_GPU) == []
    assert install_problems("cpu", Installed("2.13.0+cpu", None, ("faiss-cpu",), None, 0, 0)) == []
    both = install_problems("gpu", Installed("2.13.0+cu128", "12.8", ("faiss-cpu", "faiss-gpu"), 12, 8, 0))
    assert any("2 faiss builds" in p for p in both) and any("faiss sees 0 GPUs, torch 8" in p for p in both)
    assert any(
        "faiss-gpu is not installed" in p
        for p in install_problems("gpu", GOOD_GPU.__class__("2.13.0+cu128", "12.8", ("faiss-cpu",), None, 8, 0))
    )
    assert any(
        "no CUDA device" in p
        for p in install_problems("gpu", Installed("2.13.0+cu128", "12.8", ("faiss-gpu",), 12, 0, 0))
    )
    assert any(
        "two CUDA stacks" in p for p in install_problems("gpu", Installed("2.13.0", "13.0", ("faiss-gpu",), 12, 8, 8))
    )
    assert any(
        "faiss does not import" in p for p in install_problems("cpu", Installed("2.13.0", None, (), None, 0, None))
    )


def test_faiss_cuda_major_read_from_its_requirements(monkeypatch: pytest.MonkeyPatch) -> None:
    requires = ["numpy>=1.25", "nvidia-cuda-runtime-cu12<13,>=12.6", "nvidia-cublas-cu12<13,>=12.6"]
    monkeypatch.setattr(environment.importlib.metadata, "requires", lambda name: requires)
    assert environment._cuda_major_of("faiss-gpu") == 12


def test_this_venv_passes_the_cpu_check() -> None:
    found = environment.installed()
    assert found.faiss_builds == ("faiss-cpu",), "this test venv should hold faiss-cpu alone"
    assert environment.main(["check", "--want", "cpu"]) == 0
    assert environment.device_name("cpu")


def test_metrics_json_says_where_training_and_search_ran(make_cfg) -> None:  # noqa: ANN001
    import json

    from mdr.lifecycle import run_task
    from mdr.pipeline import train

    cfg = make_cfg()
    run_task(cfg, train)
    metrics = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    cpu = environment.cpu_name()
    assert metrics["train"]["device"] == cpu and metrics["train"]["accelerator"] == "cpu"
    assert metrics["train"]["devices"] == 1 and metrics["train"]["precision"] in ("32-true", "bf16-mixed")
    assert metrics["evaluation"]["device"] == cpu and metrics["evaluation"]["faiss"] == "cpu"
    assert metrics["evaluation"]["faiss_version"].endswith("(faiss-cpu)")
    assert "autocast" in metrics["evaluation"]


def test_auto_faiss_on_a_cpu_build_says_so(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import faiss

    from mdr.evaluation import search

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0, raising=False)
    with caplog.at_level("WARNING"):
        assert search.search_device("auto", cuda_devices=2) == "cpu"
    assert "torch sees 2 CUDA device(s) but faiss none" in caplog.text
    with pytest.raises(RuntimeError, match="faiss_gpu=true"):
        search.search_device(True)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 2, raising=False)
    assert search.search_device("auto") == "gpu" and search.search_device(False) == "cpu"


FAKE_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "$FAKE_LOG"
case "$*" in
  "-m pip show -q faiss-cpu") [ "${FAKE_FAISS:-}" = cpu ]; exit $? ;;
  "-m pip show -q faiss-gpu") [ "${FAKE_FAISS:-}" = gpu ]; exit $? ;;
  "-m mdr.utils.environment torch --want gpu") exit "${FAKE_TORCH_BAD:-0}" ;;
  "-c from mdr.utils.environment import TORCH_CUDA_INDEX as i; print(i)") echo https://torch.example/cu128 ;;
esac
exit 0
"""


def _setup(tmp_path: Path, *args: str, **env: str) -> list[str]:
    """Run scripts/setup.sh against a fake .venv python that records its calls; the calls."""
    import os
    import shutil
    import subprocess

    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts/setup.sh", tmp_path / "scripts/setup.sh")
    fake = tmp_path / ".venv/bin/python"
    fake.parent.mkdir(parents=True)
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    log = tmp_path / "calls.log"
    full_env = {**os.environ, "FAKE_LOG": str(log), **env}
    if "MDR_EXTRAS" not in env:
        full_env.pop("MDR_EXTRAS", None)
    subprocess.run(["bash", str(tmp_path / "scripts/setup.sh"), *args], check=True, env=full_env, capture_output=True)
    return log.read_text().splitlines()


def test_cpu_setup_installs_as_before_plus_the_cpu_extra(tmp_path: Path) -> None:
    calls = _setup(tmp_path)
    assert "-m pip install -q torch==2.13.0" in calls
    assert "-m pip install -q -e .[dev,pyserini,me5,thai,cpu]" in calls
    assert "-m mdr.utils.environment check --want cpu" in calls
    assert not any("uninstall" in call for call in calls)


def test_gpu_setup_replaces_a_reused_cpu_venv(tmp_path: Path) -> None:
    calls = _setup(tmp_path, "--gpu", FAKE_TORCH_BAD="1", FAKE_FAISS="cpu")  # torch 2.13.0+cpu, faiss-cpu installed
    assert "-m pip uninstall -y -q torch" in calls
    assert any(c.startswith("-m pip install -q torch==2.13.0 --index-url https://torch.example/cu128") for c in calls)
    assert "-m pip uninstall -y -q faiss-cpu faiss-gpu" in calls
    assert calls.index("-m pip uninstall -y -q faiss-cpu faiss-gpu") < calls.index(
        "-m pip install -q -e .[dev,pyserini,me5,thai,gpu]"
    )
    assert calls[-2] == "-m mdr.utils.environment check --want gpu"


def test_gpu_setup_keeps_a_good_cuda_torch_and_gpu_via_extras(tmp_path: Path) -> None:
    calls = _setup(tmp_path, MDR_EXTRAS="dev,gpu", FAKE_FAISS="gpu")
    assert not any("torch==2.13.0" in call for call in calls), "a CUDA 12 torch is kept"
    assert "-m pip install -q -e .[dev,gpu]" in calls and not any("uninstall" in call for call in calls)
