"""Evaluate a bi-encoder on one language's test split: encode the corpus in shards, search, score, write results."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from mdr.data.schema import Corpus, Query, RetrievalSplit
from mdr.distributed import world_size_and_rank
from mdr.evaluation.metrics import Run, evaluate_run, mean_metrics, write_run
from mdr.evaluation.search import FlatIPSearcher, merge_topk
from mdr.models.bi_encoder import BiEncoder
from mdr.utils.cache import check_manifest, manifest, verify_level
from mdr.utils.io import atomic_write_json, atomic_write_lines
from mdr.utils.logging import get_logger

log = get_logger(__name__)

DEFAULT_SHARD_ROWS = 50_000

# Corpus embeddings on disk in fixed-size row shards (``shard-<i>-of-<n>.npy``, then its ``.json``), so ranks split
# the work (rank ``r`` of ``w``: shards ``i % w == r``) and a requeued job reuses the finished ones. The boundaries do
# not depend on the number of ranks, so DDP encodes every passage to the same bits as one process.
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


EncodeFn = Callable[[Mapping[str, torch.Tensor]], torch.Tensor]
Allocate = Callable[[int], np.ndarray]
"""Given the embedding dimension, return the ``(len(texts), dim)`` array the vectors are written into."""


@torch.inference_mode()
def encode_texts(
    encode: EncodeFn,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_length: int,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    allocate: Allocate | None = None,
) -> np.ndarray:
    """(len(texts), dim) vectors in the order of ``texts``, encoded sorted by length into ``allocate(dim)``'s array
    (e.g. a memory-mapped file), under ``torch.autocast`` with ``autocast_dtype``."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: np.ndarray | None = None
    device_type = torch.device(device).type
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = [texts[i] for i in rows]
        inputs = tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(device)
        with torch.autocast(device_type=device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            vectors = encode(inputs).float().cpu().numpy()  # (len(rows), dim)
        if out is None:
            dim = vectors.shape[1]
            out = allocate(dim) if allocate is not None else np.empty((len(texts), dim), dtype=np.float32)
        out[rows] = vectors
    if out is None:
        return allocate(0) if allocate is not None else np.zeros((0, 0), dtype=np.float32)
    return out


@dataclass(frozen=True)
class EvaluationResult:
    """Metrics for one language: averages, per-query values and the run."""

    language: str
    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]]
    run: Run
    num_queries: int


@dataclass
class DenseRetrieval:
    """Top-k corpus rows per query, with what produced them."""

    query_ids: list[str]  # sorted: the row order of the arrays
    query_vectors: np.ndarray  # (Q, dim)
    scores: np.ndarray  # (Q, k) best first, -inf where fewer than k passages exist
    rows: np.ndarray  # (Q, k) corpus rows, -1 where no hit
    shards: EmbeddingShards
    encoded: list[int]  # the shards this process encoded now (the others it owns were reused)
    seconds: dict[str, float]  # this process's wall time per stage

    def run(self, corpus: Corpus) -> Run:
        """query_id -> {docid: score}."""
        return {
            query_id: {
                corpus.docid(int(row)): float(score) for score, row in zip(self.scores[i], self.rows[i]) if row >= 0
            }
            for i, query_id in enumerate(self.query_ids)
        }


def remove_if_empty(folder: Path) -> None:
    """Remove ``folder`` if it exists and holds nothing."""
    with contextlib.suppress(OSError):  # absent, not empty, or not removable: nothing to tidy
        folder.rmdir()


def corpus_shards(
    encoder: BiEncoder,
    tokenizer: PreTrainedTokenizerBase,
    corpus: Corpus,
    folder: str | Path,
    autocast_dtype: torch.dtype | None = None,
    fp16_index: bool = False,
    shard_rows: int = DEFAULT_SHARD_ROWS,
) -> EmbeddingShards:
    """The shard files of ``corpus`` encoded by ``encoder`` (identity: weights, tokenizer, corpus, precision)."""
    plan = ShardPlan(len(corpus), int(shard_rows))
    what = {"corpus": corpus.fingerprint(), "autocast": str(autocast_dtype), "fp16": bool(fp16_index)}
    identity = encoder_identity(encoder, tokenizer, **what, shard_rows=plan.shard_rows)
    return EmbeddingShards(folder, plan, identity, fp16=fp16_index)


def search_shards(
    shards: EmbeddingShards,
    owned: list[int],
    query_vectors: np.ndarray,
    k: int,
    use_gpu_index: bool | str = "auto",
    fp16_index: bool = False,
    gpu_device: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, corpus rows) per query over the ``owned`` shards, one shard's index at a time."""
    best = merge_topk([], k, len(query_vectors))
    for shard in owned:
        start, _ = shards.plan.bounds(shard)
        searcher = FlatIPSearcher(shards.load(shard), use_gpu_index, fp16_index, gpu_device)
        scores, rows = searcher.search(query_vectors, k)  # (Q, <= k) each
        del searcher
        best = merge_topk([best, (scores, np.where(rows >= 0, rows + start, -1))], k, len(query_vectors))
    return best


