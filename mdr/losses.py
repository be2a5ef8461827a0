"""In-batch plus hard-negative contrastive loss (InfoNCE)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mdr.distributed import gather_with_grad, world_size_and_rank


@dataclass(frozen=True)
class LossOutput:
    """Loss value and the share of queries whose positive scored highest."""

    loss: torch.Tensor
    accuracy: torch.Tensor


class InfoNCELoss(nn.Module):
    """Cross-entropy of each query over every passage in the (global) batch.

    Passages are laid out per query as ``[pos, neg_1..neg_k]``; query ``i`` on rank ``r`` has its
    positive at column ``(r * Q + i) * (1 + k)`` of the gathered passage matrix, so it is scored
    against its own positive and k negatives plus every other query's passages. ``scale = 1/temperature``.

    References:
        Karpukhin et al. (2020), Dense Passage Retrieval; van den Oord et al. (2018), CPC (InfoNCE).

    Args:
        temperature: divides the similarity scores (1.0 for DPR dot products, ~0.01-0.05 for cosine).
        gather_across_devices: under DDP, score against the passages of every rank (with gradients).
    """

    def __init__(self, temperature: float = 1.0, gather_across_devices: bool = True) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.gather_across_devices = gather_across_devices

    def forward(self, query_embeddings: torch.Tensor, passage_embeddings: torch.Tensor) -> LossOutput:
        """Loss from embeddings.

        Args:
            query_embeddings: (Q, dim).
            passage_embeddings: (Q * (1 + k), dim), grouped per query with the positive first.
        """
        num_queries = query_embeddings.shape[0]
        if passage_embeddings.shape[0] % num_queries:
            raise ValueError(f"{passage_embeddings.shape[0]} passages do not split into {num_queries} groups")
        group_size = passage_embeddings.shape[0] // num_queries
        rank = 0
        if self.gather_across_devices:
            passage_embeddings = gather_with_grad(passage_embeddings)  # (world * Q * group, dim)
            rank = world_size_and_rank()[1]
        scores = query_embeddings @ passage_embeddings.T / self.temperature  # (Q, world * Q * group)
        targets = (torch.arange(num_queries, device=scores.device) + rank * num_queries) * group_size  # (Q,)
        loss = F.cross_entropy(scores.float(), targets)
        accuracy = (scores.argmax(dim=1) == targets).float().mean()
        return LossOutput(loss=loss, accuracy=accuracy)
