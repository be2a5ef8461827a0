"""Known-answer tests of mdr.reporting.statistics (Satterthwaite contrasts, slope, curvature, TOST,
interaction, wins / ties / losses, verdicts) and a quick calibration on simulated sweeps."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mdr.reporting.statistics import (
    Cell,
    combine,
    contrast,
    contrast_parts,
    curvature_weights,
    decide,
    estimate,
    holm,
    monotone,
    residual_mean_square,
    slope_weights,
    step_weights,
    tost,
    win_tie_loss,
)

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

from calibration import Scenario, run  # noqa: E402

SEEDS = (0, 1, 2)
PROPORTIONS = [0.0, 0.25, 0.5, 0.75, 1.0]


def _sweep(
    means: list[float],
    seed_sd: float = 0.004,
    noise: float = 0.05,
    seeds: tuple[int, ...] = SEEDS,
    queries: int = 635,
    seed: int = 0,
    base: np.ndarray | None = None,
) -> list[Cell]:
    """One cell per mean: shared query difficulty, a seed shift per run, seed x query noise."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.3, 1.0, queries) if base is None else base
    base = base - base.mean()
    return [
        Cell(seeds, mean + base + rng.normal(0, seed_sd, (len(seeds), 1)) + rng.normal(0, noise, (len(seeds), queries)))
        for mean in means
    ]


def test_seed_dominated_contrast_is_the_paired_t_test_of_the_seed_deltas() -> None:
    """Without seed x query noise the Satterthwaite df is S - 1 and the test is the paired t over seeds."""
    rng = np.random.default_rng(1)
    base = rng.uniform(0, 1, 400)
    shifts = np.array([0.03, 0.01, 0.02])[:, None]
    treated, baseline = Cell(SEEDS, base + shifts), Cell(SEEDS, np.tile(base, (3, 1)))
    result = contrast([treated, baseline], [1.0, -1.0])
    assert result.value == pytest.approx(0.02) and result.df == pytest.approx(2.0)
    assert result.p_value == pytest.approx(stats.ttest_1samp(shifts.ravel(), 0.0).pvalue)
    assert result.seed_level == "paired" and (result.seeds, result.queries) == (3, 400)


def test_seed_x_query_noise_does_not_get_t_of_s_minus_1_tails() -> None:
    """No seed effect, per-query effects of the treatment and seed x query noise: the spread of the per-seed
    deltas is seed x query noise (estimated from 2 x 634 df), most of the variance is the query level, so the
    df are far above S - 1 = 2 and the interval is narrower than a t(2) interval on the per-seed deltas."""
    rng = np.random.default_rng(3)
    treated, baseline = _sweep([0.0, 0.0], seed_sd=0.0, noise=0.1, seed=3)
    per_query_effect = rng.normal(0, 0.2, 635)
    treated = Cell(SEEDS, treated.scores + per_query_effect)
    result = contrast([treated, baseline], [1.0, -1.0])
    assert result.df > 30
    expected = math.sqrt((0.2**2 + 2 * 0.1**2 / 3) / 635)  # query effects + residual, no seed term
    assert result.se == pytest.approx(expected, rel=0.15)
    per_seed = treated.scores.mean(axis=1) - baseline.scores.mean(axis=1)
    t2_half = stats.t.ppf(0.975, 2) * per_seed.std(ddof=1) / math.sqrt(3)
    query_half = 1.96 * (treated.scores - baseline.scores).mean(axis=0).std(ddof=1) / math.sqrt(635)
    assert result.ci_high - result.value < math.hypot(t2_half, query_half)  # the previous procedure's width


def test_seeds_that_reverse_the_effect_are_not_significant() -> None:
    """+0.06, +0.06 and -0.09 on every query: a test over queries alone would call it p < .001."""
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, 635)
    baseline = np.clip(base + rng.normal(0, 0.05, (3, 635)), 0, 1)
    treated = baseline + np.array([0.06, 0.06, -0.09])[:, None]
    result = contrast([Cell(SEEDS, treated), Cell(SEEDS, baseline)], [1.0, -1.0])
    assert result.value == pytest.approx(0.01) and result.p_value > 0.3
    unpaired = contrast([Cell(SEEDS, treated), Cell((7, 8, 9), baseline)], [1.0, -1.0])
    assert unpaired.seed_level == "unpaired" and unpaired.p_value > 0.3