def dense_retrieve(
    encoder: BiEncoder,
    tokenizer: PreTrainedTokenizerBase,
    corpus: Corpus,
    queries: Mapping[str, Query],
    depth: int,
    folder: str | Path,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    use_gpu_index: bool | str = "auto",
    fp16_index: bool = False,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    distributed: bool = False,
) -> DenseRetrieval:
    """Encode ``corpus`` into shards under ``folder`` (reusing finished ones) and search ``queries`` (``distributed``:
    the ranks split the shards; every rank must call)."""
    world, rank = world_size_and_rank() if distributed else (1, 0)
    settings = encoder.settings
    encoder.eval()
    shards = corpus_shards(encoder, tokenizer, corpus, folder, autocast_dtype, fp16_index, shard_rows)
    owned = shards.plan.owned(rank, world)
    encoded: list[int] = []
    started = time.perf_counter()
    for shard in (shard for shard in owned if not shards.is_done(shard)):
        created: list[tuple[np.ndarray, Path]] = []  # (array, temporary file), made once the dimension is known

        def allocate(dim: int, shard: int = shard) -> np.ndarray:
            created.append(shards.create(shard, dim))
            return created[0][0]

        passages = corpus.texts(range(*shards.plan.bounds(shard)), settings.passage_prefix)
        length = settings.passage_max_length
        encode_texts(encoder.encode_passages, tokenizer, passages, length, batch_size, device, autocast_dtype, allocate)
        shards.commit(shard, *created[0])  # type: ignore[arg-type]
        encoded.append(shard)
    if owned:
        took, reused = time.perf_counter() - started, len(owned) - len(encoded)
        log.info(
            "rank %d/%d: encoded %d of its %d corpus shards in %.1fs (%d reused) -> %s",
            *(rank, world, len(encoded), len(owned), took, reused, shards.folder),
        )
    seconds = {"encode_corpus": time.perf_counter() - started}
    started = time.perf_counter()
    query_ids = sorted(queries)
    query_vectors: np.ndarray | None = None
    if rank == 0:
        prefixed = [settings.query_prefix + queries[q].text for q in query_ids]
        length = settings.query_max_length
        query_vectors = encode_texts(
            encoder.encode_queries, tokenizer, prefixed, length, batch_size, device, autocast_dtype
        )
    if world > 1:
        box = [query_vectors]
        torch.distributed.broadcast_object_list(box, src=0)
        query_vectors = box[0]
    assert query_vectors is not None
    seconds["encode_queries"] = time.perf_counter() - started
    started = time.perf_counter()
    k = min(depth, shards.plan.num_rows)
    gpu = torch.device(device)
    gpu_index = (torch.cuda.current_device() if gpu.index is None else gpu.index) if gpu.type == "cuda" else 0
    best = search_shards(shards, owned, query_vectors, k, use_gpu_index, fp16_index, gpu_index)
    seconds["search"] = time.perf_counter() - started
    started = time.perf_counter()
    if world > 1:
        gathered: list[tuple[np.ndarray, np.ndarray] | None] = [None] * world
        torch.distributed.all_gather_object(gathered, best)
        best = merge_topk([part for part in gathered if part is not None], k, len(query_ids))
    seconds["gather"] = time.perf_counter() - started
    seconds = {name: round(value, 3) for name, value in seconds.items()}
    return DenseRetrieval(query_ids, query_vectors, best[0], best[1], shards, encoded, seconds)


def evaluate_language(
    encoder: BiEncoder,
    tokenizer: PreTrainedTokenizerBase,
    split: RetrievalSplit,
    language: str,
    output_dir: str | Path,
    depth: int = 100,
    keep_embeddings: bool = False,
    distributed: bool = False,
    **options: Any,
) -> EvaluationResult:
    """Retrieve (``options``: :func:`dense_retrieve`'s), score, write ``runs/`` and ``per_query/`` files under
    ``output_dir``; with ``distributed``, every rank calls this, all return the same and rank 0 writes."""
    out = Path(output_dir)
    folder = out / "embeddings" / language
    _, rank = world_size_and_rank() if distributed else (1, 0)
    found = dense_retrieve(
        encoder, tokenizer, split.corpus, split.queries, depth, folder, distributed=distributed, **options
    )
    run = found.run(split.corpus)
    per_query = evaluate_run(run, split.qrels, depth)
    metrics = mean_metrics(per_query)
    if rank == 0:
        write_run(out / "runs" / f"{language}.trec", run, tag=f"mdr-{language}")
        names = sorted(metrics)
        atomic_write_lines(
            out / "per_query" / f"{language}.tsv",
            ["query_id\t" + "\t".join(names)]
            + [f"{qid}\t" + "\t".join(f"{per_query[qid][n]:.6f}" for n in names) for qid in sorted(per_query)],
        )
        if not keep_embeddings:  # every rank has searched its shards: the gather above waited for them
            shutil.rmtree(folder, ignore_errors=True)
            remove_if_empty(folder.parent)
        log.info("%s: %s over %d queries", language, {k: round(v, 4) for k, v in metrics.items()}, len(per_query))
    return EvaluationResult(language, metrics, per_query, run, len(per_query))
