"""Negative sampling: round(p*k) hard, the rest random, never a positive, deterministic per (seed, epoch)."""

from __future__ import annotations

import pytest

from mdr.data.negatives import NegativeSampler, num_hard
from mdr.data.schema import DataError, Passage, Query, RetrievalSplit


def _split(num_docs: int = 200, num_queries: int = 30) -> RetrievalSplit:
    corpus = {f"d{i}": Passage(f"d{i}", f"text {i}") for i in range(num_docs)}
    queries = {f"q{i}": Query(f"q{i}", f"query {i}") for i in range(num_queries)}
    qrels = {f"q{i}": {f"d{i}": 1, f"d{i + 100}": 1} for i in range(num_queries)}
    return RetrievalSplit(corpus, queries, qrels)


def _pools(split: RetrievalSplit, size: int = 20) -> dict[str, list[str]]:
    # pools deliberately include the query's own positive, which the sampler must never return
    return {q: [f"d{i}" for i in range(int(q[1:]), int(q[1:]) + size)] for q in split.queries}


@pytest.mark.parametrize(
    ("p", "k", "expected"), [(0, 4, 0), (0.25, 4, 1), (0.5, 4, 2), (1, 4, 4), (0.5, 3, 2), (0.5, 1, 1), (0.1, 4, 0)]
)
def test_num_hard_rounds_half_up(p: float, k: int, expected: int) -> None:
    assert num_hard(p, k) == expected


@pytest.mark.parametrize("p", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_hard_count_membership_and_no_positive(p: float) -> None:
    split, k = _split(), 4
    pools = _pools(split)
    sampler = NegativeSampler(num_negatives=k, hard_proportion=p, seed=3)
    examples, stats = sampler.examples(split, pools, epoch=0)
    assert len(examples) == 30 and stats.hard_shortfall == 0
    for example in examples:
        positives = set(split.positives(example.query_id))
        assert example.positive in positives
        assert len(example.negatives) == k and len(set(example.negatives)) == k
        assert not positives & set(example.negatives)
        hard = example.negatives[: num_hard(p, k)]
        assert set(hard) <= set(pools[example.query_id])
    assert stats.hard == 30 * num_hard(p, k) and stats.random == 30 * (k - num_hard(p, k))


def test_deterministic_per_seed_and_epoch() -> None:
    split, pools = _split(), _pools(_split())
    draw = lambda seed, epoch: NegativeSampler(4, 0.5, seed=seed).examples(split, pools, epoch)[0]  # noqa: E731
    assert draw(1, 0) == draw(1, 0)
    assert draw(1, 0) != draw(1, 1)
    assert draw(1, 0) != draw(2, 0)


def test_proportion_outside_unit_interval_is_rejected() -> None:
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"negatives.hard_proportion must be in \[0, 1\]"):
            NegativeSampler(4, bad)


def test_empty_pool_falls_back_to_random_or_fails_when_strict() -> None:
    split = _split()
    pools = {"q0": [], "q1": ["d1", "d5"]}  # q1's pool holds one usable candidate besides its positive
    examples, stats = NegativeSampler(4, 0.5, seed=0).examples(split, pools, epoch=0)
    assert all(len(e.negatives) == 4 for e in examples)
    # q0 and q1 miss 2 and 1 hard negatives; the other 28 queries have no pool at all
    assert stats.hard_shortfall == 2 + 1 + 28 * 2 and stats.queries_short_of_hard == 30
    with pytest.raises(DataError, match=r"query 'q0': hard-negative pool has 0 usable candidates, 2 needed"):
        NegativeSampler(4, 0.5, seed=0, strict=True).examples(split, pools, epoch=0)


def test_queries_without_positive_are_skipped_and_all_missing_is_an_error() -> None:
    split = _split()
    split.qrels["q0"] = {"d0": 0}
    examples, stats = NegativeSampler(2, 0.0).examples(split, {}, 0)
    assert stats.queries_without_positive == 1 and "q0" not in {e.query_id for e in examples}
    split.qrels.clear()
    with pytest.raises(DataError, match="no training query has a positive passage"):
        NegativeSampler(2, 0.0).examples(split, {}, 0)
