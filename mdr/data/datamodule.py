"""LightningDataModule: fresh negatives and a fresh, seeded shuffle at every epoch; resumable mid-epoch."""

from __future__ import annotations

import itertools
import random
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from mdr.data.collator import BiEncoderBatch, BiEncoderCollator, PackedTexts
from mdr.data.negatives import HardNegativePools, NegativeSampler, SamplingStats
from mdr.data.schema import RetrievalSplit
from mdr.utils.logging import get_logger

log = get_logger(__name__)


class ResumingDataLoader(DataLoader):
    """A DataLoader whose iterators start at batch ``skip_batches``, its length still the whole epoch's (as Lightning
    counts a resumed epoch); under DDP, Lightning rebuilds it with ``skip_batches`` carried over."""

    def __init__(self, *args: Any, skip_batches: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.skip_batches = int(skip_batches)

    @property
    def _index_sampler(self) -> Any:  # what the iterators draw indices from: the batches after the skipped ones
        sampler = super()._index_sampler
        return list(itertools.islice(sampler, self.skip_batches, None)) if self.skip_batches else sampler

    def __len__(self) -> int:
        return len(super()._index_sampler)

    def state_dict(self) -> dict[str, Any]:
        """Nothing (the datamodule holds the state), but it makes Lightning treat the loader as resumable."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore."""


class RetrievalDataModule(pl.LightningDataModule):
    """Serves one epoch of training examples at a time (``batch_size`` queries per batch and device), negatives and
    order functions of (seed, epoch); resumed mid-epoch (:meth:`state_dict`), it serves the batches not trained."""

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
        self.train_split, self.pools, self.sampler, self.collator = train_split, pools, sampler, collator
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        self.last_stats: SamplingStats | None = None
        self._resume: dict[str, int] | None = None  # a mid-epoch checkpoint's position, until its epoch is served

    def dataloader_for_epoch(self, epoch: int, skip_batches: int = 0) -> DataLoader:
        """A loader over the epoch's examples shuffled by (seed, epoch) only, less its first ``skip_batches``. Shuffled
        here, not by a sampler whose generator advances with each iteration; under DDP, DistributedSampler deals
        this order out."""
        examples, self.last_stats = self.sampler.examples(self.train_split, self.pools, epoch)
        random.Random(f"{self.seed}:{epoch}:order").shuffle(examples)
        return ResumingDataLoader(
            examples,
            batch_size=self.batch_size,
            shuffle=False,
            collate_fn=self.collator,
            num_workers=self.num_workers,
            drop_last=False,
            skip_batches=skip_batches,
        )

    def train_dataloader(self) -> DataLoader:
        """The loader of the trainer's current epoch, less the batches a restored mid-epoch checkpoint trained."""
        trainer = self.trainer
        epoch = trainer.current_epoch
        if trainer.max_epochs is not None and 0 < trainer.max_epochs <= epoch:
            # a restored finished run: Lightning asks for one more epoch's loader and never iterates it
            epoch = trainer.max_epochs - 1
        return self.dataloader_for_epoch(epoch, self.batches_done_before(epoch))

    def batches_done_before(self, epoch: int) -> int:
        """Batches of ``epoch`` that a restored mid-epoch checkpoint holds trained (0 for any other epoch)."""
        resume = self._resume
        if resume is None or epoch < resume["epoch"]:
            return 0  # no resume, or Lightning's loader before it restored the loop's epoch
        if epoch > resume["epoch"]:
            self._resume = None  # its epoch is over
            return 0
        done = resume["batches_done"]
        log.info(
            "epoch %d: its loader leaves out the first %d batch(es), trained before the checkpoint", epoch + 1, done
        )
        return done

    def state_dict(self) -> dict[str, Any]:
        """Where training stands in the epoch (saved in every checkpoint): epoch, batches done, batches in it."""
        trainer = self.trainer
        done = int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)
        mid_epoch = bool(0 < done < trainer.num_training_batches)
        epoch, step = int(trainer.current_epoch), int(trainer.global_step)
        return {"epoch": epoch, "batches_done": done, "mid_epoch": mid_epoch, "global_step": step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume mid-epoch from a checkpoint's :meth:`state_dict` (an epoch-end one changes nothing)."""
        if state_dict.get("mid_epoch"):
            self._resume = {"epoch": int(state_dict["epoch"]), "batches_done": int(state_dict["batches_done"])}

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Moves the collator's batches to ``device``."""
        if isinstance(batch, (BiEncoderBatch, PackedTexts)):
            return batch.to(device)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)
