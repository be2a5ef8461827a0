"""Denoised hard negatives: the relative-margin rule, teacher scores, the score cache and the pipeline step."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import DictConfig

from mdr.data.schema import DataError, Passage, Query, RetrievalSplit
from mdr.mining.denoise import (
    DenoiseSettings,
    NegativePools,
    apply_relative_margin,
    denoise_pools,
    teacher_scores,
)
from mdr.mining.pools import RawPools, load_pools
from mdr.models.bi_encoder import BiEncoder, EncoderSettings, load_tokenizer

TINY_SETTINGS = EncoderSettings(pooling="mean", normalize=True, query_max_length=48, passage_max_length=96)


def test_relative_margin_rule_by_hand() -> None:
    """positive - |positive| * margin, lowest positive, boundary kept, sign-safe, everything counted."""
    pools = {
        "q1": ["a", "b", "c", "d"],
        "q2": ["e", "f"],
        "q3": ["g"],  # no judged positive: kept as it is
        "q4": [],
        "q5": ["h", "i"],
    }
    scores = RawPools(
        candidates={
            "q1": [("a", 0.90), ("b", 0.77), ("c", 0.76), ("d", 0.10)],
            "q2": [("e", -0.205), ("f", -0.30)],
            "q3": [("g", 0.99)],
            "q5": [("h", 0.50), ("i", 0.49)],
        },
        # q1: ceiling 0.8 - 0.04 = 0.76; q2: -0.2 - 0.01 = -0.21 (a naive 0.95 * -0.2 = -0.19 would keep e)
        positive_scores={"q1": 0.8, "q2": -0.2, "q5": 0.5},
    )
    kept, stats = apply_relative_margin(pools, scores, 0.05, teacher="t")
    assert kept == {"q1": ["c", "d"], "q2": ["f"], "q3": ["g"], "q4": [], "q5": []}
    assert (stats.queries, stats.candidates, stats.dropped) == (5, 9, 5)
    assert (stats.queries_with_drops, stats.emptied, stats.without_positive) == (3, 1, 1)
    assert stats.teacher == "t" and stats.relative_margin == 0.05
    # margin 0: only candidates above the positive go; a larger margin never keeps more
    kept0, stats0 = apply_relative_margin(pools, scores, 0.0)
    assert kept0["q1"] == ["b", "c", "d"] and kept0["q2"] == ["e", "f"] and kept0["q5"] == ["h", "i"]
    assert stats0.dropped == 1
    _, stats_wide = apply_relative_margin(pools, scores, 0.5)
    assert stats_wide.dropped >= stats.dropped >= stats0.dropped


def test_settings_are_validated(make_cfg: Callable[..., DictConfig]) -> None:
    from mdr.validation import config_problems

    assert not DenoiseSettings().enabled and DenoiseSettings().relative_margin == 0.05
    assert config_problems(make_cfg("negatives.denoise.relative_margin=0.95")) == [
        "negatives.denoise.relative_margin must be in [0, 0.5], got 0.95"
    ]
    assert "unknown keys ['margin']" in config_problems(make_cfg("+negatives.denoise.margin=0.1"))[0]
    assert "negatives.denoise.batch_size" in config_problems(make_cfg("negatives.denoise.batch_size=0"))[0]


def _split() -> RetrievalSplit:
    """Two queries; q1 has two positives, and its pool holds exact copies of both under other docids."""
    corpus = {
        "p1": Passage("p1", "The Chao Phraya river flows through Bangkok to the Gulf of Thailand.", "Rivers"),
        "p2": Passage("p2", "Bangkok lies on the delta of the Chao Phraya.", "Cities"),
        "dup1": Passage("dup1", "The Chao Phraya river flows through Bangkok to the Gulf of Thailand.", "Rivers"),
        "dup2": Passage("dup2", "Bangkok lies on the delta of the Chao Phraya.", "Cities"),
        "n1": Passage("n1", "The population of Hindi speakers grew in the twentieth century."),
        "n2": Passage("n2", "Football clubs play in the national league every season."),
        "n3": Passage("n3", "A river delta forms where a river meets the sea."),
        "p3": Passage("p3", "The Ganges is a sacred river in India."),
        "n4": Passage("n4", "Rice is the staple food of the region."),
    }
    queries = {
        "q1": Query("q1", "Which river flows through Bangkok?"),
        "q2": Query("q2", "Which river is sacred in India?"),
    }
    qrels = {"q1": {"p1": 1, "p2": 1, "n1": 0}, "q2": {"p3": 2}}
    return RetrievalSplit(corpus, queries, qrels)


POOLS = {"q1": ["dup1", "n1", "dup2", "n2", "n3"], "q2": ["n3", "n4", "dup1", "n2"]}


@pytest.fixture
def tiny_teacher(tiny_model: Path) -> Callable[[], tuple[BiEncoder, Any, str]]:
    loads: list[int] = []

    def load() -> tuple[BiEncoder, Any, str]:
        loads.append(1)
        return BiEncoder.from_pretrained(tiny_model, TINY_SETTINGS), load_tokenizer(tiny_model), str(tiny_model)

    load.loads = loads  # type: ignore[attr-defined]
    return load


def _fp32_score(encoder: BiEncoder, tokenizer: Any, query: str, passage: Passage) -> float:
    with torch.inference_mode():
        q = encoder.encode_queries(tokenizer([query], return_tensors="pt", truncation=True, max_length=48))
        text = f"{passage.title} {passage.text}" if passage.title else passage.text
        p = encoder.encode_passages(tokenizer([text], return_tensors="pt", truncation=True, max_length=96))
    return float((q @ p.T).item())


def test_teacher_scores_match_an_independent_fp32_computation(tiny_teacher: Callable) -> None:
    split = _split()
    encoder, tokenizer, _ = tiny_teacher()
    scores = teacher_scores(POOLS, split, encoder, tokenizer, batch_size=3)
    encoder.float().eval()
    for query_id, candidates in POOLS.items():
        query = split.queries[query_id].text
        got = dict(scores.candidates[query_id])
        assert list(got) == candidates
        for docid in candidates:  # bf16 autocast where the CPU has it: agree to bf16 precision
            assert got[docid] == pytest.approx(_fp32_score(encoder, tokenizer, query, split.corpus[docid]), abs=0.03)
        positives = [_fp32_score(encoder, tokenizer, query, split.corpus[d]) for d in split.positives(query_id)]
        assert scores.positive_scores[query_id] == pytest.approx(min(positives), abs=0.03)  # the lowest positive
    # the grade-0 judgement n1 is not a positive of q1
    assert split.positives("q1") == ["p1", "p2"]


def test_denoise_drops_copies_of_positives_and_caches_teacher_scores(tiny_teacher: Callable, tmp_path: Path) -> None:
    split = _split()
    settings = DenoiseSettings(enabled=True, relative_margin=0.05)
    pools = denoise_pools(POOLS, split, "th", settings, tiny_teacher, tmp_path, device="cpu")
    assert isinstance(pools, NegativePools) and isinstance(pools, dict)
    stats = pools.denoise
    assert stats is not None and not stats.from_cache and Path(stats.cache_file).is_file()
    # a copy of a positive scores like that positive: the copy of the lower-scoring positive equals the
    # threshold's base, the other one lies above it; both are > positive - 5% |positive| and go
    assert "dup1" not in pools["q1"] and "dup2" not in pools["q1"]
    # every other decision follows the rule on the scores in the cache
    cached = load_pools(Path(stats.cache_file))
    expected_drops = 0
    for query_id, candidates in POOLS.items():
        positive = cached.positive_scores[query_id]
        ceiling = positive - abs(positive) * 0.05
        keep = [d for d, s in cached.candidates[query_id] if s <= ceiling]
        assert pools[query_id] == keep
        expected_drops += len(candidates) - len(keep)
    assert stats.dropped == expected_drops >= 2
    assert stats.candidates == 9 and stats.queries == 2 and stats.without_positive == 0
    assert sum(len(p) for p in pools.values()) == stats.candidates - stats.dropped
    # the same pools again: scores from the cache, same result
    again = denoise_pools(POOLS, split, "th", settings, tiny_teacher, tmp_path, device="cpu")
    assert again.denoise.from_cache and dict(again) == dict(pools) and again.denoise.dropped == stats.dropped
    # another margin reuses the teacher scores and drops at least as many
    wider = denoise_pools(
        POOLS, split, "th", DenoiseSettings(enabled=True, relative_margin=0.3), tiny_teacher, tmp_path, device="cpu"
    )
    assert wider.denoise.from_cache and wider.denoise.cache_file == stats.cache_file
    assert wider.denoise.dropped >= stats.dropped
    # other pools: other scores file
    other = denoise_pools({"q2": ["n4", "n2"]}, split, "th", settings, tiny_teacher, tmp_path, device="cpu")
    assert not other.denoise.from_cache and other.denoise.cache_file != stats.cache_file


def test_teacher_is_a_model_group_or_a_folder(make_cfg: Callable[..., DictConfig], tiny_model: Path) -> None:
    from mdr.validation import build_spec, config_problems, resolve_teacher

    cfg = make_cfg()
    group = resolve_teacher(cfg, "me5_small")
    assert group.folder is None and group.model.name == "me5_small" and cfg.model.name == "tiny"
    assert group.model.name_or_path == f"{cfg.paths.cache_dir}/models/me5-small"
    assert group.model.encoder.query_prefix == "query: "
    folder = resolve_teacher(cfg, str(tiny_model))
    assert folder.model == build_spec(cfg).model and folder.folder == str(tiny_model.resolve())
    with pytest.raises(DataError, match="negatives.denoise.teacher='nope'"):
        resolve_teacher(cfg, "nope")
    # refused with the config, before any data is read: only where denoising is on
    assert config_problems(make_cfg("negatives.denoise.teacher=nope")) == []
    problems = config_problems(make_cfg("negatives.denoise.enabled=true", "negatives.denoise.teacher=nope"))
    assert len(problems) == 1 and "negatives.denoise.teacher='nope': neither a model group" in problems[0]


def test_pipeline_denoises_pools_and_reports_counts(make_cfg: Callable[..., DictConfig], tiny_model: Path) -> None:
    from mdr.pipeline import load_splits
    from mdr.training import negative_pools
    from mdr.validation import build_spec

    def pools(cfg: DictConfig, train: RetrievalSplit) -> NegativePools:
        spec = build_spec(cfg)
        return negative_pools(spec, spec.negatives, train, spec.language)

    train, _ = load_splits(build_spec(make_cfg("negatives.hard_proportion=1")))
    assert train is not None
    plain = pools(make_cfg("negatives.hard_proportion=1"), train)
    assert plain.denoise is None and plain
    cfg = make_cfg(
        "negatives.hard_proportion=1",
        "negatives.denoise.enabled=true",
        f"negatives.denoise.teacher={tiny_model}",
        "negatives.denoise.relative_margin=0.005",  # the random tiny model's cosines all lie near 0.97
    )
    denoised = pools(cfg, train)
    stats = denoised.denoise
    assert stats is not None and stats.teacher == str(tiny_model.resolve())
    assert stats.candidates == sum(len(p) for p in plain.values()) and stats.queries == len(plain)
    assert 0 < stats.dropped < stats.candidates
    assert sum(len(p) for p in denoised.values()) == stats.candidates - stats.dropped
    for query_id, kept in denoised.items():  # denoising only removes, in the miner's order
        assert kept == [d for d in plain[query_id] if d in set(kept)]
    # p = 0 mines nothing and denoises nothing
    none = pools(make_cfg("negatives.hard_proportion=0", "negatives.denoise.enabled=true"), train)
    assert none == {} and none.denoise is None
