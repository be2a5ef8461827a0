"""A run's lifecycle in its folder: claim it for the config, run the task, record a failure, report the end."""

from __future__ import annotations

import signal
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from mdr import run_folder
from mdr.evaluation.evaluator import remove_if_empty
from mdr.models.progress import duration
from mdr.tracking import in_multirun, run_name
from mdr.utils.io import atomic_write_json, atomic_write_text
from mdr.utils.logging import get_logger

log = get_logger(__name__)


def output_dir(cfg: DictConfig) -> Path:
    """The run's folder (the Hydra output folder unless ``paths.output_dir`` is set)."""
    path = Path(cfg.paths.output_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_task(cfg: DictConfig, task: Callable[[DictConfig], dict[str, Any]]) -> dict[str, Any]:
    """Claim the run folder for ``cfg``, write the resolved config, run ``task``; on failure leave ``failed.json``.

    ``metrics.json`` is written by the task itself, atomically, only once everything succeeded. The folder
    belongs to one config (:mod:`mdr.run_folder`): another config is refused before anything runs (and
    leaves no ``failed.json``), the same config resumes, and a finished run returns its stored metrics.
    """
    out = output_dir(cfg)
    if not run_folder.is_primary_process():  # a DDP / SLURM rank > 0: rank 0 owns the folder
        return follow_rank_zero(out, task, cfg)
    told = False  # whether the launch's other ranks know what this rank does (SLURM tasks, torchrun)
    try:
        with run_folder.exclusive(out):
            state = run_folder.claim(cfg, out)
            run_folder.tell_other_ranks(out, "run" if state.complete is None else "complete")
            told = True
            if state.complete is not None:
                log.info("%s holds this config's finished run; nothing recomputed (run.on_complete=fresh reruns)", out)
                print(f"[mdr] {out}: already complete (same config), metrics.json kept", flush=True)
                # a kill between metrics.json and the tidying left them: nothing resumes from them any more
                run_folder.remove_weights(cfg, out)
                if not OmegaConf.select(cfg, "evaluation.keep_embeddings", default=False):
                    remove_if_empty(out / "embeddings")
                return state.complete
            atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
            try:
                result = task(cfg)
            except BaseException as error:
                if not isinstance(error, KeyboardInterrupt):
                    atomic_write_json(
                        out / "failed.json",
                        {
                            "error": f"{type(error).__name__}: {error}",
                            "traceback": traceback.format_exc(),
                            "time": time.time(),
                        },
                    )
                if isinstance(error, SIGTERMException):  # a SystemExit with code 0: say 128 + SIGTERM instead
                    raise SystemExit(128 + signal.SIGTERM) from error
                raise
            (out / "failed.json").unlink(missing_ok=True)
            return result
    except run_folder.RunFolderRefused as error:
        if not told:  # refused before anything ran (another config's results, folder in use)
            run_folder.tell_other_ranks(out, "refused", str(error))
        raise


def follow_rank_zero(out: Path, task: Callable[[DictConfig], dict[str, Any]], cfg: DictConfig) -> dict[str, Any]:
    """A rank > 0 takes rank 0's decision on the run folder: run ``task``, return ``{}`` (already complete), or
    raise what rank 0 raised; it neither locks nor records (:func:`mdr.run_folder.rank_zero_decision`).

    Raises:
        RunFolderRefused: rank 0 refused the folder.
    """
    decision = run_folder.rank_zero_decision(out)
    if decision["decision"] == "complete":
        print(f"[mdr] {out}: rank 0 found this config's finished run; this rank returns", flush=True)  # off rank 0
        return {}
    if decision["decision"] == "refused":
        raise run_folder.RunFolderRefused(f"rank 0 refused {out}: {decision['message']}")
    return task(cfg)


def entry_point(cfg: DictConfig, task: Callable[[DictConfig], dict[str, Any]]) -> float | None:
    """Run ``task`` for a Hydra main; return MRR for sweepers (MRR@100; MRR@d below ``evaluation.depth=100``).

    In a multirun a failing job is recorded (``failed.json``) and logged, and the sweep goes on with the
    next job; the aggregation lists it. A single run re-raises, so the command exits non-zero. A job refused
    by its run folder (another config's results are there) stops the sweep in either case.
    """
    started = time.monotonic()
    try:
        result = run_task(cfg, task)
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
        print(
            f"[mdr] done {run_name(cfg)} in {duration(time.monotonic() - started)}: {name.upper()}"
            f"={mrr:.4f} -> {cfg.paths.output_dir}",
            flush=True,
        )
    return mrr
