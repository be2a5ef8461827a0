"""mdr's real training path (train.py: Hydra config, data module, Lightning Trainer) against sentence-transformers'
own trainer (SentenceTransformerTrainer + MultipleNegativesRankingLoss) on the same examples, batches and settings.

Both sides train on mdr's epoch examples (same queries, positives and k negatives per query, in the order of mdr's
seeded shuffle), with the same batch size, truncation lengths, prefixes, precision, AdamW settings, linear warm-up
schedule and gradient clipping. Each side runs in its own process (so peak memory is its own) and timestamps every
optimiser step; seconds per step are the mean interval after the first two steps, and `*_median_*` the median
interval (the steady state where a shared machine stalls a few steps; fastest run of each side). Prints one JSON line.
sentence-transformers truncates queries and passages at mdr's two lengths through its per-task ``query_length`` /
``document_length`` (``router_mapping`` names the anchor column "query"); its trainer needs ``accelerate``.

    python benchmarks/train_e2e.py --model tiny --precision fp32 --max-steps 30
    python benchmarks/train_e2e.py --model me5_small --precision bf16 --max-steps 6 --batch 8 --negatives 4
    python benchmarks/train_e2e.py --memory --batch 8   # peak RSS: plain, GradCache chunk 4, checkpointing
    python benchmarks/train_e2e.py --quality       # MRR@100 of both trainers, tiny model, 4 epochs, 2 seeds

(me5_small at batch 16 peaked at 12.7 GB (bf16) / 14.6 GB (fp32) in sentence-transformers' process and 8.7 / 9.5 GB
in mdr's: run it on an otherwise idle 24 GB machine.) ``--chunk-tokens N`` overrides mdr's ``train.chunk_tokens``;
mdr trains with its default ``train.fast_dropout=auto`` (fast masks on CPU); ``--torch-dropout`` sets it to false
(sentence-transformers always keeps torch's dropout).
On a busy machine, ``--repeats 3`` alternates the two sides three times and keeps each side's fastest run, and
``--threads N`` fixes both sides' OpenMP threads (oversubscribed cores stall every OpenMP barrier).

Speed runs use ``loss.mask_false_negatives=false`` so both sides compute the same loss; a third run with the mask
on (mdr's default) gives ``masked_overhead``. MFU = 6 x non-embedding parameters x real tokens/s over this
machine's 2048x2048 matmul rate in the run's precision (both fp32 and bf16 rates are measured and printed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from common import CACHE_DIR, DATA_DIR, ROOT

LIGHTNING_PRECISION = {"fp32": "32-true", "bf16": "bf16-mixed"}


# ---------------------------------------------------------------------------------------------- shared helpers


def default_precision() -> str:
    """bf16 where the hardware runs it natively (mdr's ``trainer.precision: auto``), else fp32."""
    from mdr.models.precision import bf16_supported

    return "bf16" if bf16_supported("cuda" if torch.cuda.is_available() else "cpu") else "fp32"


def current_rss_mb() -> float:
    """Resident memory of this process now, in MiB."""
    return _status_kb("VmRSS") / 1024


def peak_rss_mb() -> float:
    """Peak resident memory of this process since start or since :func:`reset_peak_rss`, in MiB."""
    return _status_kb("VmHWM") / 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (Linux ``clear_refs`` 5); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def non_embedding_parameters(model: torch.nn.Module) -> int:
    """Parameters outside the embedding tables (and outside an unused BERT pooler): the 6N of 6ND."""
    return sum(
        p.numel() for name, p in model.named_parameters() if ".embeddings." not in f".{name}" and "pooler." not in name
    )


def matmul_gflops(dtype: torch.dtype, device: str, n: int = 2048, repeats: int = 8) -> float:
    """Best observed rate of an n x n matmul in ``dtype`` (GFLOP/s), as the machine's practical peak."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = math.inf
    for i in range(repeats + 2):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best / 1e9


def compose_cfg(args: argparse.Namespace, out: Path, mask: bool, epochs: int, max_steps: int | None) -> Any:
    """The real ``conf/train.yaml`` composed in-process, with the benchmark's overrides."""
    from hydra import compose, initialize_config_dir

    from mdr.utils.instantiate import register_resolvers

    register_resolvers()
    overrides = [
        f"model={args.model}",
        f"language={args.language}",
        "data=xquad",
        f"paths.data_dir={DATA_DIR}",
        f"paths.cache_dir={CACHE_DIR}",
        f"paths.output_dir={out}",
        f"seed={args.seed}",
        f"trainer.max_epochs={epochs}",
        f"+trainer.max_steps={max_steps if max_steps is not None else -1}",
        f"train.batch_size={args.batch}",
        f"negatives.num_negatives={args.negatives}",
        f"negatives.hard_proportion={args.hard_proportion}",
        f"trainer.precision={LIGHTNING_PRECISION[args.precision]}",
        f"loss.mask_false_negatives={str(mask).lower()}",
        "logger.wandb.enabled=false",
        "trainer.enable_progress_bar=false",
        "train.save_encoder=false",
    ]
    if args.device == "cuda":
        overrides.append("trainer=gpu")
    if args.query_length:
        overrides.append(f"model.query_max_length={args.query_length}")
    if args.passage_length:
        overrides.append(f"model.passage_max_length={args.passage_length}")
    if args.chunk_tokens:
        overrides.append(f"train.chunk_tokens={args.chunk_tokens}")
    if args.grad_cache:
        overrides += ["train.grad_cache.enabled=true", f"train.grad_cache.chunk_size={args.grad_cache}"]
    if args.gradient_checkpointing:
        overrides.append("train.gradient_checkpointing=true")
    if args.torch_dropout:
        overrides.append("train.fast_dropout=false")
    overrides += args.mdr_override or []
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def planned_batches(cfg: Any, split: Any, pools: Any, epochs: int) -> list[list[Any]]:
    """mdr's batches of TrainingExamples for ``epochs`` epochs, in the order its data module serves them."""
    from mdr.data.datamodule import RetrievalDataModule
    from mdr.data.negatives import NegativeSampler

    sampler = NegativeSampler(
        cfg.negatives.num_negatives, cfg.negatives.hard_proportion, seed=cfg.seed, strict=cfg.negatives.strict
    )
    size = int(cfg.train.batch_size)
    module = RetrievalDataModule(split, pools, sampler, None, size, cfg.seed, 0)  # type: ignore[arg-type]
    batches = []
    for epoch in range(epochs):
        examples = list(module.dataloader_for_epoch(epoch).dataset)  # the epoch's examples, shuffled as mdr does
        batches += [examples[start : start + size] for start in range(0, len(examples), size)]
    return batches


def example_texts(example: Any, corpus: Any, settings: Any) -> tuple[str, list[str]]:
    """The query string and the [positive, negatives...] passage strings as mdr encodes them."""
    from mdr.data.collator import passage_text

    passages = [
        passage_text(corpus[docid], settings.passage_prefix) for docid in (example.positive, *example.negatives)
    ]
    return settings.query_prefix + example.query, passages


def real_tokens(batches: list[list[Any]], corpus: Any, settings: Any, tokenizer: Any) -> list[int]:
    """Non-padding tokens of each batch (queries and passages, truncated as trained)."""
    counts = []
    for batch in batches:
        queries, passages = [], []
        for example in batch:
            query, texts = example_texts(example, corpus, settings)
            queries.append(query)
            passages += texts
        total = 0
        for texts, length in ((queries, settings.query_max_length), (passages, settings.passage_max_length)):
            encoded = tokenizer(texts, truncation=True, max_length=length, padding=False)
            total += sum(len(ids) for ids in encoded["input_ids"])
        counts.append(total)
    return counts


def steady_state(stamps: list[float], tokens: list[int]) -> dict[str, Any]:
    """Mean and median seconds per step after the first two, and real tokens/s over the same steps.

    The median is the steady state where a shared machine stalls a few steps of a run (both sides alike).
    """
    if len(stamps) < 3:
        return {"seconds": None, "tokens_per_s": None, "steps_timed": 0, "step_seconds": _intervals(stamps)}
    window = stamps[-1] - stamps[1]
    timed = len(stamps) - 2
    return {
        "seconds": window / timed,
        "median_seconds": statistics.median(b - a for a, b in zip(stamps[1:], stamps[2:])),
        "tokens_per_s": sum(tokens[2 : len(stamps)]) / window,
        "tokens_per_step": sum(tokens[2 : len(stamps)]) / timed,
        "steps_timed": timed,
        "step_seconds": _intervals(stamps),
    }


def _intervals(stamps: list[float]) -> list[float]:
    return [round(b - a, 4) for a, b in zip(stamps, stamps[1:])]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------- the two sides


def side_mdr(args: argparse.Namespace, cfg: Any, out: Path) -> dict[str, Any]:
    """mdr's training path exactly as ``mdr.pipeline.train`` runs it, timed at every ``on_train_batch_end``."""
    import lightning.pytorch as pl

    from mdr import pipeline
    from mdr.models.module import BiEncoderModule

    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    train_split, test_split = pipeline.load_splits(cfg)
    encoder, tokenizer = pipeline.load_encoder(cfg)
    pools = pipeline.negative_pools(cfg, train_split, cfg.language)
    plan = planned_batches(cfg, train_split, pools, args.epochs)
    planned_tokens = real_tokens(plan[: args.total_steps], train_split.corpus, encoder.settings, tokenizer)

    stamps: list[float] = []
    cpu_stamps: list[float] = []
    step_peaks: list[float] = []  # peak RSS at each step's end (excludes what follows training, e.g. checkpoints)
    seen: list[tuple[int, int]] = []  # (real, padded) tokens of each batch as mdr's collator packed it
    original = BiEncoderModule.on_train_batch_end

    def on_train_batch_end(self: BiEncoderModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        _sync(args.device)
        stamps.append(time.perf_counter())
        cpu_stamps.append(time.process_time())
        step_peaks.append(peak_rss_mb())
        packed = (getattr(batch, "queries", None), getattr(batch, "passages", None))
        if all(hasattr(p, "real_tokens") for p in packed):
            seen.append(
                (
                    sum(p.real_tokens for p in packed),
                    sum(getattr(p, "padded_tokens", 0) for p in packed),
                )
            )
        return original(self, outputs, batch, batch_idx)

    BiEncoderModule.on_train_batch_end = on_train_batch_end  # type: ignore[method-assign]
    reset_peak_rss()
    rss_before = current_rss_mb()
    started = time.perf_counter()
    fitted = pipeline.fit(cfg, encoder, tokenizer, train_split, pools, out)
    fit_seconds = time.perf_counter() - started
    peak = peak_rss_mb()
    result: dict[str, Any] = {
        "side": "mdr",
        **steady_state(stamps, planned_tokens),
        "cpu_seconds": (cpu_stamps[-1] - cpu_stamps[1]) / (len(cpu_stamps) - 2) if len(cpu_stamps) > 2 else None,
        "steps": len(stamps),
        "fit_seconds": round(fit_seconds, 2),
        "peak_rss_mb": round(peak),
        "peak_rss_training_mb": round(step_peaks[-1]) if step_peaks else None,
        "rss_before_fit_mb": round(rss_before),
        "non_embedding_params": non_embedding_parameters(encoder),
        "attn_implementation": getattr(encoder.query_backbone.config, "_attn_implementation", None),
        "tokens_match": [real for real, _ in seen] == planned_tokens[: len(seen)] if seen else None,
        "padded_tokens_per_step": (sum(padded for _, padded in seen[2:]) / max(1, len(seen) - 2)) if seen else None,
        "summary": {k: v for k, v in fitted["summary"].items() if k != "resumed_from"},
        "optim": optimizer_name(fitted["trainer"].optimizers[0]),
        "torch_threads": torch.get_num_threads(),
    }
    if args.mask_microbench:
        result["mask_loss_ms"] = mask_microbench(cfg, encoder, tokenizer, train_split, pools, args)
    if args.evaluate:
        encoder.eval()
        payload = pipeline.evaluate_and_report(cfg, encoder, tokenizer, test_split, out, {"trainer": "mdr"})
        result["metrics"] = payload["metrics"]
    return result


def optimizer_name(optimizer: torch.optim.Optimizer) -> str:
    """The optimiser class and its implementation (fused / foreach / for-loop)."""
    defaults = optimizer.defaults
    kind = "fused" if defaults.get("fused") else "foreach" if defaults.get("foreach") else "default"
    return f"{type(optimizer).__name__.lower()}:{kind}"


def mask_microbench(cfg: Any, encoder: Any, tokenizer: Any, split: Any, pools: Any, args: argparse.Namespace) -> dict:
    """Milliseconds of one InfoNCE forward + backward on a real batch's ids, with and without the mask."""
    from mdr.data.collator import BiEncoderCollator
    from mdr.losses import InfoNCELoss

    settings = encoder.settings
    collator = BiEncoderCollator(tokenizer, split.corpus, settings.query_max_length, settings.passage_max_length)
    batch = collator(planned_batches(cfg, split, pools, 1)[0])
    dim = int(encoder.query_backbone.config.hidden_size)
    queries = torch.nn.functional.normalize(torch.randn(batch.num_queries, dim), dim=-1)  # (Q, dim)
    passages = torch.nn.functional.normalize(torch.randn(len(batch.passages), dim), dim=-1)  # (Q * (1 + k), dim)
    losses = {
        name: InfoNCELoss(float(cfg.model.temperature), mask_false_negatives=name == "on") for name in ("off", "on")
    }
    best = {name: math.inf for name in losses}
    for _ in range(50):  # interleaved, so a burst of load on the shared machine hits both alike
        for name, loss_fn in losses.items():
            q = queries.clone().requires_grad_(True)
            p = passages.clone().requires_grad_(True)
            started = time.perf_counter()
            loss_fn(q, p, batch.passage_ids, batch.positive_ids).loss.backward()
            best[name] = min(best[name], time.perf_counter() - started)
    timings = {name: round(seconds * 1e3, 3) for name, seconds in best.items()}
    return timings


def side_st(args: argparse.Namespace, cfg: Any, out: Path) -> dict[str, Any]:
    """SentenceTransformerTrainer + MultipleNegativesRankingLoss on mdr's batches, timed at every ``on_step_end``."""
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.base.sampler import DefaultBatchSampler
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from sentence_transformers.util import cos_sim, dot_score
    from transformers import TrainerCallback

    from mdr import pipeline
    from mdr.models.bi_encoder import BiEncoder, load_tokenizer
    from mdr.utils.instantiate import encoder_settings, ensure_model_files

    train_split, test_split = pipeline.load_splits(cfg)
    ensure_model_files(cfg.model)
    path = str(cfg.model.name_or_path)
    settings = encoder_settings(cfg.model)
    tokenizer = load_tokenizer(path)
    pools = pipeline.negative_pools(cfg, train_split, cfg.language)
    plan = planned_batches(cfg, train_split, pools, args.epochs)[: args.total_steps]
    planned_tokens = real_tokens(plan, train_split.corpus, settings, tokenizer)

    # one row per example, columns anchor, positive, negative_1..k; the batch sampler replays mdr's batches
    k = int(cfg.negatives.num_negatives)
    columns = ["anchor", "positive", *(f"negative_{i + 1}" for i in range(k))]
    rows: dict[str, list[str]] = {name: [] for name in columns}
    batches: list[list[int]] = []
    for batch in plan:
        start = len(rows["anchor"])
        for example in batch:
            query, passages = example_texts(example, train_split.corpus, settings)
            for name, text in zip(columns, [query, *passages]):
                rows[name].append(text)
        batches.append(list(range(start, len(rows["anchor"]))))
    dataset = Dataset.from_dict(rows)

    class ReplayBatchSampler(DefaultBatchSampler):
        """Yields the precomputed batches, in order (no shuffling)."""

        def __iter__(self):  # type: ignore[no-untyped-def]
            yield from (list(batch) for batch in batches)

        def __len__(self) -> int:
            return len(batches)

    # ST 6.x Transformer truncates per task: router_mapping sends "query" / "document" to preprocess
    transformer = Transformer(
        path,
        max_seq_length=settings.passage_max_length,
        query_length=settings.query_max_length,
        document_length=settings.passage_max_length,
    )
    modules: list[torch.nn.Module] = [transformer, Pooling(transformer.get_embedding_dimension(), settings.pooling)]
    if settings.normalize:
        modules.append(Normalize())
    model = SentenceTransformer(modules=modules, device=args.device)
    loss = MultipleNegativesRankingLoss(
        model, scale=1.0 / float(cfg.model.temperature), similarity_fct=cos_sim if settings.normalize else dot_score
    )
    total = len(batches)
    training_args = SentenceTransformerTrainingArguments(
        output_dir=str(out / "st"),
        per_device_train_batch_size=int(cfg.train.batch_size),
        num_train_epochs=1,
        max_steps=total,
        learning_rate=float(cfg.train.learning_rate),
        weight_decay=float(cfg.train.weight_decay),
        warmup_steps=int(float(cfg.train.warmup_ratio) * total),  # as mdr: int(warmup_ratio * total steps)
        lr_scheduler_type="linear",
        max_grad_norm=float(cfg.train.gradient_clip_val or 0.0),
        bf16=args.precision == "bf16",
        use_cpu=args.device == "cpu",
        seed=int(cfg.seed),
        batch_sampler=lambda dataset, **kwargs: ReplayBatchSampler(dataset, **kwargs),
        router_mapping={name: ("query" if name == "anchor" else "document") for name in columns},
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        **({"optim": args.st_optim} if args.st_optim else {}),
    )

    stamps: list[float] = []
    cpu_stamps: list[float] = []
    step_peaks: list[float] = []  # peak RSS at each step's end (excludes what follows training, e.g. checkpoints)

    class StepTimer(TrainerCallback):
        def on_step_end(self, *_: Any, **__: Any) -> None:
            _sync(args.device)
            stamps.append(time.perf_counter())
            cpu_stamps.append(time.process_time())
            step_peaks.append(peak_rss_mb())

    trainer = SentenceTransformerTrainer(
        model=model, args=training_args, train_dataset=dataset, loss=loss, callbacks=[StepTimer()]
    )
    inner = trainer.data_collator
    seen: list[tuple[list[str], int, int]] = []  # (anchors, real tokens, padded tokens) of each collated batch

    class RecordingCollator:
        """The trainer's own collator, noting which anchors each batch held and its real/padded tokens."""

        def __init__(self) -> None:
            self.valid_label_columns = inner.valid_label_columns

        def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
            batch = inner(features)
            masks = [batch[f"{name}_attention_mask"] for name in columns]
            # MNRL runs the anchor column alone and the candidate columns merged, padded to their widest
            padded = masks[0].numel() + sum(m.shape[0] for m in masks[1:]) * max(m.shape[1] for m in masks[1:])
            seen.append(([f["anchor"] for f in features], int(sum(m.sum() for m in masks)), int(padded)))
            return batch

        def __getattr__(self, name: str) -> Any:
            return getattr(inner, name)

    trainer.data_collator = RecordingCollator()
    reset_peak_rss()
    rss_before = current_rss_mb()
    started = time.perf_counter()
    trainer.train()
    fit_seconds = time.perf_counter() - started
    peak = peak_rss_mb()
    expected = [[example_texts(e, train_split.corpus, settings)[0] for e in batch] for batch in plan]
    result: dict[str, Any] = {
        "side": "st",
        **steady_state(stamps, planned_tokens),
        "cpu_seconds": (cpu_stamps[-1] - cpu_stamps[1]) / (len(cpu_stamps) - 2) if len(cpu_stamps) > 2 else None,
        "steps": len(stamps),
        "fit_seconds": round(fit_seconds, 2),
        "peak_rss_mb": round(peak),
        "peak_rss_training_mb": round(step_peaks[-1]) if step_peaks else None,
        "rss_before_fit_mb": round(rss_before),
        "non_embedding_params": non_embedding_parameters(transformer.auto_model),
        "attn_implementation": getattr(transformer.auto_model.config, "_attn_implementation", None),
        "order_matches": [anchors for anchors, _, _ in seen] == expected[: len(seen)] and len(seen) == len(expected),
        "tokens_match": [tokens for _, tokens, _ in seen] == planned_tokens[: len(seen)],
        "padded_tokens_per_step": sum(padded for _, _, padded in seen[2:]) / max(1, len(seen) - 2),
        "optim": str(getattr(training_args.optim, "value", training_args.optim)),
        "bf16": bool(training_args.bf16),
        "torch_threads": torch.get_num_threads(),
    }
    if args.evaluate:
        encoder = BiEncoder(transformer.auto_model, None, settings).eval()
        payload = pipeline.evaluate_and_report(cfg, encoder, tokenizer, test_split, out, {"trainer": "st"})
        result["metrics"] = payload["metrics"]
    return result


def side_untrained(args: argparse.Namespace, cfg: Any, out: Path) -> dict[str, Any]:
    """MRR@100 of the configured model before any training (the quality mode's floor)."""
    from mdr import pipeline

    _, test_split = pipeline.load_splits(cfg)
    encoder, tokenizer = pipeline.load_encoder(cfg)
    payload = pipeline.evaluate_and_report(cfg, encoder.eval(), tokenizer, test_split, out, {"trainer": None})
    return {"side": "untrained", "metrics": payload["metrics"]}


def run_side(args: argparse.Namespace) -> None:
    """Child process: run one side and write its result JSON to ``--result``."""
    os.environ.setdefault("WANDB_MODE", "offline")
    with tempfile.TemporaryDirectory(prefix="mdr-e2e-") as tmp:
        out = Path(tmp) / "run"
        cfg = compose_cfg(args, out, args.mask == "on", args.epochs, args.max_steps)
        side = {"mdr": side_mdr, "st": side_st, "untrained": side_untrained}[args.side]
        result = side(args, cfg, out)
    Path(args.result).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------- the parent


def child(args: argparse.Namespace, side: str, **changes: Any) -> dict[str, Any]:
    """Run one side in a fresh interpreter (its own peak RSS) and return its result."""
    settings = {**vars(args), **changes}
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        result_path = Path(handle.name)
    command = [sys.executable, str(Path(__file__).resolve()), "--side", side, "--result", str(result_path)]
    for key in (
        "model",
        "language",
        "precision",
        "device",
        "batch",
        "negatives",
        "hard_proportion",
        "seed",
        "epochs",
        "total_steps",
        "query_length",
        "passage_length",
        "chunk_tokens",
        "grad_cache",
        "st_optim",
        "mask",
    ):
        if settings.get(key) is not None:
            command += [f"--{key.replace('_', '-')}", str(settings[key])]
    if settings.get("max_steps") is not None:
        command += ["--max-steps", str(settings["max_steps"])]
    for override in settings.get("mdr_override") or []:
        command += ["--mdr-override", override]
    for flag in ("gradient_checkpointing", "evaluate", "mask_microbench", "torch_dropout"):
        if settings.get(flag):
            command.append(f"--{flag.replace('_', '-')}")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_SILENT": "true"}
    if args.threads:
        env.update({"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)})
    started = time.perf_counter()
    process = subprocess.run(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False
    )
    if args.verbose or process.returncode:
        sys.stderr.write(process.stdout)
    if process.returncode:
        raise SystemExit(f"{side} run failed (exit {process.returncode}): {' '.join(command)}")
    result = json.loads(result_path.read_text())
    result_path.unlink()
    result["process_seconds"] = round(time.perf_counter() - started, 1)
    shown = {key: value for key, value in result.items() if key != "summary"}
    print(
        f"[train_e2e] {side} mask={settings.get('mask')}: {json.dumps(shown)}",
        file=sys.stderr,
        flush=True,
    )
    return result


def batches_per_epoch(args: argparse.Namespace) -> int:
    """Training batches in one epoch of the configured language."""
    from mdr.data.readers import LocalReader

    split = LocalReader(DATA_DIR / "xquad/xquad-sent" / args.language, args.language).load("train")
    queries = sum(1 for query_id in split.queries if split.positives(query_id))
    return math.ceil(queries / args.batch)


def machine() -> dict[str, Any]:
    """Where and when the figures were taken, and what else was running."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
    }


def peaks(device: str) -> dict[str, float]:
    """Measured 2048x2048 matmul rates, fp32 and bf16, in GFLOP/s."""
    return {
        "peak_fp32_gflops": round(matmul_gflops(torch.float32, device), 1),
        "peak_bf16_gflops": round(matmul_gflops(torch.bfloat16, device), 1),
    }


def speed(args: argparse.Namespace) -> dict[str, Any]:
    """mdr vs sentence-transformers steady-state step times, tokens/s, memory, MFU, and the mask's overhead."""
    args.epochs = max(1, math.ceil(args.max_steps / batches_per_epoch(args)))
    args.total_steps = args.max_steps
    rates = peaks(args.device)
    mdr_runs, st_runs = [], []
    for repeat in range(args.repeats):  # alternating, each side's fastest run kept: load bursts only slow runs down
        mdr_runs.append(child(args, "mdr", mask="off", mask_microbench=repeat == 0))
        st_runs.append(child(args, "st", mask="off"))
    mdr = min(mdr_runs, key=lambda run: run["seconds"])
    st = min(st_runs, key=lambda run: run["seconds"])
    mdr.setdefault("mask_loss_ms", mdr_runs[0].get("mask_loss_ms"))
    mdr_median = min(run["median_seconds"] for run in mdr_runs)  # each side's fastest run by its median step
    st_median = min(run["median_seconds"] for run in st_runs)
    masked = child(args, "mdr", mask="on") if not args.skip_masked else None
    peak = rates[f"peak_{args.precision}_gflops"] * 1e9
    report: dict[str, Any] = {
        "model": args.model,
        "language": args.language,
        "precision": args.precision,
        "lightning_precision": LIGHTNING_PRECISION[args.precision],
        "device": args.device,
        "threads": mdr["torch_threads"],
        "batch": args.batch,
        "negatives": args.negatives,
        "hard_proportion": args.hard_proportion,
        "mdr_fast_dropout": not args.torch_dropout and args.device == "cpu",
        "lengths": _lengths(args),
        "steps": args.max_steps,
        "steps_timed": min(mdr["steps_timed"], st["steps_timed"]),
        "mdr_seconds": _round(mdr["seconds"]),
        "st_seconds": _round(st["seconds"]),
        "mdr_over_st": _round(st["seconds"] / mdr["seconds"], 3),
        "mdr_median_seconds": _round(mdr_median),
        "st_median_seconds": _round(st_median),
        "mdr_over_st_median": _round(st_median / mdr_median, 3),
        "mdr_cpu_seconds": _round(mdr["cpu_seconds"]),
        "st_cpu_seconds": _round(st["cpu_seconds"]),
        "mdr_steps_per_s": _round(1 / mdr["seconds"], 3),
        "st_steps_per_s": _round(1 / st["seconds"], 3),
        "real_tokens_per_step": round(mdr["tokens_per_step"]),
        "mdr_padded_tokens_per_step": _round(mdr["padded_tokens_per_step"], 0),
        "st_padded_tokens_per_step": _round(st["padded_tokens_per_step"], 0),
        "mdr_tokens_per_s": round(mdr["tokens_per_s"]),
        "st_tokens_per_s": round(st["tokens_per_s"]),
        "mdr_peak_rss_mb": mdr["peak_rss_mb"],
        "st_peak_rss_mb": st["peak_rss_mb"],
        "mdr_peak_rss_training_mb": mdr["peak_rss_training_mb"],
        "st_peak_rss_training_mb": st["peak_rss_training_mb"],
        "mdr_rss_before_fit_mb": mdr["rss_before_fit_mb"],
        "st_rss_before_fit_mb": st["rss_before_fit_mb"],
        "non_embedding_params": mdr["non_embedding_params"],
        **rates,
        "mdr_mfu": round(6 * mdr["non_embedding_params"] * mdr["tokens_per_s"] / peak, 4),
        "st_mfu": round(6 * st["non_embedding_params"] * st["tokens_per_s"] / peak, 4),
        "mdr_seconds_runs": [_round(run["seconds"]) for run in mdr_runs],
        "st_seconds_runs": [_round(run["seconds"]) for run in st_runs],
        "mdr_step_seconds": mdr["step_seconds"],
        "st_step_seconds": st["step_seconds"],
        "checks": {
            "st_order_matches_mdr": st["order_matches"],
            "st_tokens_match": st["tokens_match"],
            "mdr_tokens_match": mdr["tokens_match"],
            "mdr_optim": mdr["optim"],
            "st_optim": st["optim"],
            "attn": [mdr["attn_implementation"], st["attn_implementation"]],
        },
        "mask_loss_ms": mdr.get("mask_loss_ms"),
    }
    if masked is not None:
        report["mdr_masked_seconds"] = _round(masked["seconds"])
        report["masked_overhead"] = _round(masked["seconds"] / mdr["seconds"] - 1, 3)
        report["masked_columns"] = masked["summary"].get("in_batch_false_negatives_masked")
    report["machine"] = machine()
    return report


def _lengths(args: argparse.Namespace) -> list[int]:
    from omegaconf import OmegaConf

    model = OmegaConf.load(ROOT / "conf" / "model" / f"{args.model}.yaml")
    return [args.query_length or int(model.query_max_length), args.passage_length or int(model.passage_max_length)]


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def memory(args: argparse.Namespace) -> dict[str, Any]:
    """Peak RSS of mdr's training at a straining batch: plain, GradCache, gradient checkpointing."""
    args.epochs = 1
    args.total_steps = args.max_steps
    runs = {
        "plain": child(args, "mdr", mask="on"),
        f"grad_cache_{args.memory_chunk}": child(args, "mdr", mask="on", grad_cache=args.memory_chunk),
        "gradient_checkpointing": child(args, "mdr", mask="on", gradient_checkpointing=True),
    }
    report: dict[str, Any] = {
        "mode": "memory",
        "model": args.model,
        "precision": args.precision,
        "batch": args.batch,
        "negatives": args.negatives,
        "lengths": _lengths(args),
        "steps": args.max_steps,
    }
    for name, run in runs.items():
        report[name] = {
            "peak_rss_mb": run["peak_rss_mb"],
            "peak_rss_training_mb": run["peak_rss_training_mb"],
            "rss_before_fit_mb": run["rss_before_fit_mb"],
            "training_increase_mb": run["peak_rss_training_mb"] - run["rss_before_fit_mb"],
            "step_seconds": run["step_seconds"],
            "fit_seconds": run["fit_seconds"],
        }
    plain = report["plain"]["training_increase_mb"]
    for name in runs:
        if name != "plain":
            report[name]["increase_over_plain"] = round(report[name]["training_increase_mb"] / max(1, plain), 3)
    report["machine"] = machine()
    return report


def quality(args: argparse.Namespace) -> dict[str, Any]:
    """MRR@100 after full training by both trainers, several seeds, evaluated by mdr's evaluator."""
    args.max_steps = None
    args.epochs = args.quality_epochs
    args.total_steps = args.epochs * batches_per_epoch(args)
    scores: dict[str, list[float]] = {"mdr": [], "st": [], "mdr_masked": []}
    seconds: dict[str, list[float]] = {name: [] for name in scores}
    untrained = child(args, "untrained", epochs=1)["metrics"]["mrr@100"]  # evaluated before any step
    for seed in args.seeds:
        for name, side, mask in (("mdr", "mdr", "off"), ("st", "st", "off"), ("mdr_masked", "mdr", "on")):
            if name == "mdr_masked" and args.skip_masked:
                continue
            run = child(args, side, seed=seed, mask=mask, evaluate=True)
            scores[name].append(round(run["metrics"]["mrr@100"], 4))
            seconds[name].append(run["fit_seconds"])
    return {
        "mode": "quality",
        "model": args.model,
        "language": args.language,
        "precision": args.precision,
        "epochs": args.epochs,
        "steps": args.total_steps,
        "batch": args.batch,
        "negatives": args.negatives,
        "seeds": args.seeds,
        "untrained_mrr@100": round(untrained, 4),
        "mrr@100": scores,
        "mean_mrr@100": {name: round(sum(v) / len(v), 4) for name, v in scores.items() if v},
        "fit_seconds": seconds,
        "machine": machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "me5_small"], default=None)
    parser.add_argument("--language", default="th")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default=None, help="default: bf16 where native")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="queries per step (default 16)")
    parser.add_argument("--negatives", type=int, default=4)
    parser.add_argument("--hard-proportion", type=float, default=0.5)
    parser.add_argument("--max-steps", type=int, default=None, help="optimiser steps (default 10; --memory: 2)")
    parser.add_argument("--query-length", type=int, default=None, help="override model.query_max_length")
    parser.add_argument("--passage-length", type=int, default=None, help="override model.passage_max_length")
    parser.add_argument("--chunk-tokens", type=int, default=None, help="override train.chunk_tokens (mdr side)")
    parser.add_argument("--torch-dropout", action="store_true", help="train.fast_dropout=false (mdr side)")
    parser.add_argument("--mdr-override", action="append", help="a Hydra override of mdr's side (repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="OMP/torch threads of both sides (default: torch's)")
    parser.add_argument("--st-optim", default=None, help="TrainingArguments.optim (default: transformers' default)")
    parser.add_argument("--repeats", type=int, default=1, help="alternate mdr/st runs this often, keep each's best")
    parser.add_argument("--skip-masked", action="store_true", help="skip the mask_false_negatives=true run")
    parser.add_argument("--memory", action="store_true", help="peak RSS: plain, GradCache, checkpointing")
    parser.add_argument("--memory-chunk", type=int, default=4, help="GradCache chunk size for --memory")
    parser.add_argument("--quality", action="store_true", help="MRR@100 of both trainers after full training")
    parser.add_argument("--quality-epochs", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--verbose", action="store_true", help="show the child processes' output")
    # child-process arguments
    parser.add_argument("--side", choices=["mdr", "st", "untrained"], help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--mask", choices=["on", "off"], default="off", help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--total-steps", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--grad-cache", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--gradient-checkpointing", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--evaluate", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mask-microbench", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.side:
        run_side(args)
        return
    args.precision = args.precision or default_precision()
    if args.threads:
        torch.set_num_threads(args.threads)  # the matmul peaks are then taken with the sides' thread count
    if args.memory:
        args.model = args.model or "me5_small"
        args.batch = args.batch or 16  # me5_small at 16 x (1 + 4) already peaks near 10 GB; 64 would not fit here
        args.max_steps = args.max_steps or 2
        report = memory(args)
    elif args.quality:
        args.model = args.model or "tiny"
        args.batch = args.batch or 16
        report = quality(args)
    else:
        args.model = args.model or "tiny"
        args.batch = args.batch or 16
        args.max_steps = args.max_steps or 10
        if args.max_steps < 3:
            parser.error("--max-steps must be at least 3 (the first two steps are not timed)")
        report = speed(args)
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