def test_a_negative_seed_component_keeps_the_seed_level_in_the_df() -> None:
    """Seed means that agree more than their seed x query noise implies (seed mean square below the
    residual's): the variance floors at the query term, but its df still carry the 2-df seed term. Dropping
    the seed term there gave df near Q and 9-11% type-I error within that branch (reviewer's simulation)."""
    rng = np.random.default_rng(4)
    base = rng.normal(0.7, 0.3, 635)
    treated = Cell(SEEDS, base + rng.normal(0, 0.1, (3, 635)))
    baseline = Cell(SEEDS, base + rng.normal(0, 0.1, (3, 635)))
    difference = treated.scores - baseline.scores
    centred = difference - difference.mean(axis=1, keepdims=True)
    residual = residual_mean_square(centred) / (3 * 635)  # the residual term, per seed-mean variance
    shifts = np.array([-1.0, 0.0, 1.0]) * math.sqrt(0.5 * residual * 3)  # seed term = half the residual term
    treated = Cell(SEEDS, baseline.scores + centred + shifts[:, None])
    parts = contrast_parts([treated, baseline], [1.0, -1.0])
    assert sum(v for v, _ in parts.terms) < parts.floor  # a negative variance component
    result = estimate(parts)
    assert result.se == pytest.approx(math.sqrt(parts.floor))
    assert result.df < 20, result.df  # not ~Q - 1


def test_pooled_seed_level_over_a_languages_levels() -> None:
    """With five levels of one language, a delta's seed level is the cell x seed interaction over all five,
    (5 - 1)(3 - 1) = 8 df, not the 2 of its own per-seed deltas; with two cells the two are the same; two
    languages give one term each; weights that do not cancel within a language keep the per-contrast term."""
    cells = _sweep([0.7, 0.69, 0.68, 0.67, 0.66], seed_sd=0.01, seed=5)
    delta = [1.0, 0.0, 0.0, 0.0, -1.0]
    own = contrast_parts(cells, delta)
    pooled = contrast_parts(cells, delta, pool=True)
    assert own.value == pooled.value
    assert [df for _, df in own.terms[1:2]] == [2.0] and [df for _, df in pooled.terms[1:2]] == [8.0]
    means = np.stack([cell.scores.mean(axis=1) for cell in cells])  # (levels, seeds)
    interaction = means - means.mean(axis=0) - means.mean(axis=1, keepdims=True) + means.mean()
    assert pooled.terms[1][0] == pytest.approx(2 * (interaction**2).sum() / 8 / 3)
    two = [cells[0], cells[4]]
    flat = [x for term in contrast_parts(two, [1.0, -1.0], pool=True).terms for x in term]
    assert flat == pytest.approx([x for term in contrast_parts(two, [1.0, -1.0]).terms for x in term])
    other = [Cell(cell.seeds, cell.scores + 0.01, group="hi") for cell in _sweep([0.7, 0.7], seed=6)]
    mixed = contrast_parts([cells[0], cells[4], *other], [1.0, -1.0, -1.0, 1.0], pool=True)
    assert [df for v, df in mixed.terms if v > 0][1:] == [2.0, 2.0]  # one seed term per language
    single = contrast_parts(cells, [1.0, 0.0, 0.0, 0.0, 0.0], pool=True)  # a cell mean: nothing cancels
    assert [df for _, df in single.terms[1:2]] == [2.0]


