"""Dense hard-negative mining (ANCE-style): an encoder's top-N per training query, positives removed."""

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

mining_device = cuda_device  # this process's CUDA device (its DDP rank's or SLURM task's), else cpu


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
    """Top-``depth`` non-positive passages per query, with the best-positive score; embeddings in ``work_dir``."""
    device = device or mining_device()
    encoder.to(device)
    if work_dir is not None:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
    k, dtype = retrieval_depth(split, depth), autocast_dtype(device)
    with tempfile.TemporaryDirectory(prefix="mdr-dense-mining-", dir=work_dir) as tmp:
        found = dense_retrieve(
            encoder, tokenizer, split.corpus, split.queries, k, tmp, batch_size, device, dtype, shard_rows=shard_rows
        )
        pools = from_rankings(split, rank_run(found.run(split.corpus)), depth)
        row = split.corpus.row
        pairs = [(i, row(d)) for i, query_id in enumerate(found.query_ids) for d in split.positives(query_id)]
        if pairs:
            queries, rows = (np.asarray(column, dtype=np.int64) for column in zip(*pairs))
            scores = np.einsum("pd,pd->p", found.shards.vectors(rows), found.query_vectors[queries])  # (P,)
            best = np.full(len(found.query_ids), -np.inf)  # (Q,) each query's best positive score
            np.maximum.at(best, queries, scores)
            pools.positive_scores.update({found.query_ids[q]: float(best[q]) for q in np.unique(queries)})
    return pools
