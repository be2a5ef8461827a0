"""Dense hard-negative mining (ANCE-style): an encoder's faiss top-N per training query, positives removed."""

from __future__ import annotations

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from mdr.data.schema import RetrievalSplit
from mdr.evaluation.evaluator import encode_split, search
from mdr.mining.pools import RawPools, from_rankings, rank_run, retrieval_depth
from mdr.models.bi_encoder import BiEncoder


def dense_pools(
    encoder: BiEncoder,
    tokenizer: PreTrainedTokenizerBase,
    split: RetrievalSplit,
    depth: int,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
) -> RawPools:
    """Top-``depth`` non-positive passages per query, with the exact best-positive score for the margin filter."""
    encoded = encode_split(encoder, tokenizer, split, batch_size, device)
    pools = from_rankings(split, rank_run(search(encoded, retrieval_depth(split, depth))), depth)
    row_of = {docid: row for row, docid in enumerate(encoded.docids)}
    for i, query_id in enumerate(encoded.query_ids):
        rows = [row_of[d] for d in split.positives(query_id)]
        if rows:
            scores = encoded.passage_vectors[rows] @ encoded.query_vectors[i]
            pools.positive_scores[query_id] = float(np.max(scores))
    return pools