def test_one_seed_uses_queries_only_and_says_so() -> None:
    treated, baseline = _sweep([0.02, 0.0], seeds=(0,))
    result = contrast([treated, baseline], [1.0, -1.0])
    assert (result.seeds, result.seed_level) == (1, "none") and 400 < result.df <= 634  # df for kurtosis
    per_query = treated.scores[0] - baseline.scores[0]
    assert result.value / result.se == pytest.approx(stats.ttest_1samp(per_query, 0.0).statistic)
    on_one = contrast([_sweep([0.0])[0], baseline], [1.0, -1.0])  # seeds 0-2 against seed 0: paired on seed 0
    assert (on_one.seed_level, on_one.seed_ids, on_one.dropped_seeds) == ("none", (0,), True)
    partial = contrast([_sweep([0.0])[0], _sweep([0.0], seeds=(7,))[0]], [1.0, -1.0])  # no seed shared
    assert (partial.seed_level, partial.seed_ids) == ("partial", ())
    slope = contrast([baseline, treated], slope_weights([0, 1]))
    decision = decide(slope, None, [(1.0, result)])
    assert decision.kind == "no verdict" and "paired on seed 0," in decision.text


def test_planted_slope_is_recovered_from_every_level() -> None:
    cells = _sweep([0.7 - 0.03 * p for p in PROPORTIONS], seed=2)
    weights = slope_weights(PROPORTIONS)
    assert np.count_nonzero(weights) == 4  # 0.5 is the centre; 0.25 and 0.75 count, unlike a p = 1 delta
    slope = contrast(cells, weights)
    assert slope.value == pytest.approx(np.polyfit(PROPORTIONS, [c.scores.mean() for c in cells], 1)[0])
    assert slope.ci_low < -0.03 < slope.ci_high < 0 and slope.p_value < 0.05
    curvature = contrast(cells, curvature_weights(PROPORTIONS))
    assert curvature.p_value > 0.05


def test_planted_curvature_is_detected() -> None:
    cells = _sweep([0.7 + 0.08 * (p * p - p) for p in PROPORTIONS], seed=3)
    curvature = contrast(cells, curvature_weights(PROPORTIONS))
    assert curvature.p_value < 0.01 and curvature.ci_low < 0.08 < curvature.ci_high
    slope = contrast(cells, slope_weights(PROPORTIONS))
    assert slope.p_value > 0.05  # p^2 - p is symmetric about 0.5: no linear trend
    with pytest.raises(ValueError, match="3 distinct"):
        curvature_weights([0.0, 1.0, 1.0])


def test_tost_passes_for_no_effect_and_fails_for_a_larger_one() -> None:
    null = _sweep([0.0, 0.0], seed_sd=0.001, noise=0.02, seed=4)
    effect = _sweep([0.02, 0.0], seed_sd=0.001, noise=0.02, seed=4)
    none = contrast(null, [1.0, -1.0])
    some = contrast(effect, [1.0, -1.0])
    assert tost(none, 0.01) < 0.05
    assert tost(some, 0.01) > 0.5
    lower, upper = none.interval(0.90)  # TOST at 5% = the 90% interval inside the margin
    assert -0.01 < lower < upper < 0.01
    slope = contrast(null, slope_weights([1.0, 0.0]))
    decision = decide(slope, None, [(1.0, none)], margin=0.01)
    assert decision.kind == "equivalent" and decision.text.startswith("no effect larger than 0.01 (TOST, p=")
    assert decision.text.endswith("at 3 seeds")
    with pytest.raises(ValueError, match="margin"):
        tost(none, 0.0)


def test_interaction_detects_a_planted_language_difference() -> None:
    """Delta of deltas: language A loses 0.04 at p = 1, language B nothing; parallel queries or not."""
    rng = np.random.default_rng(5)
    base = rng.uniform(0.3, 1.0, 635)
    first = _sweep([0.70, 0.66], seed=6, base=base)
    second = _sweep([0.80, 0.80], seed=7, base=base)
    paired = contrast([*first, *second], [-1.0, 1.0, 1.0, -1.0])
    assert paired.ci_low < -0.04 < paired.ci_high and paired.p_value < 0.01
    independent = estimate(
        combine([contrast_parts(first, [-1.0, 1.0]), contrast_parts(second, [-1.0, 1.0])], [1.0, -1.0])
    )
    assert independent.value == pytest.approx(paired.value) and independent.p_value < 0.01
    same = contrast([*first, *_sweep([0.80, 0.76], seed=9, base=base)], [-1.0, 1.0, 1.0, -1.0])
    assert same.p_value > 0.05


