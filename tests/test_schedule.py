"""Stage schedules as config: recipes, cache keys, the proportion rule, evaluation.languages and their report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from mdr.data.schema import DataError
from mdr.lifecycle import run_task
from mdr.pipeline import evaluate, train
from mdr.reporting.aggregate import aggregate, collect, compare_schedules
from mdr.spec import Schedule
from mdr.stage_cache import stage_keys
from mdr.validation import build_spec

from conftest import ROOT

RECIPES = {
    "zero_shot": [],
    "target_only": [["th"]],
    "english_then_target": [["en"], ["th"]],
    "all_languages_then_target": [["ar", "de", "el", "en", "es", "hi", "ru", "tr", "vi", "zh"], ["th"]],
    "all_languages": [["ar", "de", "el", "en", "es", "hi", "ru", "th", "tr", "vi", "zh"]],
    "cross_lingual": [["en"]],
    "msmarco_then_target": [["en"], ["th"]],
    "msmarco_then_all_languages": [["en"], ["ar", "bn", "en", "fi", "id", "ja", "ko", "ru", "sw", "te", "th"]],
    "msmarco_then_all_then_target": [
        ["en"],
        ["ar", "bn", "en", "fi", "id", "ja", "ko", "ru", "sw", "te", "th"],
        ["th"],
    ],
}


def schedule(cfg: Any) -> Schedule:
    """The composed config's schedule, as its spec holds it."""
    return build_spec(cfg).schedule


def digests(cfg: Any) -> list[str]:
    """The config part of the stage keys (MS MARCO is not here to read; the content part: tests/test_caches.py)."""
    return [digest for _, digest in stage_keys(build_spec(cfg), content=False)]


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_every_recipe_resolves_to_its_stages(make_cfg, recipe: str) -> None:  # noqa: ANN001
    data = "mrtydi" if recipe.startswith("msmarco") else "xquad"
    cfg = make_cfg(f"stage={recipe}", f"data={data}")
    plan = schedule(cfg)
    assert plan.name == recipe
    assert [[source.code for source in stage.sources] for stage in plan.stages] == RECIPES[recipe]
    assert [stage.own for stage in plan.stages] == [
        i == len(RECIPES[recipe]) - 1 and "th" in codes for i, codes in enumerate(RECIPES[recipe])
    ]
    if recipe.startswith("msmarco"):
        msmarco = plan.stages[0]
        negatives = msmarco.negatives
        assert msmarco.sources[0].data.name == "msmarco" and msmarco.epochs == 1 and negatives.hard_proportion == 1.0
        assert negatives.pool.source == "shipped" and not negatives.denoise.enabled
        reader = msmarco.sources[0].data.reader
        assert (
            reader["revision"] == "a8eec567e64d42528a140fbe218dbb22b6719139"
            and reader["cache_dir"] == cfg.paths.cache_dir
        )


@pytest.mark.parametrize(
    ("alias", "recipe"),
    [
        ("two_stage", "english_then_target"),
        ("two_stage_msmarco", "msmarco_then_target"),
        ("source_only", "cross_lingual"),
    ],
)
def test_old_stage_names_are_aliases(make_cfg, alias: str, recipe: str) -> None:  # noqa: ANN001
    assert digests(make_cfg(f"stage={alias}")) == digests(make_cfg(f"stage={recipe}"))
    assert schedule(make_cfg(f"stage={alias}")).name == recipe


def test_cache_key_follows_everything_before_a_stage_and_nothing_after(make_cfg) -> None:  # noqa: ANN001
    base = digests(make_cfg("stage=english_then_target"))
    # the target's language and proportion shape only the run's own (last) stage
    assert digests(make_cfg("stage=english_then_target", "language=hi"))[0] == base[0]
    other_p = digests(make_cfg("stage=english_then_target", "negatives.hard_proportion=0"))
    assert other_p[0] == base[0] and other_p[1] != base[1]
    # an earlier stage's change changes its own key and every key after it
    for change in ("stage.stages.0.epochs=2", "stage.stages.0.negatives.hard_proportion=0", "seed=1"):
        changed = digests(make_cfg("stage=english_then_target", change))
        assert changed[0] != base[0] and changed[1] != base[1], change
    # training settings and the model shape every stage
    for change in ("train.learning_rate=4e-4", "loss.mask_false_negatives=false", "model.temperature=0.1"):
        assert digests(make_cfg("stage=english_then_target", change))[0] != base[0], change
    # a union that leaves the target out depends on the target; one that does not, does not
    th = digests(make_cfg("stage=all_languages_then_target"))
    assert digests(make_cfg("stage=all_languages_then_target", "language=hi"))[0] != th[0]
    assert digests(make_cfg("stage=all_languages", "language=hi")) == digests(make_cfg("stage=all_languages"))


