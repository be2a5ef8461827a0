"""A run's lifecycle in its folder: claim it for the config, run the task, record a failure, report the end."""

from __future__ import annotations

import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from mdr import run_folder
from mdr.data.schema import DataError
from mdr.evaluation.evaluator import remove_if_empty
from mdr.models.progress import duration
from mdr.spec import RunPolicy, Spec
from mdr.tracking import in_multirun, run_name
from mdr.utils import ranks
from mdr.utils.config_identity import canonical_config, config_hash
from mdr.utils.io import atomic_write_json, atomic_write_text
from mdr.utils.logging import get_logger
from mdr.validation import build_spec

log = get_logger(__name__)

Task = Callable[[Spec], dict[str, Any]]  # what a run does with its spec (mdr.pipeline.train / evaluate)
REUSED_FROM = "reused_from"  # added to the metrics returned from an earlier run's folder (written to no file)


def output_dir(spec: Spec) -> Path:
    """The run's folder (``paths.output_dir``: the Hydra output folder unless set)."""
    path = Path(spec.paths.output_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def runs_folder(out: Path) -> Path | None:
    """Hydra's ``outputs/<task>/runs``, where a run without ``hydra.run.dir`` looks for earlier runs; else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.RUN:
        return None
    hydra_cfg = HydraConfig.get()
    if any(item.split("=", 1)[0].lstrip("+~") == "hydra.run.dir" for item in hydra_cfg.overrides.hydra):
        return None
    out = out.resolve()
    return out.parent if out == Path(hydra_cfg.runtime.output_dir).resolve() else None


def headline(payload: dict[str, Any]) -> str:
    """``MRR@100=0.7698`` from a metrics.json payload (the first ``mrr@*`` measure; ``?`` without one)."""
    metrics = payload.get("metrics") or {}
    name = next((key for key in metrics if key.startswith("mrr@")), None)
    return f"{name.upper()}={float(metrics[name]):.4f}" if name else "MRR=?"


def reuse_earlier_run(spec: Spec, wanted: str, out: Path, runs_dir: Path) -> dict[str, Any] | None:
    """The metrics of the newest finished run hashed ``wanted`` under ``runs_dir`` still valid, or None (logged)."""
    runs = run_folder.earlier_runs(wanted, runs_dir, out)
    if not runs:
        return None
    newest = runs[0]
    if newest.metrics is None:
        log.info(
            f"an unfinished run of this config is at {newest.folder} (it holds a resume checkpoint); this command "
            f"starts anew in {out}, hydra.run.dir={newest.folder} resumes that one instead"
        )
        return None
    commit = str((newest.metrics.get("code") or {}).get("commit") or "")[:7]
    found = (
        f"a finished run of this config is at {newest.folder} ({headline(newest.metrics)}, "
        f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(newest.when))}{', commit ' + commit if commit else ''}"
        f"{f'; newest of {sum(run.metrics is not None for run in runs)}' if len(runs) > 1 else ''})"
    )
    weights = {"checkpoint": spec.checkpoint, "model.name_or_path": spec.model.name_or_path}
    changed = run_folder.weights_changed_since(weights, newest.when)
    if changed:
        log.info("%s, but %s changed after it: running again in %s", found, changed, out)
        return None
    if spec.run.on_complete == "fresh":
        log.info("%s; run.on_complete=fresh: running again in %s", found, out)
        return None
    log.info(
        f"{found}: its metrics are returned and nothing is run (run.on_complete=fresh runs again; "
        "hydra.run.dir=<folder> runs in a folder of your choice)"
    )
    return {**newest.metrics, REUSED_FROM: str(newest.folder)}


@dataclass(frozen=True)
class Prepared:
    """A composed config made ready to run: its folder, spec (or the problem refusing it), canonical form and YAML."""

    out: Path
    spec: Spec | None
    problem: DataError | None
    canonical: dict[str, Any]
    yaml: str


def prepare(cfg: DictConfig) -> Prepared:
    """Build the spec; a bad value's problem is kept, raised once its folder is claimed (``failed.json`` names it)."""
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        spec, problem = build_spec(cfg), None
    except DataError as error:
        spec, problem = None, error
    return Prepared(out, spec, problem, canonical_config(cfg), OmegaConf.to_yaml(cfg, resolve=True))


def run_task(cfg: DictConfig, task: Task, runs_dir: Path | None = None) -> dict[str, Any]:
    """:func:`run_prepared` of the composed config."""
    return run_prepared(prepare(cfg), task, runs_dir)


def run_prepared(run: Prepared, task: Task, runs_dir: Path | None = None) -> dict[str, Any]:
    """Claim the folder, write ``config.yaml``, run ``task`` (failed: ``failed.json``), or reuse one in ``runs_dir``."""
    out, spec = run.out, run.spec

    def work() -> dict[str, Any]:
        if run.problem is not None:
            raise run.problem
        return task(spec)  # type: ignore[arg-type]

    if not ranks.is_primary_process():  # a DDP / SLURM rank > 0: rank 0 owns the folder
        return follow_rank_zero(out, work)
    policy = spec.run if spec is not None else RunPolicy()
    told = False  # whether the launch's other ranks know what this rank does (SLURM tasks, torchrun)
    try:
        with run_folder.exclusive(out):
            new = runs_dir is not None and spec is not None and run_folder.is_new(out)
            earlier = reuse_earlier_run(spec, config_hash(run.canonical), out, runs_dir) if new else None  # type: ignore[arg-type]
            if earlier is not None:  # this folder keeps only Hydra's files and this command's log
                ranks.tell_other_ranks(out, "complete")
                return earlier
            state = run_folder.claim(out, run.canonical, policy)
            ranks.tell_other_ranks(out, "run" if state.complete is None else "complete")
            told = True
            if state.complete is not None:
                log.info("%s holds this config's finished run; nothing recomputed (run.on_complete=fresh reruns)", out)
                print(f"[mdr] {out}: already complete (same config), metrics.json kept", flush=True)
                # a kill between metrics.json and the tidying left them: nothing resumes from them any more
                run_folder.remove_weights(out, policy)
                if spec is None or not spec.evaluation.keep_embeddings:
                    remove_if_empty(out / "embeddings")
                return state.complete
            atomic_write_text(out / "config.yaml", run.yaml)
            try:
                result = work()
            except BaseException as error:
                if not isinstance(error, KeyboardInterrupt):
                    record_failure(out, error)
                ranks.tell_other_ranks(out, "failed", f"{type(error).__name__}: {error}")  # none waits on it
                if isinstance(error, SIGTERMException):  # a SystemExit with code 0: say 128 + SIGTERM instead
                    raise SystemExit(128 + signal.SIGTERM) from error
                raise
            (out / "failed.json").unlink(missing_ok=True)
            return result
    except run_folder.RunFolderRefused as error:
        if not told:  # refused before anything ran (another config's results, folder in use)
            ranks.tell_other_ranks(out, "refused", str(error))
        raise


def record_failure(out: Path, error: BaseException) -> None:
    """Log ``error`` and write it with its traceback to ``out/failed.json`` (logging why where that fails)."""
    message = f"{type(error).__name__}: {error}"
    log.error("run failed: %s (recorded in %s)", message, out / "failed.json")
    try:
        atomic_write_json(
            out / "failed.json", {"error": message, "traceback": traceback.format_exc(), "time": time.time()}
        )
    except OSError as unwritten:
        log.error("cannot record the failure in %s: %s", out / "failed.json", unwritten)


def follow_rank_zero(out: Path, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A rank > 0 follows rank 0's decision on the folder: do ``work``, return ``{}`` (complete), or raise rank 0's."""
    decision = ranks.rank_zero_decision(out)
    if decision["decision"] == "complete":
        print(f"[mdr] {out}: rank 0 found this config's finished run; this rank returns", flush=True)  # off rank 0
        return {}
    if decision["decision"] == "refused":
        raise run_folder.RunFolderRefused(f"rank 0 refused {out}: {decision['message']}")
    if decision["decision"] == "failed":
        raise RuntimeError(f"rank 0 failed on {out}: {decision['message']}")
    ranks.watch_rank_zero(out)  # rank 0 failing later ends this rank instead of leaving it in a collective
    return work()


def entry_point(cfg: DictConfig, task: Task) -> float | None:
    """Run ``task`` for a Hydra main; return MRR for sweepers. A failing job of a multirun is recorded and the sweep
    goes on (a single run re-raises); a job refused by its run folder stops the sweep either way."""
    started = time.monotonic()
    try:
        run = prepare(cfg)
        result = run_prepared(run, task, runs_folder(run.out))
    except run_folder.RunFolderRefused:
        raise  # even in a multirun: the folder's old results would otherwise pass for this cell's
    except Exception:
        if not in_multirun():
            raise
        log.exception("job failed; recorded in %s/failed.json, continuing the sweep", cfg.paths.output_dir)
        return None
    metrics = result.get("metrics", {})
    name, mrr = next(((name, value) for name, value in metrics.items() if name.startswith("mrr@")), (None, None))
    if mrr is not None:  # rank 0 of a finished job
        reused = result.get(REUSED_FROM)
        print(
            f"[mdr] done {run_name(run.spec) if run.spec else run.out.name} in {duration(time.monotonic() - started)}: "
            f"{name.upper()}={mrr:.4f} -> {reused or run.out}{' (an earlier run, reused)' if reused else ''}",
            flush=True,
        )
    return mrr
