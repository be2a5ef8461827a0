"""In-batch plus hard-negative contrastive loss (InfoNCE), with in-batch false negatives masked."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mdr.distributed import gather_with_grad, gather_without_grad, world_size_and_rank


@dataclass(frozen=True)
class LossOutput:
    """Loss value, the share of queries whose positive scored highest, and how many columns were masked."""

    loss: torch.Tensor
    accuracy: torch.Tensor
    masked: torch.Tensor


def false_negative_mask(passage_ids: torch.Tensor, positive_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(Q, N) true where column j holds one of query i's judged positives and is not i's own target column.

    Args:
        passage_ids: (N,) docid hashes of the (gathered) passage columns.
        positive_ids: (Q, P) docid hashes of each query's judged positives, -1 padded.
        targets: (Q,) each query's target column.
    """
    hits = (passage_ids[None, :, None] == positive_ids[:, None, :]) & (positive_ids[:, None, :] >= 0)  # (Q, N, P)
    mask = hits.any(dim=-1)  # (Q, N)
    mask[torch.arange(len(targets), device=mask.device), targets] = False
    return mask


class InfoNCELoss(nn.Module):
    """Cross-entropy of each query over every passage in the (global) batch.

    Passages are laid out per query as ``[pos, neg_1..neg_k]``; query ``i`` on rank ``r`` has its
    positive at column ``(r * Q + i) * (1 + k)`` of the gathered passage matrix, so it is scored
    against its own positive and k negatives plus every other query's passages. ``scale = 1/temperature``.

    A column that holds one of query i's judged positives (another query's identical positive, or i's
    positive drawn as somebody else's negative) is a false negative for i: with ``mask_false_negatives``
    it leaves i's softmax (its logit is set to -inf) instead of being pushed away.

    References:
        Karpukhin et al. (2020), Dense Passage Retrieval; van den Oord et al. (2018), CPC (InfoNCE).

    Args:
        temperature: divides the similarity scores (1.0 for DPR dot products, ~0.01-0.05 for cosine).
        gather_across_devices: under DDP, score against the passages of every rank (with gradients).
        mask_false_negatives: drop columns holding a query's own judged positives from its softmax.
    """

    def __init__(
        self, temperature: float = 1.0, gather_across_devices: bool = True, mask_false_negatives: bool = False
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.gather_across_devices = gather_across_devices
        self.mask_false_negatives = mask_false_negatives

    def forward(
        self,
        query_embeddings: torch.Tensor,
        passage_embeddings: torch.Tensor,
        passage_ids: torch.Tensor | None = None,
        positive_ids: torch.Tensor | None = None,
    ) -> LossOutput:
        """Loss from embeddings.

        Args:
            query_embeddings: (Q, dim).
            passage_embeddings: (Q * (1 + k), dim), grouped per query with the positive first.
            passage_ids: (Q * (1 + k),) docid hashes of the passages; needed to mask false negatives.
            positive_ids: (Q, P) docid hashes of each query's judged positives, -1 padded.
        """
        num_queries = query_embeddings.shape[0]
        if passage_embeddings.shape[0] % num_queries:
            raise ValueError(f"{passage_embeddings.shape[0]} passages do not split into {num_queries} groups")
        group_size = passage_embeddings.shape[0] // num_queries
        rank = 0
        if self.gather_across_devices:
            passage_embeddings = gather_with_grad(passage_embeddings)  # (world * Q * group, dim)
            rank = world_size_and_rank()[1]
        # scores in fp32 even under bf16 autocast: at temperature 0.02 bf16 rounding would move logits by ~0.2
        with torch.autocast(device_type=query_embeddings.device.type, enabled=False):
            scores = query_embeddings.float() @ passage_embeddings.float().T / self.temperature  # (Q, world*Q*group)
        targets = (torch.arange(num_queries, device=scores.device) + rank * num_queries) * group_size  # (Q,)
        masked = torch.zeros((), dtype=torch.long, device=scores.device)
        if self.mask_false_negatives:
            if passage_ids is None or positive_ids is None:
                raise ValueError("mask_false_negatives needs passage_ids and positive_ids")
            if self.gather_across_devices:
                passage_ids = gather_without_grad(passage_ids)  # (world * Q * group,)
            mask = false_negative_mask(passage_ids.to(scores.device), positive_ids.to(scores.device), targets)
            scores = scores.masked_fill(mask, float("-inf"))  # (Q, world * Q * group)
            masked = mask.sum()
        loss = F.cross_entropy(scores, targets)
        accuracy = (scores.argmax(dim=1) == targets).float().mean()
        return LossOutput(loss=loss, accuracy=accuracy, masked=masked)
