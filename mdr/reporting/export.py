"""Copy a sweep's light files (no weights or run files) elsewhere, e.g. into docs/results/<name> to commit them;
copied back as the sweep folder, its finished jobs are not rerun.

    python -m mdr.reporting.export outputs/hardneg_sweep/multiruns/<time> docs/results/<name>
"""

from __future__ import annotations

import argparse
import gzip
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

from mdr.reporting.collect import job_outcome, resolve_sweep_dir
from mdr.utils.io import atomic_write_bytes

log = logging.getLogger(__name__)

JOB_FILES = (".hydra/config.yaml", ".hydra/overrides.yaml", "run_folder.json", "config.yaml")  # where there


@dataclass
class Exported:
    """What :func:`export` copied: job folders by outcome, files and bytes written."""

    completed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    files: int = 0
    bytes: int = 0


def gzip_bytes(data: bytes) -> bytes:
    """``data`` gzipped without a file name or time in the header, so the same file always packs the same."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as packed:
        packed.write(data)
    return buffer.getvalue()


def export(sweep_dir: str | Path, dest: str | Path) -> Exported:
    """Copy the light files of ``sweep_dir``'s jobs into ``dest``; a job folder without an outcome is skipped."""
    root = resolve_sweep_dir(sweep_dir)
    target = Path(dest)
    if target.resolve() == root.resolve():
        raise ValueError(f"{target}: the destination is the sweep folder itself")
    done = Exported()

    def put(path: Path, data: bytes) -> None:
        atomic_write_bytes(path, data)
        done.files += 1
        done.bytes += len(data)

    if (root / "multirun.yaml").is_file():
        put(target / "multirun.yaml", (root / "multirun.yaml").read_bytes())
    for job in sorted(path.parent for path in root.glob("*/.hydra")):
        outcome = job_outcome(job)
        if outcome == "missing":
            done.skipped.append(job.name)
            continue
        out = target / job.name
        for name in JOB_FILES:
            if (job / name).is_file():
                put(out / name, (job / name).read_bytes())
        if outcome == "failed":
            put(out / "failed.json", (job / "failed.json").read_bytes())
            done.failed.append(job.name)
            continue
        put(out / "metrics.json", (job / "metrics.json").read_bytes())
        for table in sorted((job / "per_query").glob("*.tsv")):
            put(out / "per_query" / f"{table.name}.gz", gzip_bytes(table.read_bytes()))
        for table in sorted((job / "per_query").glob("*.tsv.gz")):
            put(out / "per_query" / table.name, table.read_bytes())
        done.completed.append(job.name)
    log.info("%s -> %s: %d file(s), %.1f MB, %d skipped", root, target, done.files, done.bytes / 1e6, len(done.skipped))
    return done


def main(argv: list[str] | None = None) -> int:
    """CLI: export, print what was copied."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir")
    parser.add_argument("dest")
    args = parser.parse_args(argv)
    done = export(args.sweep_dir, args.dest)
    skipped = f"; skipped (no outcome yet): {', '.join(done.skipped)}" if done.skipped else ""
    jobs = f"{len(done.completed)} completed and {len(done.failed)} failed job(s)"
    print(f"{args.dest}: {jobs}, {done.files} file(s), {done.bytes / 1e6:.1f} MB{skipped}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
