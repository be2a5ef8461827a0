"""Which process of a distributed job this is; the ranks a launcher starts (SLURM, torchrun) follow rank 0's decision
on the run folder (``run``, ``complete``, ``refused``, ``failed``) in ``<folder>/.ranks/<launch>.json``."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from mdr.utils.io import atomic_write_json


def cuda_device(environ: Mapping[str, str] | None = None) -> str:
    """``cuda:<local rank mod visible GPUs>`` (``LOCAL_RANK``, else ``SLURM_LOCALID``, else 0), or ``cpu``."""
    import torch

    env = os.environ if environ is None else environ
    rank = next((int(env[name]) for name in ("LOCAL_RANK", "SLURM_LOCALID") if env.get(name, "").strip()), 0)
    return f"cuda:{rank % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu"


RANKS_DIR = ".ranks"
RANK_WAIT_S = 900.0  # how long a rank > 0 waits for rank 0's decision


def is_primary_process() -> bool:
    """True unless this is a non-zero rank of a distributed job (DDP child, SLURM task, node)."""
    return all(int(os.environ.get(name, "0") or 0) == 0 for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def launch_key(environ: dict[str, str] | None = None) -> str | None:
    """What a launch's ranks share (SLURM job, step and requeue; torchrun's id); None where Lightning starts them."""
    env = os.environ if environ is None else environ
    if env.get("SLURM_JOB_ID") and env.get("SLURM_PROCID", "").strip():
        step = env.get("SLURM_STEP_ID") or "batch"
        return f"slurm-{env['SLURM_JOB_ID']}-{step}-{env.get('SLURM_RESTART_COUNT') or 0}"
    if env.get("TORCHELASTIC_RUN_ID"):
        return f"torchrun-{env['TORCHELASTIC_RUN_ID']}"
    return None


def tell_other_ranks(out: Path, decision: str, message: str = "") -> None:
    """Rank 0: record what it does with ``out`` for the launch's other ranks."""
    key = launch_key()
    if key is not None:
        atomic_write_json(out / RANKS_DIR / f"{key}.json", {"decision": decision, "message": message})


def watch_rank_zero(out: Path, interval_s: float = 2.0) -> threading.Thread | None:
    """A rank > 0: a daemon thread ending this process (exit 1) once rank 0 records a failure; None without a key."""
    key = launch_key()
    if key is None:
        return None
    path = out / RANKS_DIR / f"{key}.json"

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            try:
                decision = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if decision.get("decision") == "failed":
                message = decision.get("message", "")
                print(f"[mdr] rank 0 failed ({message}); this rank stops", file=sys.stderr, flush=True)
                os._exit(1)

    thread = threading.Thread(target=watch, name="mdr-watch-rank-zero", daemon=True)
    thread.start()
    return thread


def rank_zero_decision(out: Path, timeout_s: float | None = None) -> dict[str, str]:
    """A rank > 0: rank 0's decision on ``out`` (``run`` without a launch key); TimeoutError after ``timeout_s``."""
    key = launch_key()
    if key is None:
        return {"decision": "run", "message": ""}
    path = out / RANKS_DIR / f"{key}.json"
    limit = RANK_WAIT_S if timeout_s is None else timeout_s
    deadline = time.monotonic() + limit
    while not path.is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"rank 0 of launch {key} recorded no decision on {out} within {limit:.0f} s ({path} is missing): "
                "it failed before claiming the folder; see its log"
            )
        time.sleep(0.5)
    return json.loads(path.read_text(encoding="utf-8"))
