"""A run folder belongs to the config its ``run_folder.json`` records (canonical form and hash): the same config
resumes or returns its stored metrics, another is refused with the differing keys unless the folder holds no results
or a ``fresh`` policy moves them to ``previous-<time>/``. One process at a time (``flock`` on ``.lock``)."""

from __future__ import annotations

import errno
import json
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from mdr.spec import RunPolicy
from mdr.utils.cache import LockBusy, flocked
from mdr.utils.config_identity import canonical_config, config_differences, config_hash
from mdr.utils.errors import DataError
from mdr.utils.io import atomic_write_json, atomic_write_text, writable
from mdr.utils.logging import get_logger
from mdr.utils.ranks import RANKS_DIR

log = get_logger(__name__)

RECORD_FILE = "run_folder.json"
LOCK_FILE = ".lock"
BOOKKEEPING = ("config.yaml", RECORD_FILE, LOCK_FILE, "failed.json", ".hydra", RANKS_DIR)
"""What a folder may hold without holding results (``*.log`` and ``previous-*`` too)."""


class RunFolderRefused(DataError):
    """The run was refused before it started; nothing was written to the folder (no ``failed.json``)."""


class RunFolderConflict(RunFolderRefused):
    """The run folder was made for another config (or is in use by another process)."""


class RunFolderNotWritable(RunFolderRefused):
    """The run must write to its folder (it is not finished, or ``fresh`` moves it aside) and cannot."""


def require_writable(out: Path, needed: str) -> None:
    """Raise :class:`RunFolderNotWritable` (saying that ``needed``) unless this process can write to ``out``."""
    if not writable(out):
        raise RunFolderNotWritable(
            f"{out} is not writable (its permissions, or a read-only mount), and {needed}: make it writable, or give "
            "another output folder (hydra.run.dir=...)"
        )


class RunFolderDamaged(RunFolderRefused):
    """A bookkeeping file of the run folder (``run_folder.json``, ``config.yaml``, ``metrics.json``) is unreadable."""

    def __init__(self, path: Path, reason: str, remedy: str) -> None:
        super().__init__(f"{path} cannot be read ({reason}); it was cut off or garbled. {remedy}")
        self.path = path
        self.reason = reason


def _remedy(out: Path, policies: str) -> str:
    return (
        f"Rerun with {policies} to move the contents of {out} to {out}/previous-<time>/ and start again, "
        "or use another output folder."
    )


def _read_json(path: Path, remedy: str) -> dict[str, Any]:
    """``path`` as a JSON object, or :class:`RunFolderDamaged` naming it."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunFolderDamaged(path, f"{type(error).__name__}: {error}", remedy) from error
    if not isinstance(value, dict):
        raise RunFolderDamaged(path, f"a JSON object was expected, found {type(value).__name__}", remedy)
    return value


@dataclass
class RunFolderState:
    """What :func:`claim` found: this config's stored metrics, whether it resumes, where ``fresh`` moved it."""

    complete: dict[str, Any] | None = None
    resumed: bool = False
    moved_to: Path | None = None


def _read_record(out: Path) -> dict[str, Any] | None:
    """The folder's record; for folders made before records existed, one built from their config.yaml."""
    record, legacy = out / RECORD_FILE, out / "config.yaml"
    remedy = _remedy(out, "run.on_config_change=fresh or run.on_complete=fresh")
    if record.is_file():
        found = _read_json(record, remedy)
        if not isinstance(found.get("config"), dict):
            raise RunFolderDamaged(record, "it holds no `config` object", remedy)
        return found
    if not legacy.is_file():
        return None
    try:
        config = OmegaConf.to_container(OmegaConf.load(legacy), resolve=False)
    except Exception as error:  # noqa: BLE001 - yaml and omegaconf errors alike: the file is unreadable
        raise RunFolderDamaged(legacy, f"{type(error).__name__}: {error}", remedy) from error
    if not isinstance(config, dict):
        raise RunFolderDamaged(legacy, "it holds no config mapping", remedy)
    return {"config": canonical_config(config)}


