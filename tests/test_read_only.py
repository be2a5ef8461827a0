"""A finished run folder that cannot be written (archived read-only, a read-only mount): rerunning its command
returns its metrics, with at most a warning that the log file cannot be written; a run that must write there
stops with an error naming the folder (issue 26 item 8).

Root ignores file modes, so the in-process tests report the folder unwritable through ``os.access`` and check that
nothing in it changed; the end-to-end test runs the rerun as ``nobody`` where the tests run as root."""

from __future__ import annotations

import json
import logging
import logging.config
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import mdr.utils.io
from mdr.lifecycle import run_task
from mdr.run_folder import RunFolderNotWritable

from conftest import DATA_DIR, ROOT


def _snapshot(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every entry under ``folder``: (mode, mtime, content) — what a write of any kind would change."""
    return {
        str(path.relative_to(folder)): (
            path.stat().st_mode,
            path.stat().st_mtime_ns,
            path.read_bytes() if path.is_file() else b"",
        )
        for path in sorted([folder, *folder.rglob("*")])
    }


def _read_only(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """``folder`` and everything under it reads as not writable (``os.access``), as for a user without rights."""
    access = os.access

    def no_write_under(path: Any, mode: int, *args: Any, **kwargs: Any) -> bool:
        inside = Path(path).resolve().is_relative_to(folder.resolve())
        return False if inside and mode & os.W_OK else access(path, mode, *args, **kwargs)

    monkeypatch.setattr(mdr.utils.io.os, "access", no_write_under)


@pytest.fixture
def hydra_job_logging() -> Iterator[Callable[[Path], Any]]:
    """The composed ``hydra`` node for a run in a given folder; the logging setup is restored afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level

    def hydra_node(out: Path) -> Any:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("evaluate", return_hydra_config=True)
        cfg.hydra.runtime.output_dir = str(out)
        cfg.hydra.job.name = "evaluate"
        return cfg.hydra

    yield hydra_node
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_the_log_file_of_a_read_only_folder_is_a_warning_not_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], hydra_job_logging: Any
) -> None:
    """Hydra configured its file handler before the run was looked at: 'ValueError: Unable to configure handler
    'file''. Now the log goes to the console and stderr says the file cannot be written."""
    hydra = hydra_job_logging(tmp_path)
    log_file = tmp_path / "evaluate.log"

    def refused(self: logging.FileHandler) -> Any:
        raise PermissionError(13, "Permission denied", self.baseFilename)

    monkeypatch.setattr(logging.FileHandler, "_open", refused)
    logging.config.dictConfig(OmegaConf.to_container(hydra.job_logging, resolve=True))
    logging.getLogger("mdr.test").warning("still logged to the console")
    captured = capsys.readouterr()
    assert f"cannot write the log file {log_file} (Permission denied): the log goes to the console only" in captured.err
    assert "still logged to the console" in captured.out and not log_file.exists()


def test_hydra_records_no_config_in_a_folder_it_cannot_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``hydra.output_subdir`` is ``.hydra`` unless the run folder (or its ``.hydra``) cannot be written: Hydra then
    writes no ``.hydra/*.yaml`` (it raised PermissionError before the run was looked at)."""
    from mdr.utils.instantiate import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", return_hydra_config=True)
    out = tmp_path / "run"
    cfg.hydra.runtime.output_dir = str(out)
    assert cfg.hydra.output_subdir == ".hydra"  # a new folder
    (out / ".hydra").mkdir(parents=True)
    (out / ".hydra" / "config.yaml").write_text("seed: 0\n")
    assert cfg.hydra.output_subdir == ".hydra"
    _read_only(monkeypatch, out)
    assert cfg.hydra.output_subdir is None


def _finished(make_cfg: Any) -> tuple[Any, Path, dict[str, Any]]:
    cfg = make_cfg()
    out = Path(cfg.paths.output_dir)

    def finishes(cfg: Any) -> dict[str, Any]:
        payload = {"metrics": {"mrr@100": 0.5}}
        mdr.utils.io.atomic_write_json(out / "metrics.json", payload)
        return payload

    return cfg, out, run_task(cfg, finishes)


def _never(cfg: Any) -> dict[str, Any]:
    raise AssertionError("the finished run was run again")


def test_a_finished_read_only_folder_returns_its_metrics_untouched(
    make_cfg: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, out, done = _finished(make_cfg)
    (out / ".lock").unlink()  # a folder archived without it: nothing to lock, nothing written
    before = _snapshot(out)
    _read_only(monkeypatch, out)
    assert run_task(cfg, _never) == done
    assert _snapshot(out) == before


def test_a_run_that_must_write_to_a_read_only_folder_names_it(make_cfg: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unfinished (a failure recorded after its metrics): it must run, so it must write; old code wrote anyway, or
    as a user without rights failed on the first temporary file with a bare PermissionError."""
    cfg, out, _ = _finished(make_cfg)
    (out / "failed.json").write_text(json.dumps({"error": "killed"}))
    before = _snapshot(out)
    with monkeypatch.context() as patch:
        _read_only(patch, out)
        with pytest.raises(RunFolderNotWritable, match=rf"{out} is not writable .*this command's run is not finish"):
            run_task(cfg, _never)
    assert _snapshot(out) == before
    (out / "failed.json").unlink()  # finished again, but run.on_complete=fresh must move it aside
    before = _snapshot(out)
    _read_only(monkeypatch, out)
    with pytest.raises(RunFolderNotWritable, match=rf"{out} is not writable .*previous-<time>"):
        run_task(make_cfg("run.on_complete=fresh"), _never)
    assert _snapshot(out) == before


def _without_rights() -> list[str]:
    """A command prefix under which file modes apply: as root, a new user namespace (``unshare --user``: root's
    files stay its own but it loses the right to override their modes); otherwise none."""
    if os.geteuid() != 0:
        return []
    probe = subprocess.run(["unshare", "--user", "true"], capture_output=True) if shutil.which("unshare") else None
    if probe is None or probe.returncode != 0:
        pytest.skip("running as root without 'unshare --user': file modes would not apply")
    return ["unshare", "--user"]


@pytest.mark.slow  # two evaluate.py processes
def test_through_hydra_a_finished_read_only_run_returns_its_metrics(
    tmp_path: Path, cache_dir: Path, tiny_model: Path
) -> None:
    """The command of a finished run, rerun on its read-only folder: exit 0, 'already complete', the folder as it
    was. Old code: 'ValueError: Unable to configure handler 'file'' (then Hydra's .hydra/*.yaml, then the lock)."""
    out = tmp_path / "eval"
    env = {**os.environ, "MDR_DATA_DIR": str(DATA_DIR), "MDR_CACHE_DIR": str(cache_dir), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, str(ROOT / "evaluate.py"), "data=demo", "language=th", "logger.wandb.enabled=false"]
    command.append(f"hydra.run.dir={out}")
    first = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    prefix = _without_rights()
    for path in [*out.rglob("*"), out]:  # chmod -R a-w
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        before = _snapshot(out)
        again = subprocess.run([*prefix, *command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "already complete" in again.stdout
        assert f"cannot write the log file {out / 'evaluate.log'}" in again.stderr
        assert _snapshot(out) == before and json.loads((out / "metrics.json").read_text()) == metrics
    finally:
        for path in [out, *out.rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
