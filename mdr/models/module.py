"""LightningModule: a bi-encoder trained with InfoNCE, chunk by chunk, optionally with GradCache (docs/training.md);
dropout is seeded per (seed, step, rank, side, chunk), so GradCache's second pass replays the first exactly."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from transformers import get_linear_schedule_with_warmup

from mdr.data.collator import BiEncoderBatch
from mdr.losses import InfoNCELoss, LossOutput
from mdr.models.bi_encoder import BiEncoder
from mdr.utils.io import atomic_write_with
from mdr.utils.logging import get_logger

log = get_logger(__name__)

EncodeFn = Callable[[Mapping[str, torch.Tensor]], torch.Tensor]
QUERIES, PASSAGES = 0, 1


class BiEncoderModule(pl.LightningModule):
    """Trains a :class:`BiEncoder` with :class:`InfoNCELoss` and AdamW, linear warm-up (``warmup_ratio``) and decay."""

    def __init__(
        self,
        encoder: BiEncoder,
        loss: InfoNCELoss,
        learning_rate: float,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        seed: int = 0,
        grad_cache: bool = False,
        gradient_clip_val: float | None = 1.0,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False  # one step may run several backward passes (GradCache)
        self.seed, self.encoder, self.loss = seed, encoder, loss
        self.learning_rate, self.weight_decay, self.warmup_ratio = learning_rate, weight_decay, warmup_ratio
        self.grad_cache, self.gradient_clip_val = grad_cache, gradient_clip_val
        self.register_buffer("false_negatives_masked", torch.zeros((), dtype=torch.long), persistent=False)
        self._masked_total: int | None = None  # summed over ranks at the end of training (on_train_end)
        # (2,): this epoch's sum of loss x queries and its number of queries on this rank; a checkpoint holds it,
        # so an epoch resumed mid-way logs the mean over all its batches (Lightning's own epoch mean restarts)
        self.register_buffer("epoch_loss", torch.zeros(2, dtype=torch.float32), persistent=False)

    def _seed_chunk(self, side: int, chunk: int) -> None:
        """Dropout masks that depend only on (seed, step, rank, side, chunk)."""
        base = self.seed * 1_000_003 + self.global_step * 1_009 + self.global_rank
        torch.manual_seed(base * 8_192 + side * 4_096 + chunk)

    def _chunks(self, batch: BiEncoderBatch) -> Iterator[tuple[int, int, Mapping[str, torch.Tensor], EncodeFn]]:
        """(side, chunk index, inputs, encode function) for every query chunk, then every passage chunk."""
        for side, packed, encode in (
            (QUERIES, batch.queries, self.encoder.encode_queries),
            (PASSAGES, batch.passages, self.encoder.encode_passages),
        ):
            for index, inputs in enumerate(packed.chunks):
                yield side, index, inputs, encode

    def _encode_all(self, batch: BiEncoderBatch, embed_once: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q, dim) query and (Q * (1 + k), dim) passage embeddings in batch order (``embed_once``: one lookup)."""
        words = self.encoder.embed_words(batch.queries.chunks, batch.passages.chunks) if embed_once else None
        outputs: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
        for side, index, inputs, encode in self._chunks(batch):
            self._seed_chunk(side, index)
            if words is not None:
                inputs = {**inputs, "inputs_embeds": words[side][index]}  # (n_c, len_c, dim)
            outputs[side].append(encode(inputs))  # (n_c, dim)
        return batch.queries.unpack(outputs[QUERIES]), batch.passages.unpack(outputs[PASSAGES])

    def _loss(self, batch: BiEncoderBatch, queries: torch.Tensor, passages: torch.Tensor) -> LossOutput:
        return self.loss(queries, passages, batch.passage_ids, batch.positive_ids)

    def _grad_cache_backward(self, batch: BiEncoderBatch) -> LossOutput:
        """GradCache: loss and embedding gradients from a graph-free pass, then one backward per chunk."""
        with torch.no_grad():
            queries, passages = self._encode_all(batch, embed_once=False)  # (Q, dim), (Q * (1 + k), dim)
        queries.requires_grad_(True)
        passages.requires_grad_(True)
        output = self._loss(batch, queries, passages)
        query_grads, passage_grads = torch.autograd.grad(output.loss, [queries, passages])  # shapes as inputs
        sorted_grads = (query_grads[batch.queries.order], passage_grads[batch.passages.order])  # chunk order
        offsets = [0, 0]
        chunks = list(self._chunks(batch))
        block_sync = getattr(self.trainer.strategy, "block_backward_sync", contextlib.nullcontext)
        for position, (side, index, inputs, encode) in enumerate(chunks):
            self._seed_chunk(side, index)  # the same dropout masks as in the graph-free pass
            embeddings = encode(inputs)  # (n_c, dim)
            grads = sorted_grads[side][offsets[side] : offsets[side] + embeddings.shape[0]]  # (n_c, dim)
            offsets[side] += embeddings.shape[0]
            surrogate = (embeddings.float() * grads.float()).sum()  # d surrogate / d params = chunk's share
            last = position == len(chunks) - 1
            with contextlib.nullcontext() if last else block_sync():  # DDP all-reduces once, after the last
                self.manual_backward(surrogate)
        return LossOutput(output.loss.detach(), output.accuracy, output.masked)

    def training_step(self, batch: BiEncoderBatch, batch_idx: int) -> torch.Tensor:
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        optimizer.zero_grad(set_to_none=True)
        if self.grad_cache:
            output = self._grad_cache_backward(batch)
        else:
            output = self._loss(batch, *self._encode_all(batch))
            self.manual_backward(output.loss)
        if self.gradient_clip_val:
            # Lightning's clip_gradients refuses fused optimizers; bf16 / fp32 gradients are unscaled: clip them as is
            if self._grad_scaler() is None:
                torch.nn.utils.clip_grad_norm_(self.encoder.parameters(), self.gradient_clip_val)
            else:  # fp16 with a GradScaler: Lightning unscales before clipping
                self.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip_val, gradient_clip_algorithm="norm")
        optimizer.step()
        scheduler.step()  # type: ignore[union-attr]
        self.false_negatives_masked += output.masked
        size = batch.num_queries
        self.log("train/loss", output.loss, prog_bar=True, batch_size=size)
        self.log("train/accuracy", output.accuracy, prog_bar=True, batch_size=size)
        self.epoch_loss += torch.stack([output.loss.detach().float() * size, output.loss.new_tensor(size).float()])
        return output.loss

    def on_train_epoch_start(self) -> None:
        self.epoch_loss.zero_()  # not called when an epoch resumes mid-way: the checkpoint's sums carry on

    def on_train_epoch_end(self) -> None:
        total, queries = self._summed_over_ranks(self.epoch_loss).tolist()
        mean = total / max(queries, 1.0)  # the epoch's loss per query, over every rank: the same on each rank
        self.log("train/loss_epoch", mean, on_step=False, on_epoch=True, sync_dist=True, reduce_fx="max")

    def _summed_over_ranks(self, buffer: torch.Tensor) -> torch.Tensor:
        """``buffer`` summed over every process (a collective under DDP: every rank calls it)."""
        return self.trainer.strategy.reduce(buffer.clone(), reduce_op="sum")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # every rank dumps the checkpoint (rank 0 writes it), so sums over ranks are stored, not rank 0's
        checkpoint["mdr_false_negatives_masked"] = int(self._summed_over_ranks(self.false_negatives_masked))
        checkpoint["mdr_epoch_loss"] = self._summed_over_ranks(self.epoch_loss).tolist()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        stored = int(checkpoint.get("mdr_false_negatives_masked", 0))  # the sum over the ranks that saved it
        self.false_negatives_masked.fill_(stored if self.global_rank == 0 else 0)
        epoch_loss = checkpoint.get("mdr_epoch_loss", [0.0, 0.0])  # also summed over ranks: rank 0 carries it
        self.epoch_loss.copy_(torch.tensor(epoch_loss if self.global_rank == 0 else [0.0, 0.0]))

    def on_train_end(self) -> None:
        # now, not after fit: teardown moves the module to the CPU, where the NCCL group has no backend
        self._masked_total = int(self._summed_over_ranks(self.false_negatives_masked))

    def masked_total(self) -> int:
        """In-batch false negatives masked over training, summed over every process (no collective: callable after
        ``trainer.fit``; when fit ran no epoch, the checkpoint's sum on rank 0)."""
        return self._masked_total if self._masked_total is not None else int(self.false_negatives_masked)

    def _grad_scaler(self) -> Any:
        """The precision plugin's GradScaler (fp16 mixed precision), or None."""
        return getattr(self.trainer.precision_plugin, "scaler", None)

    def configure_optimizers(self) -> dict[str, Any]:
        no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
        named = list(self.encoder.named_parameters())
        groups = [
            {"params": [p for n, p in named if not n.endswith(no_decay)], "weight_decay": self.weight_decay},
            {"params": [p for n, p in named if n.endswith(no_decay)], "weight_decay": 0.0},
        ]
        # fused: the same update, ~29x faster on CPU; not with fp16's GradScaler, which must unscale before clipping
        optimizer = torch.optim.AdamW(groups, lr=self.learning_rate, fused=self._grad_scaler() is None)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = get_linear_schedule_with_warmup(optimizer, int(self.warmup_ratio * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written beside the target and renamed: a failed save leaves no partial checkpoint."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        atomic_write_with(Path(path), lambda handle: torch.save(checkpoint, handle))


class EpochEndCheckpoint(pl.callbacks.ModelCheckpoint):
    """Keeps the latest checkpoint (``last.ckpt`` links to it), saved at epoch ends and every ``every_n_steps``
    steps, never when training is interrupted."""

    def __init__(self, dirpath: str | Path, every_n_steps: int | None = None) -> None:
        name = "epoch{epoch}-step{step}" if every_n_steps else "epoch{epoch}"
        options = {"save_last": "link", "every_n_epochs": 1, "save_on_train_epoch_end": True}
        super().__init__(dirpath, name, save_top_k=1, auto_insert_metric_name=False, **options)
        self.every_n_steps = every_n_steps

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self.every_n_steps or trainer.global_step % self.every_n_steps != 0:
            return
        if trainer.fit_loop.epoch_loop.batch_progress.current.processed >= trainer.num_training_batches:
            return  # the epoch's last batch: the epoch-end checkpoint comes next
        if self._should_skip_saving_checkpoint(trainer):
            return
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)  # the state after this step's optimiser update
        self._save_last_checkpoint(trainer, candidates)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        folder = Path(self.dirpath) if self.dirpath else None
        if not trainer.is_global_zero or folder is None or not folder.is_dir():
            return
        # a save killed midway (AtomicCheckpointIO) leaves its temporary file; no save runs before training does
        stale = sorted(folder.glob(".*.ckpt.*.tmp"))
        for path in stale:
            path.unlink(missing_ok=True)
        if stale:
            log.info("removed %d temporary file(s) of an interrupted checkpoint save from %s", len(stale), folder)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        return None
