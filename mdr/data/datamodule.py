"""LightningDataModule: fresh negatives and a fresh, seeded shuffle at every epoch."""

from __future__ import annotations

import random
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from mdr.data.collator import BiEncoderBatch, BiEncoderCollator, PackedTexts
from mdr.data.negatives import HardNegativePools, NegativeSampler, SamplingStats
from mdr.data.schema import RetrievalSplit, TrainingExample
from mdr.utils.logging import get_logger

log = get_logger(__name__)


class RetrievalDataModule(pl.LightningDataModule):
    """Serves one epoch of training examples at a time.

    ``train_dataloader`` is rebuilt every epoch (the Trainer runs with
    ``reload_dataloaders_every_n_epochs=1``) and draws that epoch's negatives with the epoch passed in
    explicitly, so a resumed run sees the same negatives as an uninterrupted one.

    Args:
        train_split: training queries, qrels and corpus.
        pools: query_id -> hard-negative candidates.
        sampler: draws k negatives per query.
        collator: tokenises examples into batches.
        batch_size: queries per batch (per device).
        seed: seeds the shuffle, together with the epoch.
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        train_split: RetrievalSplit,
        pools: HardNegativePools,
        sampler: NegativeSampler,
        collator: BiEncoderCollator,
        batch_size: int,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.train_split = train_split
        self.pools = pools
        self.sampler = sampler
        self.collator = collator
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.last_stats: SamplingStats | None = None

    def examples_for_epoch(self, epoch: int) -> list[TrainingExample]:
        """The epoch's training examples, with its negatives."""
        examples, self.last_stats = self.sampler.examples(self.train_split, self.pools, epoch)
        return examples

    def dataloader_for_epoch(self, epoch: int) -> DataLoader:
        """A loader over the epoch's examples in an order that depends only on (seed, epoch).

        The examples are shuffled here, not by a sampler: a sampler's generator advances each time the
        loader is iterated, and Lightning iterates a restored epoch's loader a different number of times
        than an uninterrupted one. Under DDP, Lightning's DistributedSampler deals this order out to ranks.
        """
        examples = self.examples_for_epoch(epoch)
        random.Random(f"{self.seed}:{epoch}:order").shuffle(examples)
        return DataLoader(
            examples,
            batch_size=self.batch_size,
            shuffle=False,
            collate_fn=self.collator,
            num_workers=self.num_workers,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        return self.dataloader_for_epoch(epoch)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Moves the collator's batches (here, beside the loader that makes them, not in the LightningModule)."""
        if isinstance(batch, (BiEncoderBatch, PackedTexts)):
            return batch.to(device)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)
