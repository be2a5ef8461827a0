"""The ``negatives`` group's checks in :func:`mdr.validation.config_problems`, on small configs (no data, no model)."""

from __future__ import annotations

from typing import Any

import pytest
from omegaconf import OmegaConf

from mdr.validation import config_problems

NEGATIVES: dict[str, Any] = {
    "num_negatives": 4,
    "hard_proportion": 0.5,
    "strict": False,
    "pool": {"source": "bm25", "backend": "bm25s", "depth": 100, "range_min": 0, "range_max": 50, "margin": None},
}


def _problems(**changes: Any) -> list[str]:
    negatives = OmegaConf.merge(NEGATIVES, changes)
    return config_problems(OmegaConf.create({"train": {}, "negatives": negatives}))


def test_the_default_negatives_pass() -> None:
    assert _problems() == []


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"strict": "maybe"}, "negatives.strict must be true or false, got 'maybe'"),
        ({"pool": {"margin": "wide"}}, "negatives.pool.margin must be a number, got 'wide'"),
        ({"pool": {"backend": "lucene"}}, "negatives.pool.backend must be one of ['bm25s', 'pyserini'], got 'lucene'"),
        ({"pool": {"range_min": 60}}, "negatives.pool.range_max (50) must be above negatives.pool.range_min (60)"),
    ],
)
def test_a_bad_negatives_value_is_named(changes: dict[str, Any], problem: str) -> None:
    assert _problems(**changes) == [problem]


def test_a_negatives_group_without_pool_keys_is_not_a_config_problem() -> None:
    negatives = {"num_negatives": 0, "hard_proportion": 0.0}  # e.g. a hand-written group for in-batch negatives only
    assert config_problems(OmegaConf.create({"train": {}, "negatives": negatives})) == []
