"""Dense hard-negative mining (ANCE-style): an encoder's faiss top-N per training query, positives removed.

Runs on the trainer's device (this process's CUDA device when there is one) with bf16 autocast where
:func:`mdr.models.precision.autocast_dtype` says the hardware has it, through the sharded encode + search of
:mod:`mdr.evaluation.evaluator` (the corpus embeddings live in a temporary folder under the cache, one shard in
memory at a time).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from mdr.data.schema import RetrievalSplit
from mdr.evaluation.evaluator import DEFAULT_SHARD_ROWS, dense_retrieve
from mdr.mining.pools import RawPools, from_rankings, rank_run, retrieval_depth
from mdr.models.bi_encoder import BiEncoder
from mdr.models.precision import autocast_dtype
from mdr.utils.ranks import cuda_device


def mining_device() -> str:
    """This process's CUDA device (the one its DDP rank or SLURM task trains on: :func:`mdr.utils.ranks.cuda_device`),
    else ``cpu``."""
    return cuda_device()


def dense_pools(
    encoder: BiEncoder,
    tokenizer: PreTrainedTokenizerBase,
    split: RetrievalSplit,
    depth: int,
    batch_size: int = 128,
    device: torch.device | str | None = None,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    work_dir: str | Path | None = None,
) -> RawPools:
    """Top-``depth`` non-positive passages per query, with the exact best-positive score for the margin filter.

    Args:
        device: where to encode (``None``: :func:`mining_device`); bf16 autocast where supported there.
        work_dir: the folder under which the corpus embeddings are written, one shard file at a time, and removed
            afterwards (the miner passes ``<cache_dir>/tmp``: the whole corpus's embeddings, ~100 GB for Mr. TyDi
            en, do not fit a tmpfs /tmp); None: the system's temporary folder.
    """
    device = device or mining_device()
    encoder.to(device)
    if work_dir is not None:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mdr-dense-mining-", dir=work_dir) as tmp:
        found = dense_retrieve(
            encoder,
            tokenizer,
            split.corpus,
            split.queries,
            retrieval_depth(split, depth),
            tmp,
            batch_size,
            device,
            autocast_dtype(device),
            shard_rows=shard_rows,
        )
        pools = from_rankings(split, rank_run(found.run(split.corpus)), depth)
        row_of = getattr(split.corpus, "row", None)
        if row_of is None:
            row_of = {docid: row for row, docid in enumerate(split.corpus)}.__getitem__
        pairs = [(i, row_of(d)) for i, query_id in enumerate(found.query_ids) for d in split.positives(query_id)]
        if pairs:
            queries, rows = (np.asarray(column, dtype=np.int64) for column in zip(*pairs))
            scores = np.einsum("pd,pd->p", found.shards.vectors(rows), found.query_vectors[queries])  # (P,)
            best: dict[int, float] = {}
            for query, score in zip(queries.tolist(), scores.tolist()):
                best[query] = max(best.get(query, -np.inf), score)
            for query, score in best.items():
                pools.positive_scores[found.query_ids[query]] = float(score)
    return pools