def _hydra_owned(out: Path) -> set[str]:
    """Files Hydra has just written into ``out`` for this run (kept in place by ``fresh``)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized() and Path(HydraConfig.get().runtime.output_dir).resolve() == out.resolve():
            return {".hydra", f"{HydraConfig.get().job.name}.log"}
    except (ImportError, ValueError):
        pass
    return set()


def _results(out: Path) -> list[str]:
    """Names in ``out`` that are more than bookkeeping (results, checkpoints, logs of training)."""
    names = (path.name for path in out.iterdir())
    return sorted(n for n in names if n not in BOOKKEEPING and not n.startswith("previous-") and not n.endswith(".log"))


def _move_aside(out: Path) -> Path:
    """Move everything but Hydra's files of this run and earlier ``previous-*`` folders to ``previous-<time>``."""
    require_writable(out, "run.on_*=fresh moves its contents to previous-<time>/")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    names = (f"previous-{stamp}{f'-{n}' if n > 1 else ''}" for n in count(1))
    target = next(out / name for name in names if not (out / name).exists())
    target.mkdir()
    keep = _hydra_owned(out) | {LOCK_FILE}
    for entry in sorted(p for p in out.iterdir() if p.name not in keep and not p.name.startswith("previous-")):
        entry.rename(target / entry.name)
    return target


def _completed_payload(out: Path) -> dict[str, Any] | None:
    """The stored metrics when the folder's last outcome is a success (metrics.json newer than failed.json)."""
    metrics, failed = out / "metrics.json", out / "failed.json"
    if not metrics.is_file() or (failed.is_file() and failed.stat().st_mtime_ns >= metrics.stat().st_mtime_ns):
        return None
    return _read_json(metrics, _remedy(out, "run.on_complete=fresh"))


def _write_record(out: Path, canonical: dict[str, Any], earlier: dict[str, Any] | None = None) -> None:
    require_writable(out, "this command's run is not finished there, so it must write there (its record, results)")
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    hydra_files = sorted((out / ".hydra").glob("*.yaml")) if ".hydra" in _hydra_owned(out) else []  # this run's
    atomic_write_json(
        out / RECORD_FILE,
        {
            "config_hash": config_hash(canonical),
            "created": (earlier or {}).get("created") or now,
            "run_id": (earlier or {}).get("run_id") or uuid.uuid4().hex[:16],
            "updated": now,
            "config": canonical,
            "hydra_files": {path.name: path.read_text(encoding="utf-8") for path in hydra_files},
        },
    )