def test_win_tie_loss_counts_seed_averaged_queries() -> None:
    treated = Cell((0, 1), np.array([[1.0, 0.5, 0.2, 0.2], [1.0, 0.5, 0.4, 0.0]]))
    baseline = Cell((0, 1), np.array([[1.0, 1.0, 0.1, 0.5], [1.0, 0.0, 0.1, 0.5]]))
    assert win_tie_loss(treated, baseline) == (1, 2, 1)  # win q2 (.3 > .1); ties q0, q1 (.5 = .5); loss q3


def _estimate(value: float, p_value: float, seeds: int = 3) -> object:
    from mdr.reporting.statistics import Estimate

    se = abs(value) / max(stats.norm.isf(p_value / 2), 1e-9) if value else 0.01
    return Estimate(value, value - 1.96 * se, value + 1.96 * se, p_value, seeds, 635, "paired", se, math.inf)


def test_verdict_says_only_what_the_tests_show() -> None:
    slope = _estimate(-0.04, 0.001)
    flat_curve = _estimate(0.001, 0.8)
    deltas = [(0.5, _estimate(-0.02, 0.01)), (1.0, _estimate(-0.04, 0.001))]
    steps = [_estimate(-0.02, 0.02), _estimate(-0.02, 0.03)]
    hurts = decide(slope, flat_curve, deltas, steps)
    assert hurts.kind == "hurts"
    assert hurts.text == (
        "hard negatives hurt (slope < 0: -0.0400 per unit p, p=0.002, monotone: every step down) at 3 seeds"
    )
    not_every_step = decide(slope, flat_curve, deltas, [_estimate(-0.035, 0.001), _estimate(-0.005, 0.4)])
    assert "monotone" not in not_every_step.text and not_every_step.kind == "hurts"
    mixed = decide(slope, flat_curve, [(0.5, _estimate(0.02, 0.001)), (1.0, _estimate(-0.04, 0.001))])
    assert "but better at p=0.5 (+0.0200, p=0.002)" in mixed.text
    curved = decide(_estimate(0.0, 0.9), _estimate(-0.08, 0.001), deltas)
    assert curved.kind == "curved"
    assert curved.text == (
        "curved (quadratic term -0.0800, p=0.002) response to hard negatives, no linear trend at 3 seeds"
    )
    # the family is {slope, curvature}: a slope at p = 0.04 with a null curvature is not enough (Holm: 0.08)
    weak = decide(_estimate(-0.01, 0.04), _estimate(0.0, 0.9), [(1.0, _estimate(-0.01, 0.04))])
    assert weak.kind == "inconclusive"
    assert weak.text.startswith("inconclusive at 3 seeds: no trend (slope p=0.080), effects up to 0.0")
    assert decide(_estimate(-0.01, 0.04), None, [(1.0, _estimate(-0.01, 0.04))]).kind == "hurts"
    # two levels: the one step is the slope, "monotone" would add nothing
    two_levels = decide(slope, None, [(1.0, slope)], [slope])
    assert two_levels.kind == "hurts" and "monotone" not in two_levels.text


def test_holm_and_monotone() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.2, 0.01]) == pytest.approx([0.2, 0.02])
    assert monotone([_estimate(0.01, 0.001), _estimate(0.01, 0.01)]) == 1
    assert monotone([_estimate(0.01, 0.001), _estimate(-0.01, 0.001)]) == 0
    assert [list(w) for w in step_weights(3)] == [[-1, 1, 0], [0, -1, 1]]


# --- calibration on simulated sweeps (quick settings; benchmarks/calibration.py runs the full grid) --------


def _band(rate: float, simulations: int, nominal: float = 0.05) -> bool:
    """``rate`` within 3.3 binomial SEs of ``nominal`` (a false alarm about once in a thousand runs)."""
    return abs(rate - nominal) <= 3.3 * math.sqrt(nominal * (1 - nominal) / simulations)


