"""The ``negatives`` group's checks in :func:`mdr.validation.config_problems` (no data, no model read)."""

from __future__ import annotations

from typing import Any

import pytest
from omegaconf import OmegaConf, open_dict
from test_validation import _compose

from mdr.validation import config_problems


def _with_negatives(negatives: Any) -> list[str]:
    cfg = _compose()
    with open_dict(cfg):
        cfg.negatives = negatives
    return config_problems(cfg)


def _problems(**changes: Any) -> list[str]:
    """The problems of conf/train.yaml with ``changes`` merged over its negatives (bm25, k = 4, p = 0.5)."""
    return _with_negatives(OmegaConf.merge(_compose().negatives, changes))


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


def test_a_negatives_group_without_a_pool_draws_no_hard_negative() -> None:
    negatives = {"num_negatives": 2, "hard_proportion": 0.0, "strict": False}  # a group for random negatives only
    assert _with_negatives(negatives) == []
    assert _with_negatives({**negatives, "hard_proportion": 0.5}) == [
        "negatives.pool must be set: negatives.hard_proportion=0.5 draws hard negatives"
    ]


@pytest.mark.parametrize(
    ("proportion", "k", "nearest"),
    [(0.3, 1, "hard_proportion=0 and 1"), (0.3, 4, "hard_proportion=0.25 and 0.5"), (0.1, 4, "=0 and 0.25")],
)
def test_a_proportion_that_no_whole_number_of_negatives_gives_is_refused(
    proportion: float, k: int, nearest: str
) -> None:
    # round(p * k) drew none for p = .3, k = 1 (the run was p = 0 in fact) and one of four for p = .3, k = 4 (.25),
    # both labelled 0.3
    problems = _problems(hard_proportion=proportion, num_negatives=k)
    assert len(problems) == 1 and f"negatives.hard_proportion={proportion:g}" in problems[0]
    assert "whole number" in problems[0] and nearest in problems[0]


@pytest.mark.parametrize(("proportion", "k"), [(0.25, 4), (0.75, 4), (0.5, 2), (1, 3), (0.2, 5), (0, 7)])
def test_every_proportion_with_a_whole_number_of_hard_negatives_passes(proportion: float, k: int) -> None:
    assert _problems(hard_proportion=proportion, num_negatives=k) == []


def test_the_sampler_draws_exactly_p_times_k_or_refuses() -> None:
    from mdr.data.negatives import NegativeSampler

    assert NegativeSampler(4, 0.75).num_hard == 3
    with pytest.raises(ValueError, match="p \\* k must be a whole number"):
        NegativeSampler(1, 0.3)


def test_an_unknown_bm25_tokenizer_is_named() -> None:
    assert _problems(pool={"tokenizer": "icu"}) == [
        "negatives.pool.tokenizer must be one of ['default', 'thai_words'], got 'icu'"
    ]
    assert _problems(pool={"tokenizer": "thai_words", "backend": "pyserini"}) == [
        "negatives.pool.tokenizer=thai_words is for backend=bm25s (pyserini uses its analyzer)"
    ]
