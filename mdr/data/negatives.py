"""Per-epoch negatives: ``p * k`` from the query's hard-negative pool, the rest random from the corpus, never a
positive, deterministic per ``(seed, epoch, query_id)`` (``p``: ``hard_proportion``, ``k``: ``num_negatives``)."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Protocol, runtime_checkable

from mdr.data.corpus import Corpus
from mdr.data.schema import DataError, RetrievalSplit, TrainingExample
from mdr.utils.logging import get_logger

log = get_logger(__name__)

HardNegativePools = Mapping[str, Sequence[str]]
"""query_id -> ranked candidate docids (positives already removed by the miner)."""


def num_hard(hard_proportion: float, num_negatives: int) -> int:
    """``round(p * k)`` with halves rounded up (Python's ``round`` rounds halves to even)."""
    return int(math.floor(hard_proportion * num_negatives + 0.5))


def proportion_problem(hard_proportion: float, num_negatives: int, prefix: str = "negatives") -> str | None:
    """Why ``p`` cannot label a run with ``k`` negatives (``p * k`` not whole: the p recorded must be the share
    drawn), naming the nearest valid proportions; else None."""
    wanted = hard_proportion * num_negatives
    if num_negatives <= 0 or abs(wanted - round(wanted)) < 1e-9:
        return None
    low, high = math.floor(wanted) / num_negatives, math.ceil(wanted) / num_negatives
    return (
        f"{prefix}.hard_proportion={hard_proportion:g} with {prefix}.num_negatives={num_negatives} asks for "
        f"{wanted:g} hard negatives per query: p * k must be a whole number, so the p recorded is the share drawn; "
        f"the nearest valid values are {prefix}.hard_proportion={low:g} and {high:g} (or choose num_negatives so "
        "that p * k is whole)"
    )


@dataclass
class SamplingStats:
    """What one epoch's sampling did, for logging."""

    examples: int = 0
    hard: int = 0
    random: int = 0
    hard_shortfall: int = 0
    queries_short_of_hard: int = 0
    queries_without_positive: int = 0


@runtime_checkable
class PartedSplit(Protocol):
    """A training split made of parts with the RetrievalSplit API, each sampled on its own (:mod:`mdr.data.union`)."""

    parts: Sequence[RetrievalSplit]


class NegativeSampler:
    """Draws each training query's negatives for one epoch (``strict``: a pool short of p * k is an error)."""

    def __init__(self, num_negatives: int, hard_proportion: float, seed: int = 0, strict: bool = False) -> None:
        if not 0.0 <= float(hard_proportion) <= 1.0:
            raise ValueError(f"negatives.hard_proportion must be in [0, 1], got {hard_proportion}")
        if num_negatives < 0:
            raise ValueError(f"negatives.num_negatives must be >= 0, got {num_negatives}")
        if problem := proportion_problem(float(hard_proportion), int(num_negatives)):
            raise ValueError(problem)
        self.num_negatives, self.hard_proportion = int(num_negatives), float(hard_proportion)
        self.seed, self.strict = int(seed), strict
        self.num_hard = num_hard(self.hard_proportion, self.num_negatives)

    def _rng(self, epoch: int, query_id: str) -> random.Random:
        return random.Random(f"{self.seed}:{epoch}:{query_id}")

    def draw(
        self, query_id: str, positives: set[str], pool: Sequence[str], corpus: Corpus, epoch: int
    ) -> tuple[list[str], int]:
        """Negatives for one query and how many hard ones the pool could not supply (random: uniform corpus rows)."""
        rng = self._rng(epoch, query_id)
        candidates = list(dict.fromkeys(docid for docid in pool if docid not in positives))
        hard = rng.sample(candidates, min(self.num_hard, len(candidates)))
        shortfall = self.num_hard - len(hard)
        if shortfall and self.strict:
            raise DataError(
                f"query {query_id!r}: hard-negative pool has {len(candidates)} usable candidates, "
                f"{self.num_hard} needed (negatives.strict=true)"
            )
        taken = set(hard) | positives
        available = len(corpus) - len(taken)
        wanted = self.num_negatives - len(hard)
        if wanted > available:
            raise DataError(f"query {query_id!r}: corpus has {available} non-positive passages, {wanted} needed")
        randoms: list[str] = []
        while len(randoms) < wanted:
            docid = corpus.docid(rng.randrange(len(corpus)))
            if docid not in taken:
                taken.add(docid)
                randoms.append(docid)
        return hard + randoms, shortfall

    def examples(
        self, split: RetrievalSplit | PartedSplit, pools: HardNegativePools, epoch: int
    ) -> tuple[list[TrainingExample], SamplingStats]:
        """One epoch's training examples (queries without a positive skipped and counted; a split's parts in turn)."""
        examples: list[TrainingExample] = []
        stats = SamplingStats()
        if isinstance(split, PartedSplit):
            for part in split.parts:
                found, part_stats = self.examples(part, pools, epoch)
                examples += found
                for item in fields(stats):
                    setattr(stats, item.name, getattr(stats, item.name) + getattr(part_stats, item.name))
            return examples, stats
        for query_id in sorted(split.queries):
            positives = split.positives(query_id)
            if not positives:
                stats.queries_without_positive += 1
                continue
            negatives, shortfall = self.draw(query_id, set(positives), pools.get(query_id, ()), split.corpus, epoch)
            positive = self._rng(epoch, query_id + "/positive").choice(sorted(positives))
            text = split.queries[query_id].text
            examples.append(TrainingExample(query_id, text, positive, tuple(negatives), tuple(sorted(positives))))
            stats.hard_shortfall += shortfall
            stats.queries_short_of_hard += shortfall > 0
            stats.hard += self.num_hard - shortfall
            stats.random += len(negatives) - (self.num_hard - shortfall)
        stats.examples = len(examples)
        if not examples:
            raise DataError(f"no training query has a positive passage ({len(split.queries)} queries read)")
        if stats.queries_without_positive:
            log.warning("skipped %d training queries with no positive passage", stats.queries_without_positive)
        if stats.hard_shortfall:
            short, shortfall = stats.queries_short_of_hard, stats.hard_shortfall
            log.warning(
                f"epoch {epoch}: {short} queries had fewer than {self.num_hard} hard candidates; {shortfall} hard "
                "negatives replaced by random ones"
            )
        return examples, stats
