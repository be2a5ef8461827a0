"""Evaluate a bi-encoder on one language's test split: encode, search, score, and write results."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from mdr.data.collator import passage_text
from mdr.data.schema import RetrievalSplit
from mdr.evaluation.encode import encode_texts
from mdr.evaluation.metrics import Run, evaluate_run, mean_metrics
from mdr.evaluation.search import FlatIPSearcher
from mdr.evaluation.trec import write_run
from mdr.models.bi_encoder import BiEncoder
from mdr.utils.io import atomic_write_lines
from mdr.utils.logging import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class EvaluationResult:
    """Metrics for one language: averages, per-query values and the run."""

    language: str
    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]]
    run: Run
    num_queries: int


@dataclass(frozen=True)
class EncodedSplit:
    """Query and passage vectors of a split, with their ids in row order."""

    query_ids: list[str]
    query_vectors: np.ndarray
    docids: list[str]
    passage_vectors: np.ndarray


def encode_split(
    encoder: BiEncoder,
    tokenizer: PreTrainedTokenizerBase,
    split: RetrievalSplit,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
) -> EncodedSplit:
    """Encode every passage of the corpus and every query of the split."""
    settings = encoder.settings
    encoder.eval()
    docids = list(split.corpus)
    passages = [passage_text(split.corpus[docid], settings.passage_prefix) for docid in docids]
    passage_vectors = encode_texts(
        encoder.encode_passages, tokenizer, passages, settings.passage_max_length, batch_size, device, autocast_dtype
    )
    query_ids = sorted(split.queries)
    queries = [settings.query_prefix + split.queries[query_id].text for query_id in query_ids]
    query_vectors = encode_texts(
        encoder.encode_queries, tokenizer, queries, settings.query_max_length, batch_size, device, autocast_dtype
    )
    return EncodedSplit(query_ids, query_vectors, docids, passage_vectors)


def search(encoded: EncodedSplit, depth: int, use_gpu_index: bool | str = "auto") -> Run:
    """Top-``depth`` passages per query by inner product."""
    scores, rows = FlatIPSearcher(encoded.passage_vectors, use_gpu_index).search(encoded.query_vectors, depth)
    return {
        query_id: {encoded.docids[row]: float(score) for score, row in zip(scores[i], rows[i]) if row >= 0}
        for i, query_id in enumerate(encoded.query_ids)
    }


def retrieve(
    encoder: BiEncoder,
    tokenizer: PreTrainedTokenizerBase,
    split: RetrievalSplit,
    depth: int = 100,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
    use_gpu_index: bool | str = "auto",
    autocast_dtype: torch.dtype | None = None,
) -> Run:
    """Encode the split and return the top-``depth`` passages per query."""
    return search(encode_split(encoder, tokenizer, split, batch_size, device, autocast_dtype), depth, use_gpu_index)


def evaluate_language(
    encoder: BiEncoder,
    tokenizer: PreTrainedTokenizerBase,
    split: RetrievalSplit,
    language: str,
    output_dir: str | Path,
    **retrieve_kwargs: object,
) -> EvaluationResult:
    """Retrieve, score and write ``runs/<language>.trec`` and ``per_query/<language>.tsv`` under ``output_dir``."""
    run = retrieve(encoder, tokenizer, split, **retrieve_kwargs)  # type: ignore[arg-type]
    per_query = evaluate_run(run, split.qrels)
    metrics = mean_metrics(per_query)
    out = Path(output_dir)
    write_run(out / "runs" / f"{language}.trec", run, tag=f"mdr-{language}")
    names = sorted(metrics)
    atomic_write_lines(
        out / "per_query" / f"{language}.tsv",
        ["query_id\t" + "\t".join(names)]
        + [f"{qid}\t" + "\t".join(f"{per_query[qid][n]:.6f}" for n in names) for qid in sorted(per_query)],
    )
    log.info("%s: %s over %d queries", language, {k: round(v, 4) for k, v in metrics.items()}, len(per_query))
    return EvaluationResult(language, metrics, per_query, run, len(per_query))
