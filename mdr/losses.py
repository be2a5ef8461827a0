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
    """(Q, N) true where column j holds one of query i's judged positives (``positive_ids``: (Q, P) docid hashes,
    -1 padded; ``passage_ids``: (N,) those of the passage columns) and is not i's own target column (``targets``)."""
    hits = (passage_ids[None, :, None] == positive_ids[:, None, :]) & (positive_ids[:, None, :] >= 0)  # (Q, N, P)
    mask = hits.any(dim=-1)  # (Q, N)
    mask[torch.arange(len(targets), device=mask.device), targets] = False
    return mask


class InfoNCELoss(nn.Module):
    """Cross-entropy of each query over every passage in the (global) batch (DPR, Karpukhin et al. 2020), scores over
    ``temperature``: query ``i`` on rank ``r`` has its positive at column ``(r * Q + i) * (1 + k)`` of the passages
    gathered from every rank; with ``mask_false_negatives``, query i's other judged positives leave its softmax."""

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
        """Loss of (Q, dim) queries and (Q * (1 + k), dim) passages grouped per query, positive first;
        ``passage_ids`` (Q * (1 + k),) and ``positive_ids`` (Q, P, -1 padded) docid hashes mask false negatives."""
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
