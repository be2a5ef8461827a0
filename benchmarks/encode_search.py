"""Corpus encoding throughput, faiss search time (real corpus and a synthetic 1M x dim index), peak memory.

python benchmarks/encode_search.py --model me5_small
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from mdr.data.collator import passage_text
from mdr.data.readers import LocalReader
from mdr.evaluation.evaluator import encode_texts
from mdr.evaluation.search import FlatIPSearcher
from mdr.models.bi_encoder import BiEncoder, EncoderSettings, load_tokenizer

from common import DATA_DIR, model_dir, peak_memory_mb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", choices=["tiny", "me5_small"], default="tiny")
    parser.add_argument("--language", default="th")
    parser.add_argument("--passage-length", type=int, default=192)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--synthetic-docs", type=int, default=1_000_000)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args()

    path = model_dir(args.model)
    tokenizer = load_tokenizer(path)
    encoder = BiEncoder.from_pretrained(
        path, EncoderSettings(pooling="mean", normalize=True, passage_max_length=args.passage_length)
    )
    encoder.to(args.device).eval()
    split = LocalReader(DATA_DIR / "xquad/xquad-sent" / args.language, args.language).load("test")
    texts = [passage_text(p) for p in split.corpus.values()]
    tokens = sum(len(ids) for ids in tokenizer(texts, truncation=True, max_length=args.passage_length)["input_ids"])
    dtype = torch.bfloat16 if args.bf16 else None
    encode_texts(encoder.encode_passages, tokenizer, texts[:64], args.passage_length, args.batch, args.device, dtype)
    started = time.perf_counter()
    vectors = encode_texts(
        encoder.encode_passages, tokenizer, texts, args.passage_length, args.batch, args.device, dtype
    )
    encode_seconds = time.perf_counter() - started

    queries = vectors[: min(635, len(vectors))]
    started = time.perf_counter()
    searcher = FlatIPSearcher(vectors)
    searcher.search(queries, 100)
    small_search = time.perf_counter() - started

    rng = np.random.default_rng(0)
    synthetic = rng.standard_normal((args.synthetic_docs, vectors.shape[1]), dtype=np.float32)
    started = time.perf_counter()
    big = FlatIPSearcher(synthetic)
    build_seconds = time.perf_counter() - started
    started = time.perf_counter()
    big.search(rng.standard_normal((1000, vectors.shape[1]), dtype=np.float32), 100)
    big_search = time.perf_counter() - started
    print(
        json.dumps(
            {
                "model": args.model,
                "device": args.device,
                "bf16": args.bf16,
                "passages": len(texts),
                "passages_per_s": round(len(texts) / encode_seconds, 1),
                "tokens_per_s": round(tokens / encode_seconds),
                "faiss_gpu": searcher.on_gpu,
                "search_real_ms": round(1000 * small_search, 1),
                "synthetic_index": f"{args.synthetic_docs}x{vectors.shape[1]}",
                "synthetic_build_s": round(build_seconds, 2),
                "synthetic_1000_queries_top100_s": round(big_search, 2),
                "peak_memory_mb": round(peak_memory_mb(args.device)),
            }
        )
    )


if __name__ == "__main__":
    main()
