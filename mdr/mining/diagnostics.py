"""What a hard-negative pool holds, measured on the negatives the training sampler draws from it
(docs/negatives.md#pool-diagnostics): the positive's rank in the miner's ranking, the share of negatives from the
positive's paragraph or article (XQuAD-style docids), a teacher's scores against the positive, overlaps of options.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from mdr.data.negatives import NegativeSampler
from mdr.data.schema import RetrievalSplit
from mdr.mining.pools import RawPools
from mdr.utils.logging import get_logger

log = get_logger(__name__)

# XQuAD-style docids: language, article, paragraph and (sentence level) sentence
DOCID_LOCATION = re.compile(r"^(?P<language>[^_]+)_(?P<article>a\d+)_(?P<paragraph>p\d+)(?:_s\d+)?$")
DENOISE_RATIO = 0.95  # the teacher ratio above which denoising at relative margin 0.05 (the default) drops one


@dataclass(frozen=True)
class Draw:
    """One training query's positive and negatives (hard ones first) as the sampler drew them with ``seed``."""

    query_id: str
    seed: int
    positive: str
    negatives: tuple[str, ...]


def sampled_negatives(
    split: RetrievalSplit,
    pools: Mapping[str, Sequence[str]],
    num_negatives: int,
    hard_proportion: float,
    seeds: Iterable[int],
    strict: bool = False,
    epoch: int = 0,
) -> list[Draw]:
    """The negatives a run with each of ``seeds`` draws for ``epoch``, through the training sampler itself."""
    draws: list[Draw] = []
    for seed in seeds:
        sampler = NegativeSampler(num_negatives, hard_proportion, seed=seed, strict=strict)
        examples, _ = sampler.examples(split, pools, epoch)
        draws += [Draw(e.query_id, int(seed), e.positive, tuple(e.negatives)) for e in examples]
    return draws


def positive_ranks(raw: RawPools, split: RetrievalSplit, depth: int) -> dict[str, int | None]:
    """Query (with a judged positive) -> 1 + the candidates scoring strictly above its best positive, None when
    that is beyond ``depth`` or the miner has no score for the positive (BM25 did not retrieve it)."""
    ranks: dict[str, int | None] = {}
    for query_id in filter(split.positives, sorted(split.queries)):
        score = raw.positive_scores.get(query_id)
        rank = None if score is None else 1 + sum(c > score for _, c in raw.candidates.get(query_id, ()))
        ranks[query_id] = rank if rank is not None and rank <= depth else None
    return ranks


def median_rank(ranks: Iterable[int | None]) -> float:
    """Median rank, a positive beyond the depth counting as below every candidate; NaN when the median is beyond."""
    values = [math.inf if rank is None else float(rank) for rank in ranks]
    middle = statistics.median(values) if values else math.nan
    return middle if math.isfinite(middle) else math.nan


def rank_measures(ranks: Mapping[str, int | None]) -> dict[str, float]:
    """Median rank, share at rank 1 and share beyond the depth, over the queries in ``ranks``."""
    values = list(ranks.values())
    count = len(values)
    return {
        "positive_rank_median": median_rank(values),
        "positive_rank1_share": sum(rank == 1 for rank in values) / count if count else math.nan,
        "positive_beyond_depth_share": sum(rank is None for rank in values) / count if count else math.nan,
    }


def docid_location(docid: str) -> tuple[str, str] | None:
    """(article, article + paragraph) of an XQuAD-style docid, None for any other docid."""
    found = DOCID_LOCATION.match(docid)
    if found is None:
        return None
    article = f"{found['language']}_{found['article']}"
    return article, f"{article}_{found['paragraph']}"


