"""Dense evaluation at scale: encode a synthetic corpus into shards (tiny model) and search it, per stage.

    python benchmarks/scale_search.py --sizes 10000 100000
    python benchmarks/scale_search.py --sizes 1000000 --encode-max 100000     # 1M: search over synthetic shards

Each size runs in a fresh process through the real path (``mdr.evaluation.evaluator.dense_retrieve``: shards of
``--shard-rows`` rows written under the work folder, one faiss index per shard, top-100 merged) and prints one
JSON line: corpus encoding time and passages/s, query encoding, search, peak RSS and the shards' size on disk.
Above ``--encode-max`` passages the corpus is not encoded (on 2 CPU cores the tiny model needs ~40 minutes per
million): random unit vectors are written as the shards the encoder would have produced (same identity, so
``dense_retrieve`` takes them as finished) and the line reports the measured search plus ``encode_s_linear``,
the encode time extrapolated linearly from the largest encoded size of the same invocation. Growth exponents
(log-log slopes) close the output. ``--fp16`` stores the shards and the index in float16.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def worker(size: int, encode: bool, args: argparse.Namespace) -> dict:
    """One measurement in this (fresh) process."""
    import torch
    from scale_synthetic import PeakSampler, rss_mb, synthetic_split

    from mdr.evaluation.evaluator import corpus_shards, dense_retrieve
    from mdr.models.bi_encoder import BiEncoder, EncoderSettings, load_tokenizer
    from mdr.models.precision import autocast_dtype

    from common import model_dir

    torch.set_num_threads(args.threads)
    split = synthetic_split(size, args.workdir)
    path = model_dir("tiny")
    settings = EncoderSettings(pooling="mean", normalize=True, passage_max_length=args.passage_length)
    encoder, tokenizer = BiEncoder.from_pretrained(path, settings), load_tokenizer(path)
    dtype = autocast_dtype("cpu") if args.bf16 == "auto" else None
    floor = rss_mb()
    with tempfile.TemporaryDirectory(prefix="mdr-scale-search-", dir=args.workdir) as tmp, PeakSampler() as sampler:
        synthetic_s = None
        if not encode:
            started = time.perf_counter()
            shards = corpus_shards(encoder, tokenizer, split.corpus, tmp, dtype, args.fp16, args.shard_rows)
            rng = np.random.default_rng(0)
            for shard in range(shards.plan.num_shards):
                start, end = shards.plan.bounds(shard)
                array, path_tmp = shards.create(shard, encoder.query_backbone.config.hidden_size)
                vectors = rng.standard_normal((end - start, array.shape[1]), dtype=np.float32)
                array[:] = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
                shards.commit(shard, array, path_tmp)
            synthetic_s = round(time.perf_counter() - started, 2)
        found = dense_retrieve(
            encoder,
            tokenizer,
            split.corpus,
            split.queries,
            100,
            tmp,
            batch_size=args.batch,
            autocast_dtype=dtype,
            fp16_index=args.fp16,
            shard_rows=args.shard_rows,
        )
        disk_mb = sum(f.stat().st_size for f in Path(tmp).iterdir()) / 2**20
    memory = rss_mb()
    seconds = found.seconds
    record = {
        "benchmark": "encode_search",
        "size": size,
        "queries": len(split.queries),
        "model": "tiny",
        "threads": args.threads,
        "autocast": str(dtype).removeprefix("torch.") if dtype else None,
        "fp16_index": args.fp16,
        "shard_rows": args.shard_rows,
        "shards": found.shards.plan.num_shards,
        "encoded": bool(encode),
        "encode_s": seconds["encode_corpus"] if encode else None,
        "passages_per_s": round(size / seconds["encode_corpus"], 1) if encode else None,
        "synthetic_shards_s": synthetic_s,
        "query_encode_s": seconds["encode_queries"],
        "search_s": seconds["search"],
        "embeddings_disk_mb": round(disk_mb, 1),
        "floor_rss_mb": floor["VmRSS"],
        "peak_mb": memory["peak_self"],
        "peak_anon_mb": sampler.peaks["RssAnon"],
        "peak_file_mb": sampler.peaks["RssFile"],
        "positive_in_top100": int(
            sum(
                split.corpus.row(next(iter(split.qrels[q]))) in set(found.rows[i].tolist())
                for i, q in enumerate(found.query_ids)
            )
        ),
    }
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--encode-max", type=int, default=100_000, help="largest size actually encoded")
    parser.add_argument("--shard-rows", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--passage-length", type=int, default=192)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bf16", choices=["auto", "false"], default="auto")
    parser.add_argument("--fp16", action="store_true")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "mdr-scale")
    parser.add_argument("--worker", type=int, nargs=2, metavar=("SIZE", "ENCODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.worker:
        print(json.dumps(worker(args.worker[0], bool(args.worker[1]), args)))
        return
    from scale_synthetic import growth_exponents, synthetic_corpus

    records = []
    rate = None
    for size in args.sizes:
        synthetic_corpus(size, args.workdir)
        encode = size <= args.encode_max
        command = [sys.executable, __file__, "--worker", str(size), str(int(encode))]
        for flag in ("shard_rows", "batch", "passage_length", "threads", "bf16", "workdir"):
            command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
        command += ["--fp16"] if args.fp16 else []
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(json.dumps({"benchmark": "encode_search", "size": size, "error": done.stderr[-1500:]}), flush=True)
            continue
        record = json.loads(done.stdout.strip().splitlines()[-1])
        if record["encoded"]:
            rate = record["passages_per_s"]
        elif rate:
            record["encode_s_linear"] = round(size / rate, 1)
        records.append(record)
        print(json.dumps(record), flush=True)
    for value in ("encode_s", "search_s", "peak_mb"):
        for line in growth_exponents([dict(r, kind="tiny") for r in records], "kind", value):
            print(json.dumps({"benchmark": "encode_search", **line}))


if __name__ == "__main__":
    main()
