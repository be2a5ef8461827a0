"""Evaluating a run's encoder on its test split(s) and writing its record (``metrics.json``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from mdr.data.schema import RetrievalSplit
from mdr.distributed import world_size_and_rank
from mdr.evaluation.evaluator import evaluate_language
from mdr.evaluation.search import search_device
from mdr.models.bi_encoder import BiEncoder
from mdr.models.precision import autocast_dtype
from mdr.spec import Spec
from mdr.tracking import publish_to_wandb
from mdr.utils.environment import code_version, device_name, faiss_version
from mdr.utils.instantiate import build_reader
from mdr.utils.io import atomic_write_json
from mdr.utils.logging import get_logger
from mdr.utils.run_record import RunRecord

log = get_logger(__name__)


def evaluate_and_report(
    spec: Spec,
    encoder: BiEncoder,
    tokenizer: Any,
    test: RetrievalSplit | dict[str, RetrievalSplit],
    out: Path,
    extra: dict[str, Any],
    distributed: bool = False,
) -> dict[str, Any]:
    """Evaluate on the test split(s) (a dict: one per evaluation language), write metrics.json, print the measures;
    ``distributed``: every rank searches its shards, rank 0 writes the files and returns the payload, others ``{}``."""
    evaluation = spec.evaluation
    world, rank = world_size_and_rank() if distributed else (1, 0)
    use_cuda = torch.cuda.is_available() and (spec.trainer is None or spec.trainer.accelerator != "cpu")
    device = torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")
    encoder.to(device)
    bf16 = evaluation.bf16
    autocast = autocast_dtype(device) if bf16 == "auto" else (torch.bfloat16 if bf16 else None)
    search = search_device(evaluation.faiss_gpu, torch.cuda.device_count() if use_cuda else 0)
    log.info("evaluation: encoding on %s (%s), faiss searching on %s", device, device_name(device), search)
    tests = test if isinstance(test, dict) else {spec.language.code: test}
    results = {}
    for code, split in tests.items():  # one run file and per-query file per evaluation language
        results[code] = evaluate_language(
            encoder,
            tokenizer,
            split,
            code,
            out,
            depth=evaluation.depth,
            batch_size=evaluation.batch_size,
            device=device,
            use_gpu_index=evaluation.faiss_gpu,
            autocast_dtype=autocast,
            fp16_index=evaluation.fp16_index,
            shard_rows=evaluation.shard_size,
            keep_embeddings=evaluation.keep_embeddings,
            distributed=distributed,
        )
    if rank != 0:
        return {}
    primary = spec.language.code if spec.language.code in results else next(iter(results))
    result = results[primary]
    low_resource = {item.language.code: item.language.low_resource for item in evaluation.languages}
    record = RunRecord(
        language=primary,
        low_resource=low_resource[primary],
        data=spec.data.name,
        model=spec.model.name,
        stage=spec.schedule.name if spec.schedule is not None else "zero_shot",  # evaluate.py: zero_shot
        hard_proportion=spec.negatives.hard_proportion if spec.trains else None,
        num_negatives=spec.negatives.num_negatives if spec.trains else None,
        seed=spec.seed,
        # the split read, by its published name (MIRACL's mdr `test` is its dev)
        split=build_reader(spec.data.reader).published_split(spec.data.test_split),
        depth=evaluation.depth,  # what the measures were computed over: mrr@10 at depth 10
        num_queries=result.num_queries,
        metrics=result.metrics,
        run_file=f"runs/{primary}.trec",
        per_query_file=f"per_query/{primary}.tsv",
        code=code_version(),  # mdr's git commit (dirty: uncommitted changes) and package versions
        evaluation={
            "autocast": str(autocast).removeprefix("torch.") if autocast else None,
            "fp16_index": evaluation.fp16_index,
            "ranks": world,
            "device": device_name(device),  # where the corpus was encoded
            "faiss": search,  # where faiss searched: gpu | cpu (evaluation.faiss_gpu, the faiss build)
            "faiss_version": faiss_version(),
        },
        **extra,
    )
    if isinstance(test, dict):  # evaluation.languages: one section per language, the primary's also on top
        record = replace(
            record,
            evaluation_languages=list(results),
            per_language={
                code: {
                    "low_resource": low_resource[code],
                    "num_queries": found.num_queries,
                    "metrics": found.metrics,
                    "run_file": f"runs/{code}.trec",
                    "per_query_file": f"per_query/{code}.tsv",
                }
                for code, found in results.items()
            },
        )
    payload = record.to_json()
    atomic_write_json(out / "metrics.json", payload)
    publish_to_wandb(spec, out, payload)
    shown = {"mrr": "MRR", "recall": "Recall", "ndcg": "nDCG"}
    cell = f"{payload['model']} {payload['stage']} p={payload['hard_proportion']} seed={payload['seed']}"
    for code, found in results.items():
        values = " ".join(f"{shown[n.split('@')[0]]}@{n.split('@')[1]}={v:.4f}" for n, v in found.metrics.items())
        print(f"[mdr] {code} {cell}: {values}", flush=True)
    return payload
