"""Exact inner-product search with faiss (GPU when faiss-gpu and a CUDA device are present)."""

from __future__ import annotations

import numpy as np

from mdr.utils.logging import get_logger

log = get_logger(__name__)


class FlatIPSearcher:
    """``IndexFlatIP`` over passage vectors.

    Args:
        passage_embeddings: (num_passages, dim) float32.
        use_gpu: "auto" moves the index to GPU 0 when faiss was built with GPU support and sees a device.
    """

    def __init__(self, passage_embeddings: np.ndarray, use_gpu: bool | str = "auto") -> None:
        import faiss

        vectors = np.ascontiguousarray(passage_embeddings, dtype=np.float32)
        index = faiss.IndexFlatIP(vectors.shape[1])
        gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        self.on_gpu = bool(gpus) and use_gpu in (True, "auto")
        if use_gpu is True and not gpus:
            raise RuntimeError("evaluation.faiss_gpu=true but faiss sees no GPU (install faiss-gpu: mdr[gpu])")
        if self.on_gpu:
            index = faiss.index_cpu_to_all_gpus(index)
        index.add(vectors)
        self.index = index

    def search(self, query_embeddings: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, passage row indices), each (num_queries, min(k, num_passages))."""
        k = min(k, self.index.ntotal)
        return self.index.search(np.ascontiguousarray(query_embeddings, dtype=np.float32), k)
