"""Exact inner-product search with faiss, one shard at a time, top-k lists merged in one total order."""

from __future__ import annotations

import numpy as np

from mdr.utils.logging import get_logger

log = get_logger(__name__)

ADD_ROWS = 65_536
"""Rows copied to faiss at a time (bounds the float32 copy of a float16 / memory-mapped shard)."""


def search_device(use_gpu: bool | str = "auto", cuda_devices: int = 0) -> str:
    """Where :class:`FlatIPSearcher` searches with setting ``use_gpu``: ``gpu`` or ``cpu`` (a RuntimeError for
    True when faiss sees no GPU; a warning for ``auto`` when torch sees ``cuda_devices`` but faiss none)."""
    import faiss

    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0  # 0 for faiss-cpu
    if use_gpu is True and not gpus:
        raise RuntimeError("evaluation.faiss_gpu=true but faiss sees no GPU (install faiss-gpu: mdr[gpu])")
    if use_gpu == "auto" and not gpus and cuda_devices > 0:
        log.warning(
            "evaluation.faiss_gpu=auto: torch sees %d CUDA device(s) but faiss none (a faiss-cpu build?): "
            "searching on CPU; bash scripts/setup.sh --gpu installs faiss-gpu",
            cuda_devices,
        )
    return "gpu" if gpus and use_gpu in (True, "auto") else "cpu"


class FlatIPSearcher:
    """Exact inner-product index over (num_passages, dim) vectors (``use_gpu``: as :func:`search_device`)."""

    def __init__(
        self, passage_embeddings: np.ndarray, use_gpu: bool | str = "auto", fp16: bool = False, gpu_device: int = 0
    ) -> None:
        import faiss

        dim = int(passage_embeddings.shape[1])
        self.on_gpu = search_device(use_gpu) == "gpu"
        if self.on_gpu:
            self.resources = faiss.StandardGpuResources()
            config = faiss.GpuIndexFlatConfig()
            config.device, config.useFloat16 = int(gpu_device), bool(fp16)
            index = faiss.GpuIndexFlatIP(self.resources, dim, config)
        elif fp16:
            index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexFlatIP(dim)
        for start in range(0, len(passage_embeddings), ADD_ROWS):
            index.add(np.ascontiguousarray(passage_embeddings[start : start + ADD_ROWS], dtype=np.float32))
        self.index = index

    def search(self, query_embeddings: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, passage row indices), each (num_queries, min(k, num_passages))."""
        return self.index.search(np.ascontiguousarray(query_embeddings, dtype=np.float32), min(k, self.index.ntotal))


def empty_topk(num_queries: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A top-k with no hit: scores -inf, rows -1, each (num_queries, k)."""
    return np.full((num_queries, k), -np.inf, dtype=np.float32), np.full((num_queries, k), -1, dtype=np.int64)


def merge_topk(parts: list[tuple[np.ndarray, np.ndarray]], k: int, num_queries: int) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of several (scores, rows) top lists per query, by score descending then row (< 0 last)."""
    if not parts:
        return empty_topk(num_queries, k)
    scores = np.concatenate([np.asarray(s, dtype=np.float32).reshape(num_queries, -1) for s, _ in parts], axis=1)
    rows = np.concatenate([np.asarray(r, dtype=np.int64).reshape(num_queries, -1) for _, r in parts], axis=1)
    no_hit = rows < 0
    scores = np.where(no_hit, -np.inf, scores)
    order = np.lexsort((np.where(no_hit, np.iinfo(np.int64).max, rows), -scores), axis=-1)[:, :k]  # (Q, <= k)
    scores = np.take_along_axis(scores, order, axis=1)
    rows = np.take_along_axis(rows, order, axis=1)
    if scores.shape[1] < k:
        pad_scores, pad_rows = empty_topk(num_queries, k - scores.shape[1])
        scores, rows = np.concatenate([scores, pad_scores], 1), np.concatenate([rows, pad_rows], 1)
    return scores, rows