def test_proportion_applies_to_the_last_stage_or_to_all(make_cfg) -> None:  # noqa: ANN001
    last = [make_cfg("stage=english_then_target", f"negatives.hard_proportion={p}") for p in (0, 1)]
    assert [[s.negatives.hard_proportion for s in schedule(cfg).stages] for cfg in last] == [[0.5, 0.0], [0.5, 1.0]]
    every = [
        make_cfg("stage=english_then_target", "stage.proportion_applies_to=all", f"negatives.hard_proportion={p}")
        for p in (0, 1)
    ]
    assert [[s.negatives.hard_proportion for s in schedule(cfg).stages] for cfg in every] == [[0.0, 0.0], [1.0, 1.0]]
    assert digests(every[0])[0] != digests(every[1])[0], "with `all` the sweep's p shapes the first stage too"
    assert digests(last[0])[0] == digests(last[1])[0]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["stage.proportion_applies_to=first"], r"stage.proportion_applies_to must be one of \['last', 'all'\]"),
        (["~stage.stages.0.negatives"], r"stage.stages\[0\].negatives.hard_proportion must be set"),
        (["stage.stages.0.train_on=[xx]"], r"stage.stages\[0\].train_on\[0\].language: no language 'xx'"),
        (["stage.stages.0.epochs=0"], r"stage.stages\[0\].epochs must be an integer >= 1, got 0"),
        (
            ["stage.stages.0.negatives.hard_proportion=2"],
            r"stage.stages\[0\].negatives.hard_proportion must be .* got 2",
        ),
        (
            ["stage.stages.0.train_on=[th]", "+stage.stages.0.exclude_target=true"],
            r"holds nothing but the run's language",
        ),
    ],
)
def test_bad_schedules_name_their_key_before_anything_is_read(make_cfg, overrides: list[str], message: str) -> None:  # noqa: ANN001
    cfg = make_cfg("stage=english_then_target", *overrides)
    with pytest.raises(DataError, match=message):
        run_task(cfg, train)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


def test_evaluation_languages_match_separate_evaluations(make_cfg, tmp_path: Path) -> None:  # noqa: ANN001
    both = make_cfg("evaluation.languages=[th,hi]", f"paths.output_dir={tmp_path / 'both'}", config_name="evaluate")
    result = run_task(both, evaluate)
    out = tmp_path / "both"
    for code in ("th", "hi"):
        assert (out / "runs" / f"{code}.trec").is_file() and (out / "per_query" / f"{code}.tsv").is_file()
    assert result["evaluation_languages"] == ["th", "hi"] and set(result["per_language"]) == {"th", "hi"}
    for code in ("th", "hi"):
        alone = run_task(
            make_cfg(f"language={code}", f"paths.output_dir={tmp_path / code}", config_name="evaluate"), evaluate
        )
        section = result["per_language"][code]
        assert section["metrics"] == pytest.approx(alone["metrics"], abs=1e-6)
        assert section["num_queries"] == alone["num_queries"] and section["low_resource"] == alone["low_resource"]
        assert (out / "runs" / f"{code}.trec").read_text() == (tmp_path / code / "runs" / f"{code}.trec").read_text()
        assert "per_language" not in alone, "single-language metrics.json keeps its old shape"
    # the primary language (the run's own) keeps the top-level fields
    assert result["language"] == "th" and result["metrics"] == result["per_language"]["th"]["metrics"]
    assert result["run_file"] == "runs/th.trec" and result["per_query_file"] == "per_query/th.tsv"
    with pytest.raises(DataError, match=r"evaluation.languages\[1\]: no language 'xx'"):
        run_task(
            make_cfg("evaluation.languages=[hi,xx]", f"paths.output_dir={tmp_path / 'bad'}", config_name="evaluate"),
            evaluate,
        )


