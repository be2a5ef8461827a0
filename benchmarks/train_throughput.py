"""Training throughput of mdr's bi-encoder step vs sentence-transformers' MultipleNegativesRankingLoss.

Same model, same real batches (xquad-sent queries with 1 positive + k BM25/random negatives), same sequence
lengths, same AdamW; one optimizer step = encode Q queries and Q*(1+k) passages, loss, backward, step.

    python benchmarks/train_throughput.py --model tiny --batch 16 --negatives 4
    python benchmarks/train_throughput.py --model me5_small --batch 8 --negatives 4 --device cuda --bf16
"""

from __future__ import annotations

import argparse
import json

import torch

from mdr.data.collator import BiEncoderCollator
from mdr.data.negatives import NegativeSampler
from mdr.data.readers import LocalReader
from mdr.losses import InfoNCELoss
from mdr.models.bi_encoder import BiEncoder, EncoderSettings, load_tokenizer

from common import DATA_DIR, model_dir, peak_memory_mb, timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "me5_small"], default="tiny")
    parser.add_argument("--language", default="th")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--negatives", type=int, default=4)
    parser.add_argument("--query-length", type=int, default=48)
    parser.add_argument("--passage-length", type=int, default=96)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="autocast to bfloat16 (GPU)")
    args = parser.parse_args()

    path = model_dir(args.model)
    tokenizer = load_tokenizer(path)
    split = LocalReader(DATA_DIR / "xquad/xquad-sent" / args.language, args.language).load("train")
    examples, _ = NegativeSampler(args.negatives, 0.0, seed=0).examples(split, {}, epoch=0)
    collate = BiEncoderCollator(tokenizer, split.corpus, args.query_length, args.passage_length)
    batches = [collate(examples[i : i + args.batch]) for i in range(0, args.batch * (args.steps + 2), args.batch)]
    tokens = sum(
        int(b.query_inputs["attention_mask"].sum() + b.passage_inputs["attention_mask"].sum()) for b in batches
    ) / len(batches)
    autocast = dict(device_type=args.device, dtype=torch.bfloat16, enabled=args.bf16)
    results = {}

    # mdr: BiEncoder + InfoNCELoss (scale 20 = 1/0.05, as MNRL's default)
    encoder = BiEncoder.from_pretrained(path, EncoderSettings(pooling="mean", normalize=True)).to(args.device).train()
    loss_fn = InfoNCELoss(temperature=0.05)
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=1e-5)
    cursor = iter(range(10**9))

    def mdr_step() -> None:
        batch = batches[next(cursor) % len(batches)]
        q = {k: v.to(args.device) for k, v in batch.query_inputs.items()}
        p = {k: v.to(args.device) for k, v in batch.passage_inputs.items()}
        with torch.autocast(**autocast):
            loss = loss_fn(encoder.encode_queries(q), encoder.encode_passages(p)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    results["mdr"] = timed(mdr_step, 2, args.steps, args.device)

    # sentence-transformers: the same weights, mean pooling + normalize, MNRL with (anchor, pos, neg_1..k)
    from sentence_transformers import SentenceTransformer, models
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    transformer = models.Transformer(str(path), max_seq_length=args.passage_length)
    st_model = SentenceTransformer(
        modules=[transformer, models.Pooling(transformer.get_word_embedding_dimension(), "mean"), models.Normalize()],
        device=args.device,
    )
    st_loss = MultipleNegativesRankingLoss(st_model, scale=20.0)
    st_optimizer = torch.optim.AdamW(st_model.parameters(), lr=1e-5)
    st_model.train()
    group = 1 + args.negatives

    def st_step() -> None:
        batch = batches[next(cursor) % len(batches)]
        q = {k: v.to(args.device) for k, v in batch.query_inputs.items()}
        p = {k: v.to(args.device) for k, v in batch.passage_inputs.items()}
        columns = [q] + [{k: v[i::group] for k, v in p.items()} for i in range(group)]
        with torch.autocast(**autocast):
            loss = st_loss(columns, None)
        loss.backward()
        st_optimizer.step()
        st_optimizer.zero_grad(set_to_none=True)

    results["sentence_transformers"] = timed(st_step, 2, args.steps, args.device)

    report = {
        "model": args.model,
        "device": args.device,
        "bf16": args.bf16,
        "batch": args.batch,
        "negatives": args.negatives,
        "lengths": [args.query_length, args.passage_length],
        "tokens_per_step": round(tokens),
        **{f"{name}_groups_per_s": round(args.batch / s, 2) for name, s in results.items()},
        **{f"{name}_tokens_per_s": round(tokens / s) for name, s in results.items()},
        "mdr_over_st": round(results["sentence_transformers"] / results["mdr"], 3),
        "peak_memory_mb": round(peak_memory_mb(args.device)),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
