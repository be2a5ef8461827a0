"""LightningModule: a shared-weight bi-encoder trained with in-batch plus hard-negative InfoNCE."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from transformers import get_linear_schedule_with_warmup

from mdr.data.collator import BiEncoderBatch
from mdr.losses import InfoNCELoss
from mdr.models.bi_encoder import BiEncoder


class BiEncoderModule(pl.LightningModule):
    """Trains a :class:`BiEncoder` with :class:`InfoNCELoss`; AdamW with linear warm-up and decay.

    Args:
        encoder: the bi-encoder.
        loss: the contrastive loss.
        learning_rate / weight_decay / warmup_ratio: optimiser settings (warm-up as a share of all steps).
        seed: with the step, reseeds torch's RNG (dropout) at every step, so a run resumed from an epoch
            checkpoint repeats exactly what an uninterrupted run does.
    """

    def __init__(
        self,
        encoder: BiEncoder,
        loss: InfoNCELoss,
        learning_rate: float,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.seed = seed
        self.start_epoch = 0
        self.encoder = encoder
        self.loss = loss
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.warmup_ratio = warmup_ratio

    def on_train_start(self) -> None:
        self.start_epoch = self.current_epoch  # > 0 when resumed from a checkpoint

    def training_step(self, batch: BiEncoderBatch, batch_idx: int) -> torch.Tensor:
        # dropout masks depend only on (seed, step, rank): a resumed run draws the same ones
        torch.manual_seed(self.seed * 1_000_003 + self.global_step * 1_009 + self.global_rank)
        query_embeddings = self.encoder.encode_queries(batch.query_inputs)  # (Q, dim)
        passage_embeddings = self.encoder.encode_passages(batch.passage_inputs)  # (Q * (1 + k), dim)
        output = self.loss(query_embeddings, passage_embeddings)
        size = batch.num_queries
        self.log("train/loss", output.loss, prog_bar=True, batch_size=size)
        self.log("train/accuracy", output.accuracy, prog_bar=True, batch_size=size)
        self.log("train/loss_epoch", output.loss, on_step=False, on_epoch=True, batch_size=size, sync_dist=True)
        return output.loss

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        if isinstance(batch, BiEncoderBatch):
            return BiEncoderBatch(
                query_inputs={key: value.to(device) for key, value in batch.query_inputs.items()},
                passage_inputs={key: value.to(device) for key, value in batch.passage_inputs.items()},
                group_size=batch.group_size,
            )
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def configure_optimizers(self) -> dict[str, Any]:
        no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
        named = list(self.encoder.named_parameters())
        groups = [
            {"params": [p for n, p in named if not n.endswith(no_decay)], "weight_decay": self.weight_decay},
            {"params": [p for n, p in named if n.endswith(no_decay)], "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(groups, lr=self.learning_rate)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = get_linear_schedule_with_warmup(optimizer, int(self.warmup_ratio * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class EpochEndCheckpoint(pl.callbacks.ModelCheckpoint):
    """Keeps the latest epoch-end checkpoint, with ``last.ckpt`` linking to it.

    Unlike the stock callback it writes nothing when training is interrupted (SIGTERM, an exception): a
    mid-epoch state cannot be resumed exactly, an epoch boundary can, because negatives, batch order and
    dropout seeds are functions of (seed, epoch).
    """

    def __init__(self, dirpath: str | Path) -> None:
        super().__init__(
            dirpath=dirpath,
            filename="epoch{epoch}",
            auto_insert_metric_name=False,
            save_top_k=1,
            save_last="link",
            every_n_epochs=1,
            save_on_train_epoch_end=True,
        )

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        return None