def test_calibration_quick() -> None:
    """Type-I error and coverage near nominal on realistic nulls; power for a true 0.02 at 3 seeds."""
    simulations = 700
    null = run(Scenario(seeds=3, seed_sd=0.005, seed_correlation=0.5), simulations, seed=11)["rates"]
    for test in ("delta", "slope", "curvature", "interaction"):
        assert _band(null[f"{test}.reject"], simulations), (test, null)
        assert _band(1 - null[f"{test}.cover"], simulations), (test, null)
    assert _band(null["verdict.effect"], simulations), null
    effect = run(Scenario(seeds=3, seed_sd=0.005, seed_correlation=0.5, effect=0.02), 300, seed=12)["rates"]
    assert effect["delta.reject"] >= 0.8 and effect["verdict.right_direction"] >= 0.75, effect
    assert effect["delta.reject"] > effect["delta.naive_reject"]  # t(S - 1) on the seed means loses power


# --- the analysis of a results frame: language x p on parallel queries, resource contrast, nDCG@10 ------------


def _results(tmp_path: Path, drops: dict[str, float], low: dict[str, bool], prefixed: bool = True) -> pd.DataFrame:
    """Runs of languages on the same 300 questions (ids ``<lang>_q...``) at p = 0, .5, 1 and 3 seeds; each
    language loses ``drops[language] * p`` on every query."""
    rng = np.random.default_rng(21)
    base = rng.uniform(0.3, 1.0, 300)
    rows = []
    for language, drop in drops.items():
        difficulty = np.clip(base + rng.normal(0, 0.05, 300), 0, 1)
        for proportion in (0.0, 0.5, 1.0):
            for seed in SEEDS:
                values = difficulty - drop * proportion + rng.normal(0, 0.002) + rng.normal(0, 0.03, 300)
                ids = [f"{language}_q{i:03d}" if prefixed else f"{language}{i:03d}" for i in range(300)]
                path = tmp_path / f"{language}_{proportion}_{seed}.tsv"
                pd.DataFrame({"query_id": ids, "mrr@100": values, "ndcg@10": values + 0.05}).to_csv(
                    path, sep="\t", index=False
                )
                rows.append(
                    {
                        "model": "m",
                        "stage": "target_only",
                        "language": language,
                        "variant": "mask=on,denoise=off",
                        "hard_proportion": proportion,
                        "seed": seed,
                        "mrr@100": float(values.mean()),
                        "ndcg@10": float(values.mean() + 0.05),
                        "low_resource": low[language],
                        "per_query_file": str(path),
                    }
                )
    return pd.DataFrame(rows)


def test_analysis_tests_language_x_p_on_parallel_queries(tmp_path: Path) -> None:
    from mdr.reporting.analysis import analyse

    results = _results(tmp_path, {"th": 0.04, "de": 0.0, "hi": 0.0}, {"th": True, "hi": True, "de": False})
    analysis = analyse(results, equivalence_margin=0.01)
    frame = analysis.interactions
    pair = frame.apply(lambda row: frozenset((row.language, row.other_language)), axis=1)
    th_de = frame[(pair == frozenset(("th", "de"))) & (frame.contrast == "delta at p=1")].iloc[0]
    sign = -1.0 if th_de.language == "th" else 1.0  # language minus other language: th loses 0.04
    assert th_de["difference_mrr@100"] == pytest.approx(sign * 0.04, abs=0.01)
    assert th_de.p_holm < 0.05 and th_de.query_pairing == "paired by query" and th_de.queries == 300
    de_hi = frame[(pair == frozenset(("de", "hi"))) & (frame.contrast == "delta at p=1")].iloc[0]
    assert de_hi.p_value > 0.05
    assert not any(frame.contrast.str.startswith("slope"))  # at p = 0, .5, 1 the slope is the p = 1 delta again
    [contrast_row] = analysis.resource_contrasts.to_dict("records")
    assert set(contrast_row["low_resource"].split()) == {"th", "hi"} and contrast_row["high_resource"] == "de"
    assert contrast_row["slope_difference_mrr@100"] == pytest.approx(-0.02, abs=0.01)  # mean(-0.04, 0) - 0
    tests = analysis.tests.set_index(["language", "hard_proportion"])
    assert tests.loc[("th", 1.0), "delta_ndcg@10"] == pytest.approx(tests.loc[("th", 1.0), "delta_mrr@100"])
    assert tests.loc[("de", 1.0), "p_tost"] < 0.05 and tests.loc[("th", 1.0), "p_tost"] > 0.5
    wins, ties, losses = tests.loc[("th", 1.0), ["wins", "ties", "losses"]]
    assert wins + ties + losses == 300 and losses > wins
    verdicts = analysis.trends.set_index("language").verdict
    assert verdicts["th"].startswith("hard negatives hurt (slope < 0") and verdicts["th"].endswith("at 3 seeds")
    assert verdicts["de"].startswith("no effect larger than 0.01 (TOST")
    unmatched = analyse(_results(tmp_path, {"th": 0.04, "de": 0.0}, {"th": True, "de": False}, prefixed=False))
    assert set(unmatched.interactions.query_pairing) == {"independent queries"}


