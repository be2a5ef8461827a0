"""Evaluate a bi-encoder on one language's test split: encode the corpus in shards, search, score, write results."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from mdr.data.schema import Corpus, Query, RetrievalSplit
from mdr.distributed import world_size_and_rank
from mdr.evaluation.encode import encode_texts
from mdr.evaluation.metrics import Run, evaluate_run, mean_metrics
from mdr.evaluation.search import FlatIPSearcher, merge_topk
from mdr.evaluation.shards import EmbeddingShards, ShardPlan, encoder_identity
from mdr.evaluation.trec import write_run
from mdr.models.bi_encoder import BiEncoder
from mdr.utils.io import atomic_write_lines
from mdr.utils.logging import get_logger

log = get_logger(__name__)

DEFAULT_SHARD_ROWS = 50_000


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