def _job(sweep: Path, name: str, metrics: dict[str, Any], scores: dict[str, np.ndarray]) -> None:
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([name]))
    (job / "per_query").mkdir()
    sections = {}
    for code, values in scores.items():
        lines = ["query_id\tmrr@100"] + [f"q{i:03d}\t{v:.6f}" for i, v in enumerate(values)]
        (job / "per_query" / f"{code}.tsv").write_text("\n".join(lines) + "\n")
        sections[code] = {
            "low_resource": code != "en",
            "num_queries": len(values),
            "metrics": {"mrr@100": float(values.mean())},
            "run_file": f"runs/{code}.trec",
            "per_query_file": f"per_query/{code}.tsv",
        }
    first = next(iter(sections))
    payload = {"model": "tiny", "hard_proportion": 0.5, **metrics, "language": first, **sections[first]}
    if len(sections) > 1:
        payload["per_language"] = sections
    (job / "metrics.json").write_text(json.dumps(payload))


def test_aggregation_has_a_row_per_evaluation_language_and_compares_schedules(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    two_stages = {"stages": [{"name": "english"}, {"name": "target"}]}
    train = {"mask_false_negatives": True, "num_hard": 2}
    for seed in (0, 1):
        base = rng.uniform(0.2, 0.4, size=(2, 40))
        _job(
            tmp_path,
            f"target_only-{seed}",
            {"stage": "target_only", "seed": seed, "train": train, "schedule": {"stages": [{}]}},
            {"th": base[0], "hi": base[1]},
        )
        _job(
            tmp_path,
            f"english_then_target-{seed}",
            {
                "stage": "english_then_target",
                "seed": seed,
                "train": train,
                "schedule": two_stages,
                "proportion_applies_to": "all",
            },
            {"th": base[0] + 0.3, "hi": base[1] + 0.3},
        )
    results, problems = collect(tmp_path)
    assert problems.empty and len(results) == 8, "4 jobs x 2 evaluation languages"
    assert sorted(results.language.unique()) == ["hi", "th"]
    stages_all = results[results.stage == "english_then_target"]
    assert set(stages_all.variant) == {"mask=on,denoise=off,p_stages=all"} and set(
        stages_all.proportion_applies_to
    ) == {"all"}
    assert set(results[results.stage == "target_only"].variant) == {"mask=on,denoise=off"}
    comparison = compare_schedules(results)
    better = comparison[comparison.schedule == "english_then_target"]
    assert len(better) == 2 and set(better.reference) == {"target_only"}
    assert better["delta_mrr@100"].round(4).tolist() == [0.3, 0.3]
    assert (better.p_holm < 0.05).all()
    summary = aggregate(tmp_path)
    report = Path(summary["table"]).read_text()
    assert "### MRR@100 by stage schedule, model=tiny" in report and "| target_only | english_then_target |" in report
    assert (tmp_path / "schedules.csv").is_file()


def test_schedule_comparison_experiment_defines_its_grid() -> None:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=schedule_comparison"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert cfg.task_name == "schedule_comparison" and cfg.model.name == "tiny" and cfg.data.name == "xquad"
    assert set(params["stage"].split(",")) == {
        "zero_shot",
        "target_only",
        "english_then_target",
        "all_languages_then_target",
    }
    assert set(params["language"].split(",")) == {"th", "hi"} and set(params["seed"].split(",")) == {"0", "1"}


def test_a_ddp_run_reuses_cached_stages_but_never_trains_one(make_cfg) -> None:  # noqa: ANN001
    # a seed no other test trains with: the English stage is not cached (a cached one would start DDP training)
    single = make_cfg("stage=english_then_target", "seed=9731")
    ddp = make_cfg("stage=english_then_target", "seed=9731", "trainer=ddp", "trainer.accelerator=cpu")
    assert digests(ddp)[0] == digests(single)[0], "a stage trained on one device serves DDP runs"
    with pytest.raises(DataError, match=r"stage english .* is not cached yet.*trainer=gpu \(trainer=cpu on CPU\)"):
        run_task(ddp, train)
