"""Batched, no-grad encoding of texts into float32 numpy arrays."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

EncodeFn = Callable[[Mapping[str, torch.Tensor]], torch.Tensor]


@torch.inference_mode()
def encode_texts(
    encode: EncodeFn,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_length: int,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
) -> np.ndarray:
    """(len(texts), dim) vectors; texts are sorted by length internally so batches pad little."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    chunks: list[np.ndarray] = []
    for start in range(0, len(order), batch_size):
        batch = [texts[i] for i in order[start : start + batch_size]]
        inputs = tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        inputs = {key: value.to(device) for key, value in inputs.items()}
        with torch.autocast(
            device_type=torch.device(device).type, dtype=autocast_dtype, enabled=autocast_dtype is not None
        ):
            chunks.append(encode(inputs).float().cpu().numpy())
    vectors = np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)
    out = np.empty_like(vectors)
    out[order] = vectors
    return out