def _seeded_cell(seeds: tuple[int, ...], mean: float, seed_effect: dict[int, float], queries: int = 200) -> Cell:
    """A cell whose run at seed s scores ``mean + seed_effect[s]`` plus small per-query noise."""
    rng = np.random.default_rng(sum(seeds) + int(mean * 1000))
    rows = [mean + seed_effect[s] + rng.normal(0, 0.001, queries) for s in seeds]
    return Cell(seeds, np.stack(rows))


def test_cells_of_different_seed_sets_are_compared_on_the_seeds_both_ran_paired() -> None:
    # a large seed effect (seed 0 +0.05, seed 1 -0.05, seeds 2-4 near 0): a 2-seed arm (seeds 0, 1) against a 5-seed
    # reference differs by exactly +0.01 at every seed; unpaired, the means over different seeds differ by ~0.
    effect = {0: 0.05, 1: -0.05, 2: 0.0, 3: 0.02, 4: -0.02}
    arm = _seeded_cell((0, 1), 0.61, effect)
    reference = _seeded_cell((0, 1, 2, 3, 4), 0.60, effect)
    result = contrast([arm, reference], [1.0, -1.0])
    assert result.value == pytest.approx(0.01, abs=5e-4)  # unpaired: 0.61 - 0.60 + (0 - 0) / ... = 0.0100 only by luck
    assert result.seed_level == "paired" and result.seed_ids == (0, 1) and result.dropped_seeds
    assert result.seeds == 2 and not result.gives_verdict  # below the 3 paired seeds of the calibration
    # the same reference seeds, unpaired as the old code did, would mix seed effects: check the pairing mattered
    shifted = {0: 0.05, 1: -0.05, 2: 0.09, 3: 0.09, 4: 0.09}
    skewed = contrast([_seeded_cell((0, 1), 0.61, shifted), _seeded_cell((0, 1, 2, 3, 4), 0.60, shifted)], [1, -1])
    assert skewed.value == pytest.approx(0.01, abs=5e-4)  # a 5-seed mean would give 0.01 - 0.054 = -0.044


def test_three_shared_seeds_give_a_verdict_and_a_seed_free_cell_pairs_with_every_seed() -> None:
    effect = {s: 0.01 * (s - 2) for s in range(5)}
    arm = _seeded_cell((0, 1, 2), 0.62, effect)
    reference = _seeded_cell((0, 1, 2, 3, 4), 0.60, effect)
    result = contrast([arm, reference], [1.0, -1.0])
    assert result.seed_ids == (0, 1, 2) and result.gives_verdict
    assert result.value == pytest.approx(0.02, abs=5e-4) and result.p_value < 0.001
    zero_shot = Cell((0,), np.full((1, 200), 0.55), seed_free=True)  # nothing trained: the seed changes nothing
    against = contrast([reference, zero_shot], [1.0, -1.0])
    assert against.seed_ids == (0, 1, 2, 3, 4) and not against.dropped_seeds and against.seeds == 5
    assert against.value == pytest.approx(reference.scores.mean() - 0.55)


def test_a_verdict_on_fewer_than_three_paired_seeds_is_withheld() -> None:
    effect = {0: 0.0, 1: 0.0}
    slope = contrast([_seeded_cell((0, 1), 0.70, effect), _seeded_cell((0, 1), 0.60, effect)], [1.0, -1.0])
    decision = decide(slope, None, [(1.0, slope)])
    assert decision.kind == "no verdict" and "paired on seeds 0,1" in decision.text
    assert "+0.1000" in decision.text  # the estimate is still shown
