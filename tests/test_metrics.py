"""Metrics equal trec_eval's (pytrec_eval) to 4 decimals; TREC run files round-trip."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import pytrec_eval

from mdr.evaluation.metrics import evaluate_run, mean_metrics, ranked, read_run, write_run


def _random_case(seed: int) -> tuple[dict, dict]:
    rng = random.Random(seed)
    docs = [f"d{i:03d}" for i in range(300)]
    qrels, run = {}, {}
    for q in range(60):
        qid = f"q{q}"
        qrels[qid] = {d: rng.choice([1, 1, 2, 3]) for d in rng.sample(docs, rng.randint(1, 4))}
        if rng.random() < 0.3:
            qrels[qid][rng.choice(docs)] = 0  # judged non-relevant
        if q % 10 == 9:
            continue  # a judged query missing from the run scores 0 under -c
        # coarse scores give many ties, which trec_eval breaks by docid descending
        run[qid] = {d: round(rng.random(), 1) for d in rng.sample(docs, rng.randint(50, 200))}
    run["unjudged"] = {"d000": 1.0}
    return qrels, run


def _trec_eval(qrels: dict, run: dict) -> dict[str, float]:
    """trec_eval -c -M 100 -m recip_rank -m recall.100 -m ndcg_cut.10, via pytrec_eval."""
    cut_run = {q: {d: s for d, s in docs.items() if d in set(ranked(docs, 100))} for q, docs in run.items()}
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank", "recall.100", "ndcg_cut.10"})
    per_query = evaluator.evaluate(cut_run)
    judged = [q for q, docs in qrels.items() if any(g > 0 for g in docs.values())]
    mean = lambda m: sum(per_query.get(q, {}).get(m, 0.0) for q in judged) / len(judged)  # noqa: E731
    return {"mrr@100": mean("recip_rank"), "recall@100": mean("recall_100"), "ndcg@10": mean("ndcg_cut_10")}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_trec_eval(seed: int) -> None:
    qrels, run = _random_case(seed)
    ours = mean_metrics(evaluate_run(run, qrels))
    reference = _trec_eval(qrels, run)
    for name, value in reference.items():
        assert round(ours[name], 4) == round(value, 4), name


def test_tie_break_is_docid_descending() -> None:
    assert ranked({"a": 1.0, "c": 1.0, "b": 2.0}) == ["b", "c", "a"]
    per_query = evaluate_run({"q": {"a": 1.0, "c": 1.0}}, {"q": {"a": 1}})
    assert per_query["q"]["mrr@100"] == 0.5


def test_run_file_round_trip(tmp_path: Path) -> None:
    qrels, run = _random_case(3)
    path = write_run(tmp_path / "run.trec", run, depth=100)
    lines = path.read_text().splitlines()
    assert lines[0].split()[1] == "Q0" and lines[0].split()[3] == "1"
    back = read_run(path)
    assert all(len(docs) <= 100 for docs in back.values())
    ours = mean_metrics(evaluate_run(back, qrels))
    assert ours == pytest.approx(mean_metrics(evaluate_run(run, qrels)), abs=1e-6)