def claim(out: Path, canonical: dict[str, Any], policy: RunPolicy) -> RunFolderState:
    """Check ``out`` against the ``canonical`` config and record it there (the module's rules), or raise
    :class:`RunFolderConflict` (another config's results) / :class:`RunFolderDamaged` (unreadable, no ``fresh``)."""
    on_change, on_complete = policy.on_config_change, policy.on_complete
    state = RunFolderState()
    hydra_running = ".hydra" in _hydra_owned(out)  # Hydra already overwrote .hydra with this run's files

    def restore(folder: Path) -> Path:
        """Put back the recorded ``.hydra`` files Hydra overwrote (only those that differ: read-only folders stay)."""
        for name, text in (((record or {}).get("hydra_files") or {}) if hydra_running else {}).items():
            path = folder / ".hydra" / name
            with suppress(OSError, ValueError):  # missing or unreadable: written
                if path.read_text(encoding="utf-8") == text:
                    continue
            atomic_write_text(path, text)
        return folder

    try:
        record = _read_record(out)
    except RunFolderDamaged as error:
        if not _results(out):  # bookkeeping only (e.g. a run that failed validation): nothing to lose
            log.warning(
                "%s cannot be read (%s); %s holds no results: recording this config", error.path, error.reason, out
            )
        elif "fresh" not in (on_change, on_complete):
            raise
        else:
            state.moved_to = _move_aside(out)  # its config is unknown: either fresh policy applies
            log.warning(
                f"{error.path} cannot be read ({error.reason}); fresh: the contents of {out} moved to {state.moved_to}"
            )
        _write_record(out, canonical)
        return state
    if record is not None and config_hash(record["config"]) != config_hash(canonical):
        differences = config_differences(record["config"], canonical)
        results = _results(out)
        if not results:
            log.info("%s held no results of its earlier config; recording the new one", out)
        elif on_change == "fresh":
            state.moved_to = restore(_move_aside(out))
            log.warning("run.on_config_change=fresh: earlier contents of %s moved to %s", out, state.moved_to)
        else:
            restore(out)
            more = [f"... and {len(differences) - 30} more"] if len(differences) > 30 else []
            shown = "\n  ".join(differences[:30] + more)
            raise RunFolderConflict(
                f"{out} holds a run of another config ({', '.join(results)}); differing keys (recorded -> now):\n"
                f"  {shown}\n"
                "Use another output folder, or run.on_config_change=fresh to move the old contents to "
                f"{out}/previous-<time>/ and start again."
            )
    elif record is not None:
        try:
            complete = _completed_payload(out)
        except RunFolderDamaged as error:
            if on_complete != "fresh":
                restore(out)
                raise
            log.warning("%s cannot be read (%s); run.on_complete=fresh moves it aside", error.path, error.reason)
            complete = {}  # moved aside below like a finished run
        if complete is not None and on_complete == "fresh":
            state.moved_to = restore(_move_aside(out))
            log.warning("run.on_complete=fresh: the finished run in %s moved to %s", out, state.moved_to)
        elif complete is not None:
            restore(out)
            state.complete = complete
            return state
        else:
            state.resumed = True
    _write_record(out, canonical, record if state.resumed else None)
    return state


def run_id(out: Path) -> str | None:
    """The id of the run this folder holds (kept on resume, new after ``fresh``); None before :func:`claim`."""
    record = _read_record(out)
    value = record.get("run_id") if record else None
    return str(value) if value else None


def is_new(out: Path) -> bool:
    """True when ``out`` holds no run yet: no config record (an unreadable one is left to :func:`claim`), no results."""
    try:
        return _read_record(out) is None and not _results(out)
    except RunFolderDamaged:
        return False


@dataclass(frozen=True)
class EarlierRun:
    """A run of the same config in ``folder``: ``metrics`` (None: unfinished, with a checkpoint), ``when`` (epoch s)."""

    folder: Path
    metrics: dict[str, Any] | None
    when: float


def earlier_runs(wanted: str, runs_dir: Path, exclude: Path) -> list[EarlierRun]:
    """Runs hashed ``wanted`` in ``runs_dir`` but ``exclude``: finished, then checkpointed, each newest first."""
    runs: list[EarlierRun] = []
    skip = exclude.resolve()
    for folder in sorted(runs_dir.iterdir()) if runs_dir.is_dir() else []:
        if not folder.is_dir() or folder.resolve() == skip:
            continue
        try:
            record = _read_record(folder)
            if record is None or config_hash(record["config"]) != wanted:
                continue
            payload = _completed_payload(folder)
        except RunFolderDamaged as error:
            log.info("not a candidate for reuse: %s", error)
            continue
        last = folder / "checkpoints" / "last.ckpt"
        if payload is not None:
            runs.append(EarlierRun(folder, payload, (folder / "metrics.json").stat().st_mtime))
        elif last.exists():
            runs.append(EarlierRun(folder, None, last.stat().st_mtime))
    return sorted(runs, key=lambda run: (run.metrics is None, -run.when))


def weights_changed_since(folders: dict[str, str | None], when: float) -> str | None:
    """``key=path`` of a weights folder (``folders``: key -> path) holding a file changed after ``when``, or None."""
    for key, folder in ((key, Path(str(value))) for key, value in folders.items() if value):
        if folder.is_dir() and any(path.is_file() and path.stat().st_mtime > when for path in folder.iterdir()):
            return f"{key}={folder}"
    return None


