"""Batched, no-grad encoding of texts into a numpy array (float32, or any array the caller allocates)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

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
