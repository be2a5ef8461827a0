"""Pool diagnostics: each measure on a constructed case with a known answer, a tiny teacher on a copy of the
positive, the command end to end on the demo data, and the sweep report's section."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mdr.data.schema import DataError, Passage, Query, RetrievalSplit
from mdr.mining.denoise import teacher_scores
from mdr.mining.pools import RawPools
from mdr.models.bi_encoder import BiEncoder, EncoderSettings, load_tokenizer
from mdr.pool_diagnostics import (
    Draw,
    docid_location,
    location_measures,
    overlap_shares,
    pool_measures,
    positive_ranks,
    rank_measures,
    sampled_negatives,
    scoring_pools,
    teacher_measures,
)

from conftest import DATA_DIR


def _sentence(docid: str, text: str = "") -> Passage:
    return Passage(docid, text or f"sentence {docid}")


def _split() -> RetrievalSplit:
    """q1's positive is xx_a00_p00_s00, q2's xx_a01_p00_s00; q3 has no positive."""
    docids = [f"xx_a{a:02d}_p{p:02d}_s{s:02d}" for a in range(3) for p in range(2) for s in range(4)]
    corpus = {docid: _sentence(docid) for docid in docids}
    queries = {q: Query(q, f"question {q}") for q in ("q1", "q2", "q3")}
    qrels = {"q1": {"xx_a00_p00_s00": 1}, "q2": {"xx_a01_p00_s00": 1}}
    return RetrievalSplit(corpus, queries, qrels)


def test_docid_location_reads_article_and_paragraph() -> None:
    assert docid_location("th_a03_p01_s02") == ("th_a03", "th_a03_p01")
    assert docid_location("th_a03_p01") == ("th_a03", "th_a03_p01")  # paragraph-level corpora (xquad-para)
    assert docid_location("123#4") is None and docid_location("th_a03") is None


def test_positive_rank_in_the_miners_ranking() -> None:
    split = RetrievalSplit(
        {d: _sentence(d) for d in ("p1", "p2", "p3", "p4", "a", "b", "c")},
        {q: Query(q, q) for q in ("q1", "q2", "q3", "q4", "q5")},
        {"q1": {"p1": 1}, "q2": {"p2": 1}, "q3": {"p3": 1}, "q4": {"p4": 1}},
    )
    raw = RawPools(
        candidates={
            "q1": [("a", 5.0), ("b", 4.0), ("c", 3.0)],  # positive 4.5: one candidate above -> rank 2
            "q2": [("a", 5.0), ("b", 4.0), ("c", 3.0)],  # positive 6: rank 1
            "q3": [("a", 5.0), ("b", 4.0), ("c", 3.0)],  # positive 2: below all 3 = the depth -> beyond it
            "q4": [("a", 1.0)],  # positive not retrieved: no score
            "q5": [("a", 1.0)],  # no judged positive: left out
        },
        positive_scores={"q1": 4.5, "q2": 6.0, "q3": 2.0},
    )
    ranks = positive_ranks(raw, split, depth=3)
    assert ranks == {"q1": 2, "q2": 1, "q3": None, "q4": None}
    measures = rank_measures(ranks)
    assert measures["positive_rank1_share"] == 0.25 and measures["positive_beyond_depth_share"] == 0.5
    assert math.isnan(measures["positive_rank_median"])  # half beyond the depth: the median is too
    measures = rank_measures({"q1": 2, "q2": 1, "q3": None})
    assert measures["positive_rank_median"] == 2.0


def test_sampled_negatives_from_the_positives_paragraph_give_share_one() -> None:
    split = _split()
    same_paragraph = ["xx_a00_p00_s01", "xx_a00_p00_s02", "xx_a00_p00_s03"]
    other_article = ["xx_a02_p00_s01", "xx_a02_p01_s02", "xx_a02_p01_s03"]
    draws = sampled_negatives(split, {"q1": same_paragraph}, 2, 1.0, seeds=[0, 1, 2])
    assert len(draws) == 6 and all(set(d.negatives) <= set(same_paragraph) for d in draws if d.query_id == "q1")
    q1 = [d for d in draws if d.query_id == "q1"]
    assert location_measures(q1) == {"located_share": 1.0, "same_paragraph_share": 1.0, "same_article_share": 1.0}
    both = sampled_negatives(split, {"q1": same_paragraph, "q2": other_article}, 2, 1.0, seeds=[0])
    assert location_measures(both) == {"located_share": 1.0, "same_paragraph_share": 0.5, "same_article_share": 0.5}
    # same article, other paragraph: counted for the article only
    article = sampled_negatives(split, {"q1": ["xx_a00_p01_s00", "xx_a00_p01_s01"]}, 2, 1.0, seeds=[0])
    shares = location_measures([d for d in article if d.query_id == "q1"])
    assert shares["same_paragraph_share"] == 0.0 and shares["same_article_share"] == 1.0
    # docids without article and paragraph are left out of the shares, and counted
    odd = [Draw("q1", 0, "xx_a00_p00_s00", ("xx_a00_p00_s01", "other-1"))]
    assert location_measures(odd) == {"located_share": 0.5, "same_paragraph_share": 1.0, "same_article_share": 1.0}


def test_pool_measures_count_random_fill_ins() -> None:
    split = _split()
    pools = {"q1": ["xx_a00_p00_s01"], "q2": []}  # q1 short by one, q2 empty: random negatives fill in
    draws = sampled_negatives(split, pools, 2, 1.0, seeds=[0])
    measures = pool_measures(pools, draws)
    assert measures == {
        "queries": 2,
        "pool_size_median": 0.5,
        "queries_empty_pool": 1,
        "sampled": 4,
        "in_pool_share": 0.25,
    }
    half = pool_measures({"q1": ["xx_a00_p00_s01", "xx_a00_p00_s02"]}, sampled_negatives(split, pools, 2, 0.5, [0]))
    assert half["sampled"] == 4 and half["in_pool_share"] <= 0.5  # p = .5: one hard of two per query


def test_teacher_measures_by_hand() -> None:
    draws = [Draw("q1", 0, "pos1", ("a", "b", "c", "d")), Draw("q2", 0, "pos2", ("e",))]
    scores = RawPools(
        candidates={"q1": [("a", 0.9), ("b", 0.8), ("c", 0.78), ("d", 0.4)], "q2": [("e", 0.1)]},
        positive_scores={"q1": 0.8, "q2": 0.5},
    )
    measures = teacher_measures(draws, scores)
    # ratios 1.125, 1.0, 0.975, 0.5, 0.2; at least the positive: a, b; above 0.95 * positive (0.76): a, b, c
    assert measures["teacher_ratio_median"] == pytest.approx(0.975)
    assert measures["teacher_at_least_positive_share"] == pytest.approx(2 / 5)
    assert measures["teacher_above_denoise_share"] == pytest.approx(3 / 5)
    with pytest.raises(KeyError, match="'zz' has no teacher score"):
        teacher_measures([Draw("q1", 0, "pos1", ("zz",))], scores)


def test_overlap_between_pools() -> None:
    draws = {
        "one": [Draw("q1", 0, "p", ("a", "b")), Draw("q2", 0, "p", ("c", "d"))],
        "two": [Draw("q1", 0, "p", ("a", "x"))],
    }
    pools = {"one": {"q1": ["a", "b"], "q2": ["c", "d"]}, "two": {"q1": ["a", "x"], "q2": ["c"]}}
    assert overlap_shares(draws, pools) == [
        ("one", "one", 1.0),
        ("one", "two", 0.5),  # a and c are in two's pool for the same query; b and d are not
        ("two", "one", 0.5),
        ("two", "two", 1.0),
    ]
    # the same docid under another query does not count
    assert overlap_shares({"one": [Draw("q2", 0, "p", ("a",))]}, {"two": {"q1": ["a"]}}) == [("one", "two", 0.0)]


def test_a_copy_of_the_positive_scores_like_the_positive(tiny_model: Path) -> None:
    text = "The Chao Phraya river flows through Bangkok to the Gulf of Thailand."
    corpus = {
        "xx_a00_p00_s00": Passage("xx_a00_p00_s00", text),
        "xx_a05_p00_s00": Passage("xx_a05_p00_s00", text),  # the copy, elsewhere in the corpus
        "xx_a01_p00_s00": Passage("xx_a01_p00_s00", "Football clubs play in the national league every season."),
        "xx_a02_p00_s00": Passage("xx_a02_p00_s00", "Rice is the staple food of the region."),
    }
    split = RetrievalSplit(
        corpus, {"q1": Query("q1", "Which river flows through Bangkok?")}, {"q1": {"xx_a00_p00_s00": 1}}
    )
    settings = EncoderSettings(pooling="mean", normalize=True, query_max_length=48, passage_max_length=96)
    encoder, tokenizer = BiEncoder.from_pretrained(tiny_model, settings), load_tokenizer(tiny_model)
    draws = [Draw("q1", 0, "xx_a00_p00_s00", ("xx_a05_p00_s00", "xx_a01_p00_s00", "xx_a02_p00_s00"))]
    scores = teacher_scores(scoring_pools(draws), split, encoder, tokenizer, batch_size=2)
    copy = teacher_measures([Draw("q1", 0, "xx_a00_p00_s00", ("xx_a05_p00_s00",))], scores)
    assert copy["teacher_ratio_median"] == pytest.approx(1.0, abs=0.01)  # bf16 autocast where the CPU has it
    assert copy["teacher_above_denoise_share"] == 1.0
    scored = dict(scores.candidates["q1"])
    assert scored["xx_a05_p00_s00"] >= max(scored["xx_a01_p00_s00"], scored["xx_a02_p00_s00"])


def _run_demo(tmp_path: Path, cache_dir: Path, tiny_model: Path, negatives: str, seeds: list[int]) -> pd.DataFrame:
    from mdr.pool_diagnostics import parse_options, run

    return run(
        ["th"],
        parse_options(negatives),
        seeds,
        tmp_path / "diagnostics",
        teacher=str(tiny_model),
        overrides=["data=demo", "model=tiny", f"paths.data_dir={DATA_DIR}", f"paths.cache_dir={cache_dir}"],
        command="python -m mdr.pool_diagnostics (test)",
    )


def test_command_measures_the_pools_a_run_samples_from(tmp_path: Path, cache_dir: Path, tiny_model: Path) -> None:
    from mdr.mining.bm25 import bm25s_search
    from mdr.utils.instantiate import build_reader

    frame = _run_demo(tmp_path, cache_dir, tiny_model, "bm25,bm25_ranks4_50", [0, 1])
    out = tmp_path / "diagnostics"
    assert frame.negatives.tolist() == ["bm25", "bm25_ranks4_50"]
    assert frame.label.tolist() == ["BM25 ranks 1-50", "BM25 ranks 4-50"]
    written = pd.read_csv(out / "pool_diagnostics.csv")
    assert written.negatives.tolist() == ["bm25", "bm25_ranks4_50"] and (written.seeds == "0-1").all()
    assert (written.num_negatives == 4).all() and (written.hard_proportion == 1.0).all()
    # every training query with a positive, 4 negatives each per seed, all from the pool (no pool is short here)
    reader_cfg = _demo_cfg(tmp_path, cache_dir)
    train = build_reader(reader_cfg.data.reader).load("train")
    usable = sum(bool(train.positives(q)) for q in train.queries)
    assert (written.queries == usable).all() and (written.sampled == usable * 4 * 2).all()
    assert (written.in_pool_share == 1.0).all()
    # xquad-para docids are paragraphs: no negative is the positive's own paragraph
    assert (written.same_paragraph_share == 0.0).all() and (written.located_share == 1.0).all()
    # one BM25 ranking under both windows: the positive's rank is the window's business, not the miner's
    for column in ("positive_rank_median", "positive_rank1_share", "positive_beyond_depth_share"):
        assert written[column].iloc[0] == written[column].iloc[1]
    # ... and agrees with BM25's own full ranking (positives included), computed here without the pool code
    rankings = bm25s_search(train, 101, cache_dir=cache_dir)
    first = [ranking[0][0] in train.positives(q) for q, ranking in rankings.items() if train.positives(q)]
    assert written.positive_rank1_share.iloc[0] == pytest.approx(np.mean(first), abs=1e-4)
    # ranks 4-50 lie inside ranks 1-50: every negative sampled from them is in the 1-50 pool, not the reverse
    overlap = pd.read_csv(out / "pool_overlap.csv").set_index(["negatives", "other"]).share
    assert overlap[("bm25_ranks4_50", "bm25")] == 1.0 and overlap[("bm25", "bm25")] == 1.0
    assert overlap[("bm25", "bm25_ranks4_50")] < 1.0
    summary = (out / "pool_diagnostics.md").read_text()
    assert "| th | BM25 ranks 4-50 |" in summary and "seeds 0-1, k = 4, p = 1" in summary
    assert (out / "pool_diagnostics.png").stat().st_size > 10_000


def _demo_cfg(tmp_path: Path, cache_dir: Path) -> Any:
    from hydra import compose, initialize_config_dir

    from conftest import ROOT

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(
            config_name="train",
            overrides=["data=demo", "language=th", f"paths.data_dir={DATA_DIR}", f"paths.cache_dir={cache_dir}"],
        )


def test_bad_options_are_refused_before_any_data_is_read(tmp_path: Path) -> None:
    from mdr.pool_diagnostics import compose_cells, parse_options, parse_seeds

    assert parse_seeds("0-2,5") == [0, 1, 2, 5]
    with pytest.raises(DataError, match="--seeds 'a-b'"):
        parse_seeds("a-b")
    options = parse_options("bm25,bm25_thai_words:th")
    assert options[1].languages == ("th",) and not options[1].applies_to("hi") and options[0].applies_to("hi")
    with pytest.raises(DataError, match=r"bm25_thai_words:th: \['th'\] not in --languages"):
        compose_cells(["hi"], options, [], tmp_path)
    cells = compose_cells(["th", "hi"], options, [], tmp_path)
    assert sorted(cells) == [("hi", "bm25"), ("th", "bm25"), ("th", "bm25_thai_words")]
    assert cells[("th", "bm25_thai_words")].negatives.pool.tokenizer == "thai_words"
    assert cells[("hi", "bm25")].model.name == "me5_small" and cells[("hi", "bm25")].negatives.hard_proportion == 1


# --- the sweep report's section --------------------------------------------------------------------------------


def test_sweep_report_shows_pool_diagnostics_only_when_present(tmp_path: Path) -> None:
    from test_reporting import _job

    from mdr.reporting.aggregate import aggregate
    from mdr.reporting.pool_diagnostics import COLUMNS

    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.8, 50)
    for seed in (0, 1):
        for proportion in (0.0, 1.0):
            _job(tmp_path, [f"p={proportion}", f"seed={seed}"], base, proportion=proportion, seed=seed)
    aggregate(tmp_path)
    without = (tmp_path / "results.md").read_text()
    assert "Pool diagnostics" not in without
    row = dict.fromkeys(COLUMNS, 0.5) | {
        "language": "th",
        "negatives": "bm25",
        "label": "BM25 ranks 1-50",
        "queries": 555,
        "seeds": "0-4",
        "num_negatives": 4,
        "hard_proportion": 1.0,
        "teacher": "me5_small",
        "positive_rank_median": 1.0,
        "same_paragraph_share": 0.125,
    }
    (tmp_path / "pool_diagnostics").mkdir()
    pd.DataFrame([row]).to_csv(tmp_path / "pool_diagnostics" / "pool_diagnostics.csv", index=False)
    aggregate(tmp_path)
    with_section = (tmp_path / "results.md").read_text()
    assert with_section.startswith(without.rstrip("\n"))  # everything else as it was
    section = with_section[len(without.rstrip("\n")) :]
    assert "### Pool diagnostics" in section and "| th | BM25 ranks 1-50 | 1 / 0.500 / 0.500 | 0.125 |" in section
    pd.DataFrame([{"language": "th"}]).to_csv(tmp_path / "pool_diagnostics" / "pool_diagnostics.csv", index=False)
    with pytest.raises(ValueError, match="pool_diagnostics.csv: not a pool diagnostics file"):
        aggregate(tmp_path)


def test_the_report_sets_each_pool_measure_against_the_languages_deltas() -> None:
    from mdr.reporting.pool_diagnostics import TRACKED, tracking_lines

    languages = ["ar", "de", "hi", "th", "zh"]
    share = [0.01, 0.02, 0.03, 0.04, 0.05]
    frame = pd.DataFrame({"language": languages, "negatives": "bm25", **{column: share for column in TRACKED}})
    frame.loc[:, "positive_rank1_share"] = share[::-1]  # the opposite order: rho -1
    tests = pd.DataFrame(
        {
            "language": languages * 2,
            "variant": ["mask=on,denoise=off"] * 5 + ["mask=on,denoise=on"] * 5,
            "hard_proportion": [1.0] * 10,
            "delta_mrr@100": [-0.03, -0.01, 0.0, 0.01, 0.02] + [9.0] * 5,  # the other variant is not read
        }
    )
    lines = tracking_lines(frame, tests, "mask=on,denoise=off")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines if line.startswith("| ") and "ρ" not in line}
    assert "+1.00" in rows[TRACKED["same_paragraph_share"]] and "-1.00" in rows[TRACKED["positive_rank1_share"]]
    assert "(ar, de, hi, th, zh)" in lines[0]
    assert tracking_lines(frame[frame.language != "ar"].iloc[:3], tests, "mask=on,denoise=off") == []  # < 4 languages
