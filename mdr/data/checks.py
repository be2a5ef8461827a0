"""Checks of loaded splits against what a run will ask of them, before mining or training."""

from __future__ import annotations

from mdr.data.negatives import num_hard
from mdr.data.schema import RetrievalSplit
from mdr.utils.logging import get_logger

log = get_logger(__name__)


def relevant(split: RetrievalSplit) -> dict[str, list[str]]:
    """query_id -> positives, for the split's queries that have at least one."""
    return {qid: pos for qid in split.queries if (pos := split.positives(qid))}


def test_split_problems(test: RetrievalSplit, name: str) -> list[str]:
    """Problems of test split ``name`` (``data.test_split``): it must judge at least one query."""
    judged = relevant(test)
    if not judged:
        return [
            f"data.test_split={name!r}: none of its {len(test.queries)} queries has a relevant passage in "
            f"the qrels ({len(test.qrels)} judged query ids): there is nothing to evaluate"
        ]
    if len(judged) < len(test.queries):
        missing = len(test.queries) - len(judged)
        log.info("test split %s: %d of %d queries have no relevant passage", name, missing, len(test.queries))
    return []


def train_split_problems(
    train: RetrievalSplit, name: str, num_negatives: int, hard_proportion: float, pool_source: str, data: str
) -> list[str]:
    """Problems of training split ``name`` (``data.train_split``) with the run's negatives settings."""
    usable = relevant(train)
    if not usable:
        return [
            f"data.train_split={name!r}: none of its {len(train.queries)} queries has a relevant passage: "
            "nothing to train on"
        ]
    if len(usable) < len(train.queries):
        skipped = len(train.queries) - len(usable)
        log.warning(
            f"training split {name}: {skipped} of {len(train.queries)} queries have no relevant passage and are skipped"
        )
    problems = []
    worst = max(usable, key=lambda qid: (len(usable[qid]), qid))
    room = len(train.corpus) - len(usable[worst])
    if num_negatives > room:
        problems.append(
            f"negatives.num_negatives={num_negatives} is more than the training corpus can supply: it has "
            f"{len(train.corpus)} passages and query {worst!r} has {len(usable[worst])} positive(s), leaving {room}"
        )
    if num_hard(hard_proportion, num_negatives) and pool_source == "shipped" and not train.shipped_negatives:
        problems.append(
            f"negatives.pool.source=shipped but data={data} ships no negative passages for "
            f"{name!r} (use negatives=bm25, or hard_proportion=0)"
        )
    return problems
