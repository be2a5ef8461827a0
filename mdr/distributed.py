"""Distributed helpers that are the identity on a single process."""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size_and_rank() -> tuple[int, int]:
    """``(world_size, rank)``; ``(1, 0)`` when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (the same shape on every rank) from every process along dim 0, keeping gradients for
    all slots: their backward sums into the owning rank, which DDP's averaging makes the mean loss's gradient."""
    world_size, _ = world_size_and_rank()
    if world_size == 1:
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor.contiguous()), dim=0)


def gather_without_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every process along dim 0 (no gradients; ids, counts)."""
    world_size, _ = world_size_and_rank()
    if world_size == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)