def location_measures(draws: Sequence[Draw]) -> dict[str, float]:
    """Shares of sampled negatives from the positive's paragraph and article, over those whose docid and
    positive's docid both locate them (``located_share``)."""
    same_paragraph = same_article = located = total = 0
    for draw in draws:
        positive = docid_location(draw.positive)
        for negative in draw.negatives:
            total += 1
            where = docid_location(negative)
            if positive is None or where is None:
                continue
            located += 1
            same_article += where[0] == positive[0]
            same_paragraph += where[1] == positive[1]
    if total and located < total:
        log.warning(
            f"{total - located} of {total} sampled negatives (or their positives) have docids without article and "
            "paragraph: the same-paragraph and same-article shares count only the others"
        )
    return {
        "located_share": located / total if total else math.nan,
        "same_paragraph_share": same_paragraph / located if located else math.nan,
        "same_article_share": same_article / located if located else math.nan,
    }


def pool_measures(pools: Mapping[str, Sequence[str]], draws: Sequence[Draw]) -> dict[str, float]:
    """Median pool size and empty pools over the sampled queries; sampled negatives and the share from the pool."""
    queries = sorted({draw.query_id for draw in draws})
    sizes = [len(pools.get(query_id, ())) for query_id in queries]
    members = {query_id: set(pools.get(query_id, ())) for query_id in queries}
    sampled = sum(len(draw.negatives) for draw in draws)
    in_pool = sum(negative in members[draw.query_id] for draw in draws for negative in draw.negatives)
    return {
        "queries": len(queries),
        "pool_size_median": statistics.median(sizes) if sizes else math.nan,
        "queries_empty_pool": sum(size == 0 for size in sizes),
        "sampled": sampled,
        "in_pool_share": in_pool / sampled if sampled else math.nan,
    }


def scoring_pools(draws: Iterable[Draw]) -> dict[str, list[str]]:
    """Query -> every negative sampled for it (any seed, any option), in first-seen order: what a teacher scores."""
    pools: dict[str, dict[str, None]] = {}
    for draw in draws:
        pools.setdefault(draw.query_id, {}).update(dict.fromkeys(draw.negatives))
    return {query_id: list(negatives) for query_id, negatives in pools.items()}


def teacher_measures(draws: Sequence[Draw], scores: RawPools) -> dict[str, float]:
    """The median teacher ratio negative / positive (where the positive scores > 0), the share of sampled
    negatives scoring at least the positive and the share above :data:`DENOISE_RATIO` of it; ``scores``:
    :func:`mdr.mining.denoise.teacher_scores` over (at least) the sampled negatives."""
    ratios: list[float] = []
    at_least = above_ceiling = total = not_positive = 0
    for draw in draws:
        positive = scores.positive_scores.get(draw.query_id)
        if positive is None:
            raise KeyError(f"query {draw.query_id!r} has no teacher score for its positive")
        scored = dict(scores.candidates.get(draw.query_id, ()))
        for negative in draw.negatives:
            if negative not in scored:
                raise KeyError(f"query {draw.query_id!r}: sampled negative {negative!r} has no teacher score")
            score = scored[negative]
            total += 1
            at_least += score >= positive
            above_ceiling += score > positive - abs(positive) * (1 - DENOISE_RATIO)
            if positive > 0:
                ratios.append(score / positive)
            else:
                not_positive += 1
    if not_positive:
        log.warning("%d sampled negatives left out of the teacher ratio: their positive scores <= 0", not_positive)
    return {
        "teacher_ratio_median": statistics.median(ratios) if ratios else math.nan,
        "teacher_at_least_positive_share": at_least / total if total else math.nan,
        "teacher_above_denoise_share": above_ceiling / total if total else math.nan,
    }


def overlap_shares(
    draws: Mapping[str, Sequence[Draw]], pools: Mapping[str, Mapping[str, Sequence[str]]]
) -> list[tuple[str, str, float]]:
    """(option, other, share of the option's sampled negatives in the other's pool for the same query) for every
    ordered pair of options, an option with itself included."""
    rows: list[tuple[str, str, float]] = []
    for option, option_draws in draws.items():
        total = sum(len(draw.negatives) for draw in option_draws)
        for other, other_pools in pools.items():
            members = {query_id: set(docids) for query_id, docids in other_pools.items()}
            drawn = ((draw.query_id, negative) for draw in option_draws for negative in draw.negatives)
            inside = sum(negative in members.get(query_id, ()) for query_id, negative in drawn)
            rows.append((option, other, inside / total if total else math.nan))
    return rows
