"""Corpus embeddings on disk in fixed-size row shards (``shard-<i>-of-<n>.npy``, then its ``.json``), so ranks split
the work (rank ``r`` of ``w``: shards ``i % w == r``) and a requeued job reuses the finished ones."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mdr.utils.cache import check_manifest, manifest, verify_level
from mdr.utils.io import atomic_write_json
from mdr.utils.logging import get_logger

log = get_logger(__name__)

SHARD_FORMAT = 2
"""2: the JSON carries the array file's manifest (size, sampled and full SHA-256)."""


@dataclass(frozen=True)
class ShardPlan:
    """Which rows each shard holds and which shards each rank owns."""

    num_rows: int
    shard_rows: int

    def __post_init__(self) -> None:
        if self.shard_rows < 1:
            raise ValueError(f"evaluation.shard_size must be >= 1, got {self.shard_rows}")

    @property
    def num_shards(self) -> int:
        """Number of shards (at least one)."""
        return max(1, -(-self.num_rows // self.shard_rows))

    def bounds(self, shard: int) -> tuple[int, int]:
        """``(first row, end row)`` of ``shard``."""
        return shard * self.shard_rows, min((shard + 1) * self.shard_rows, self.num_rows)

    def owned(self, rank: int, world_size: int) -> list[int]:
        """The shards rank ``rank`` of ``world_size`` encodes and searches."""
        return list(range(rank, self.num_shards, world_size))


def encoder_identity(encoder: torch.nn.Module, tokenizer: Any, **extra: Any) -> str:
    """A hash of the encoder's weights, its settings, the tokenizer and ``extra`` (corpus, autocast, ...)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        data = tensor.detach().contiguous().cpu()
        digest.update(f"{name}:{data.dtype}:{tuple(data.shape)}\n".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    settings = getattr(encoder, "settings", None)
    described: dict[str, Any] = {"settings": asdict(settings) if is_dataclass(settings) else repr(settings)}
    described["tokenizer"] = [type(tokenizer).__name__, getattr(tokenizer, "name_or_path", ""), len(tokenizer)]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # vocabulary, normaliser, pre-tokeniser; not the per-call padding/truncation state
        state = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("padding", "truncation")}
        described["tokenizer_hash"] = hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()[:16]
    described.update(extra)
    digest.update(json.dumps(described, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:32]


class EmbeddingShards:
    """The shard files of one corpus encoding in ``folder`` (``identity``: :func:`encoder_identity`)."""

    def __init__(self, folder: str | Path, plan: ShardPlan, identity: str, fp16: bool = False) -> None:
        self.folder, self.plan, self.identity = Path(folder), plan, identity
        self.dtype = np.float16 if fp16 else np.float32

    def _stem(self, shard: int) -> str:
        return f"shard-{shard}-of-{self.plan.num_shards}"

    def array_path(self, shard: int) -> Path:
        """The ``.npy`` file of ``shard``."""
        return self.folder / f"{self._stem(shard)}.npy"

    def meta_path(self, shard: int) -> Path:
        """The ``.json`` file of ``shard`` (written last)."""
        return self.folder / f"{self._stem(shard)}.json"

    def _meta(self, shard: int) -> dict[str, Any]:
        rows = list(self.plan.bounds(shard))
        meta = dict(format=SHARD_FORMAT, shard=shard, num_shards=self.plan.num_shards, rows=rows)
        return {**meta, "dtype": np.dtype(self.dtype).name, "identity": self.identity}

    def is_done(self, shard: int) -> bool:
        """True when ``shard`` was written completely for this identity, rows and dtype (else logged if corrupt)."""
        try:
            meta = json.loads(self.meta_path(shard).read_text())
        except (OSError, ValueError):
            return False
        expected = self._meta(shard)
        if any(meta.get(key) != value for key, value in expected.items()):
            return False
        problem = check_manifest(self.folder, meta, verify_level("full"))
        if problem is None:
            try:
                array = np.load(self.array_path(shard), mmap_mode="r")
            except (OSError, ValueError) as error:
                problem = f"{self.array_path(shard)}: {error}"
            else:
                rows = expected["rows"][1] - expected["rows"][0]
                if array.shape[0] != rows or array.dtype != self.dtype:
                    problem = f"{self.array_path(shard)}: {array.shape} {array.dtype}, expected {rows} rows"
        if problem is not None:
            log.warning("embedding shard %d is not what was written (%s): encoding it again", shard, problem)
            return False
        return True

    def create(self, shard: int, dim: int) -> tuple[np.ndarray, Path]:
        """A memory-mapped ``(rows, dim)`` array in a temporary file, to fill and then :meth:`commit`."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.meta_path(shard).unlink(missing_ok=True)
        for stale in self.folder.glob(f".{self._stem(shard)}.npy.tmp-*"):  # a killed encoding of this shard: only
            stale.unlink(missing_ok=True)  # one rank of the job holding the run folder ever writes shard ``shard``
        start, end = self.plan.bounds(shard)
        tmp = self.folder / f".{self._stem(shard)}.npy.tmp-{os.getpid()}"
        return np.lib.format.open_memmap(tmp, mode="w+", dtype=self.dtype, shape=(end - start, dim)), tmp

    def commit(self, shard: int, array: np.memmap, tmp: Path) -> None:
        """Flush ``array``, move it into place, then write the shard's JSON (with the file's checksums)."""
        array.flush()
        dim = int(array.shape[1])
        os.replace(tmp, self.array_path(shard))
        files = manifest(self.folder, [self.array_path(shard).name])
        atomic_write_json(self.meta_path(shard), {**self._meta(shard), "dim": dim, **files})

    def load(self, shard: int) -> np.ndarray:
        """``shard``'s embeddings, memory-mapped (read-only)."""
        return np.load(self.array_path(shard), mmap_mode="r")

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """float32 embeddings of corpus ``rows`` (any order), read from the shards that hold them."""
        rows = np.asarray(rows, dtype=np.int64)
        out: np.ndarray | None = None
        shard_of = rows // self.plan.shard_rows
        for shard in np.unique(shard_of):
            array = self.load(int(shard))
            if out is None:
                out = np.empty((len(rows), array.shape[1]), dtype=np.float32)
            picked = np.flatnonzero(shard_of == shard)
            out[picked] = array[rows[picked] - int(shard) * self.plan.shard_rows]
        return out if out is not None else np.zeros((0, 0), dtype=np.float32)