@contextmanager
def exclusive(out: Path) -> Iterator[None]:
    """Hold ``<out>/.lock`` for the block (a second process fails at once; without ``flock``: a warning, unlocked); a
    folder this process cannot write is locked read-only, or not at all without a lock file (claim refuses it)."""
    try:
        handle = open(out / LOCK_FILE, "a+" if writable(out) else "r")
    except OSError as error:
        if error.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT):
            raise
        try:
            handle = open(out / LOCK_FILE)
        except FileNotFoundError:
            yield
            return
    with handle, ExitStack() as held:
        try:
            refused = held.enter_context(flocked(handle, wait=False))
        except LockBusy as error:
            raise RunFolderConflict(f"{out} is in use by another process (it holds {out / LOCK_FILE})") from error
        if refused is not None:
            log.warning("cannot lock %s (%s); going on without a lock", out, refused)
        yield


def _tree_bytes(folder: Path) -> int:
    """Bytes of the regular files under ``folder`` (links not followed, so ``last.ckpt`` counts once)."""
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file() and not path.is_symlink())


def _remove(folder: Path, why: str) -> int:
    """Delete ``folder``; the bytes freed (0 with a warning where it cannot be: the run's results are written)."""
    try:
        freed = _tree_bytes(folder)
        shutil.rmtree(folder)
    except OSError as error:
        log.warning("could not remove %s (%s); the run's results are complete", folder, error)
        return 0
    log.info(f"removed {folder} ({freed / 1e9:.2f} GB): {why}")
    return freed


def remove_checkpoints(folder: Path, encoder: Path, keep: bool = False) -> int:
    """Delete ``<folder>/checkpoints`` (~3x the encoder) once ``encoder`` holds its weights, unless ``keep``."""
    from mdr.models.bi_encoder import SETTINGS_FILE  # torch: kept off this module's import

    checkpoints = folder / "checkpoints"
    if keep or not checkpoints.is_dir():
        return 0
    if not (encoder / SETTINGS_FILE).is_file():
        log.info("keeping %s: no saved encoder at %s holds the trained weights", checkpoints, encoder)
        return 0
    return _remove(checkpoints, f"training is over and {encoder} holds the weights (run.keep_checkpoints keeps it)")


def remove_weights(folder: Path, policy: RunPolicy) -> int:
    """A finished run's tidying: its resume checkpoints, then its encoder if ``run.keep_encoder=false``; bytes freed."""
    encoder = folder / "encoder"
    freed = remove_checkpoints(folder, encoder, policy.keep_checkpoints)
    if policy.keep_encoder or not encoder.is_dir():
        return freed
    return freed + _remove(encoder, "run.keep_encoder=false keeps only the results")


@dataclass(frozen=True)
class CheckpointPosition:
    """A resume checkpoint's ``epochs`` finished and ``steps`` done; ``mid_epoch``: ``batches_done`` into the next."""

    epochs: int
    steps: int
    mid_epoch: bool
    batches_done: int = 0

    def describe(self, max_epochs: int | None) -> str:
        """Where training resumes, epochs counted from 1: ``epoch 2 of 3 after its first 5 batches, step 9``."""
        known = max_epochs is not None and max_epochs > 0
        of = f" of {max_epochs}" if known else ""
        if self.mid_epoch:
            return f"epoch {self.epochs + 1}{of} after its first {self.batches_done} batch(es), step {self.steps}"
        done = " (nothing left to train)" if known and self.epochs >= max_epochs else ""
        return f"{self.epochs}{of} epoch(s) done, step {self.steps}{done}"


def checkpoint_position(path: Path) -> CheckpointPosition | None:
    """Where the Lightning checkpoint ``path`` stands (memory-mapped: no tensor is read), or None if unreadable."""
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as error:  # noqa: BLE001 - a damaged checkpoint is reported by Lightning itself
        log.warning("cannot read the epoch of %s (%s)", path, error)
        return None
    data = checkpoint.get("RetrievalDataModule") or {}
    epoch, steps = int(checkpoint["epoch"]), int(checkpoint.get("global_step", 0))
    if data.get("mid_epoch", False):
        return CheckpointPosition(epoch, steps, True, int(data.get("batches_done", 0)))
    return CheckpointPosition(epoch + 1, steps, False)
