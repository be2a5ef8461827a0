"""Sharded evaluation: 2-process gloo DDP equals one process, finished shards are reused, fp16 index, merging."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mdr.data.readers import LocalReader
from mdr.data.schema import RetrievalSplit
from mdr.evaluation.evaluator import dense_retrieve, evaluate_language
from mdr.evaluation.search import merge_topk
from mdr.models.bi_encoder import BiEncoder, EncoderSettings, load_tokenizer

from conftest import XQUAD_SENT

SHARD_ROWS = 300  # 1,243 Hindi sentences -> 5 shards: rank 0 takes 0, 2, 4 and rank 1 takes 1, 3


def _load(model: str) -> tuple[BiEncoder, object]:
    settings = EncoderSettings(pooling="mean", normalize=True, query_max_length=32, passage_max_length=64)
    return BiEncoder.from_pretrained(model, settings), load_tokenizer(model)


def _split() -> RetrievalSplit:
    return LocalReader(XQUAD_SENT / "hi", "hi").load("test")


def _evaluate(model: str, out: Path, distributed: bool, **kwargs: object) -> dict:
    torch.set_num_threads(1)  # the same kernels (and so the same bits) in every process
    encoder, tokenizer = _load(model)
    result = evaluate_language(
        encoder, tokenizer, _split(), "hi", out, shard_rows=SHARD_ROWS, distributed=distributed, **kwargs
    )
    return {"metrics": result.metrics, "num_queries": result.num_queries}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank(rank: int, world: int, port: int, model: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = _evaluate(model, Path(out), distributed=True, keep_embeddings=True)
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_evaluation_equals_one_process(tiny_model: Path, tmp_path: Path) -> None:
    single, double = tmp_path / "single", tmp_path / "double"
    reference = _evaluate(str(tiny_model), single, distributed=False)
    assert not (single / "embeddings" / "hi").exists(), "embeddings are removed unless keep_embeddings"
    mp.spawn(_rank, args=(2, _free_port(), str(tiny_model), str(double)), nprocs=2, join=True)
    ranks = [json.loads((double / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1] == reference  # every rank gets the merged result; metrics exactly equal
    assert (double / "runs/hi.trec").read_bytes() == (single / "runs/hi.trec").read_bytes()
    assert (double / "per_query/hi.tsv").read_bytes() == (single / "per_query/hi.tsv").read_bytes()
    assert reference["num_queries"] == 635 and 0.0 < reference["metrics"]["mrr@100"] < 1.0
    shards = sorted((double / "embeddings" / "hi").glob("shard-*-of-5.json"))
    assert [json.loads(p.read_text())["rows"] for p in shards] == [
        [0, 300],
        [300, 600],
        [600, 900],
        [900, 1200],
        [1200, 1243],
    ]


def test_rerun_reuses_finished_shards_and_reencodes_the_rest(tiny_model: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    split = _split()
    encoder, tokenizer = _load(str(tiny_model))
    first = dense_retrieve(encoder, tokenizer, split.corpus, split.queries, 100, tmp_path, shard_rows=SHARD_ROWS)
    assert first.encoded == [0, 1, 2, 3, 4]
    # a job killed while writing shard 2: its JSON (written last) is missing, a partial temp file lies around
    (tmp_path / "shard-2-of-5.json").unlink()
    (tmp_path / ".shard-2-of-5.npy.tmp-1").write_bytes(b"partial")
    again = dense_retrieve(encoder, tokenizer, split.corpus, split.queries, 100, tmp_path, shard_rows=SHARD_ROWS)
    assert again.encoded == [2]
    assert not list(tmp_path.glob(".shard-2-of-5.npy.tmp-*")), "the killed job's partial file is cleaned up"
    assert np.array_equal(again.rows, first.rows) and np.array_equal(again.scores, first.scores)
    # another encoder (one weight changed) invalidates every shard
    with torch.no_grad():
        next(encoder.parameters()).add_(0.01)
    changed = dense_retrieve(encoder, tokenizer, split.corpus, split.queries, 100, tmp_path, shard_rows=SHARD_ROWS)
    assert changed.encoded == [0, 1, 2, 3, 4]
    # a shard file holding the wrong number of rows is not trusted either
    np.save(tmp_path / "shard-4-of-5.npy", np.zeros((3, 256), dtype=np.float32))
    last = dense_retrieve(encoder, tokenizer, split.corpus, split.queries, 100, tmp_path, shard_rows=SHARD_ROWS)
    assert last.encoded == [4]


def test_fp16_index_stores_half_precision_and_ranks_alike(tiny_model: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    split = _split()
    encoder, tokenizer = _load(str(tiny_model))
    full = dense_retrieve(encoder, tokenizer, split.corpus, split.queries, 100, tmp_path / "a", shard_rows=SHARD_ROWS)
    half = dense_retrieve(
        encoder, tokenizer, split.corpus, split.queries, 100, tmp_path / "b", shard_rows=SHARD_ROWS, fp16_index=True
    )
    assert np.load(tmp_path / "b" / "shard-0-of-5.npy").dtype == np.float16
    assert np.abs(half.scores - full.scores).max() < 2e-3
    top1 = (half.rows[:, 0] == full.rows[:, 0]).mean()
    assert top1 > 0.95


def test_merge_topk_is_one_total_order_whatever_the_split() -> None:
    rng = np.random.default_rng(0)
    queries, rows_total, k = 7, 40, 10
    scores = rng.integers(0, 5, size=(queries, rows_total)).astype(np.float32)  # many ties
    rows = np.tile(np.arange(rows_total), (queries, 1))
    expected_rows = np.array([sorted(range(rows_total), key=lambda r: (-scores[q, r], r))[:k] for q in range(queries)])
    for cut in ([10, 25], [5, 6, 30], [39]):
        parts = [(s, r) for s, r in zip(np.split(scores, cut, axis=1), np.split(rows, cut, axis=1))]
        for ordered in (parts, parts[::-1]):
            merged_scores, merged_rows = merge_topk(ordered, k, queries)
            assert np.array_equal(merged_rows, expected_rows)
            assert np.array_equal(merged_scores, np.take_along_axis(scores, expected_rows, axis=1))
    # fewer candidates than k: padded with row -1 and -inf
    padded_scores, padded_rows = merge_topk([(scores[:, :3], rows[:, :3])], 5, queries)
    assert (padded_rows[:, 3:] == -1).all() and np.isneginf(padded_scores[:, 3:]).all()


def test_shard_size_must_be_positive(tiny_model: Path, tmp_path: Path) -> None:
    split = _split()
    encoder, tokenizer = _load(str(tiny_model))
    with pytest.raises(ValueError, match="evaluation.shard_size must be >= 1"):
        dense_retrieve(encoder, tokenizer, split.corpus, split.queries, 10, tmp_path, shard_rows=0)
