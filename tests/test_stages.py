"""Stage schedules run: cached stages are trained once and reused, unions keep each query in its own language."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from mdr import training
from mdr.data.collator import BiEncoderCollator
from mdr.data.negatives import NegativeSampler
from mdr.data.schema import Passage, Query, RetrievalSplit
from mdr.data.union import UnionSplit
from mdr.lifecycle import run_task
from mdr.models.bi_encoder import BiEncoder, EncoderSettings, load_tokenizer
from mdr.pipeline import train
from mdr.spec import Schedule
from mdr.stage_cache import load_source, stage_dir, stage_keys
from mdr.validation import build_spec

from conftest import ROOT

THREE_STAGES = [
    {"name": "english", "train_on": ["en"], "epochs": 1, "negatives": {"hard_proportion": 0.0}},
    {"name": "union", "train_on": ["de", "es"], "epochs": 1, "negatives": {"hard_proportion": 1.0}},
    {"name": "target", "train_on": ["target"], "epochs": 1},
]


def schedule(cfg: Any) -> Schedule:
    """The composed config's schedule, as its spec holds it."""
    return build_spec(cfg).schedule


def with_stages(cfg: Any, stages: list[dict[str, Any]], **schedule_keys: Any) -> Any:
    """``cfg`` with ``stage.stages`` (and other stage keys) replaced."""
    with open_dict(cfg):
        cfg.stage.stages = OmegaConf.create(stages)
        for key, value in schedule_keys.items():
            cfg.stage[key] = value
    return cfg


@pytest.fixture
def count_fits(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records the output folder of every ``fit`` the pipeline makes."""
    calls: list[str] = []
    real_fit = training.fit

    def counting_fit(spec: Any, stage: Any, encoder: Any, tokenizer: Any, split: Any, pools: Any, out: Path) -> Any:
        calls.append(str(out))
        return real_fit(spec, stage, encoder, tokenizer, split, pools, out)

    monkeypatch.setattr(training, "fit", counting_fit)
    return calls


def _weights(folder: Path | str) -> torch.Tensor:
    encoder = BiEncoder.from_pretrained(str(folder), EncoderSettings())
    return encoder.query_backbone.embeddings.word_embeddings.weight.detach().clone()


def test_three_stage_schedule_trains_each_stage_once_and_reuses_the_cache(  # noqa: ANN001
    make_cfg, tmp_path: Path, count_fits: list[str]
) -> None:
    first = with_stages(make_cfg("stage=target_only", f"paths.output_dir={tmp_path / 'a'}"), THREE_STAGES)
    result = run_task(first, train)
    records = result["schedule"]["stages"]
    assert [r["status"] for r in records] == ["trained", "trained", "run"]
    assert len(count_fits) == 3 and count_fits[-1] == str(tmp_path / "a")
    dirs = [Path(r["dir"]) for r in records[:2]]
    spec = build_spec(first)
    assert dirs == [stage_dir(spec, digest) for _, digest in stage_keys(spec)[:2]]
    assert [r["train_on"] for r in records] == [
        ["demo/en:train"],
        ["demo/de:train", "demo/es:train"],
        ["demo/th:train"],
    ]
    union_queries = sum(len(load_source(source).queries) for source in spec.schedule.stages[1].sources)
    assert records[1]["train"]["train_queries"] == union_queries, "the union trains on both languages' queries"
    stamps = [(d / "encoder" / "model.safetensors").stat().st_mtime_ns for d in dirs]
    # each stage started from the one before: the chain of weights differs stage to stage
    start = _weights(first.model.name_or_path)
    english, union = (_weights(d / "encoder") for d in dirs)
    assert not torch.allclose(start, english) and not torch.allclose(english, union)
    assert result["initialised_from"] == str(dirs[1] / "encoder") and result["train"]["steps"] == 4
    assert result["proportion_applies_to"] == "last" and [r["hard_proportion"] for r in records] == [0.0, 1.0, 0.5]
    assert json.loads((dirs[0] / "stage.json").read_text())["key"]["train_on"][0]["language"] == "en"

    # another target language and proportion: both cached stages are reused, only the run's own stage trains
    count_fits.clear()
    second = with_stages(
        make_cfg(
            "stage=target_only", "language=hi", "negatives.hard_proportion=0", f"paths.output_dir={tmp_path / 'b'}"
        ),
        THREE_STAGES,
    )
    again = run_task(second, train)
    assert [r["status"] for r in again["schedule"]["stages"]] == ["reused", "reused", "run"]
    assert count_fits == [str(tmp_path / "b")]
    assert [(d / "encoder" / "model.safetensors").stat().st_mtime_ns for d in dirs] == stamps
    assert again["schedule"]["stages"][1]["train"] == records[1]["train"], "the reused stage's summary is kept"
    assert again["initialised_from"] == result["initialised_from"]


def test_cross_lingual_caches_its_only_stage_and_shares_it_across_targets(  # noqa: ANN001
    make_cfg, tmp_path: Path, count_fits: list[str]
) -> None:
    th = make_cfg("stage=source_only", f"paths.output_dir={tmp_path / 'th'}")  # the old name is an alias
    hi = make_cfg("stage=cross_lingual", "language=hi", f"paths.output_dir={tmp_path / 'hi'}")
    result_th = run_task(th, train)
    result_hi = run_task(hi, train)
    assert result_th["stage"] == result_hi["stage"] == "cross_lingual"
    assert len(count_fits) == 1 and "stages" in count_fits[0], "one English stage for both targets"
    assert result_th["encoder"] == result_hi["encoder"] == str(Path(count_fits[0]).parent / "encoder")
    assert not (Path(count_fits[0]) / "checkpoints").exists(), "a cached stage is reused, never resumed"
    assert [r["status"] for r in result_hi["schedule"]["stages"]] == ["reused"]
    assert result_th["schedule"]["stages"][0]["train_on"] == ["demo/en:train"]
    assert result_hi["train"]["steps"] == 4 and not (tmp_path / "th" / "checkpoints").exists()
    # a target among the sources is never trained on
    en_target = make_cfg("stage=cross_lingual", "language=hi", "stage.source_languages=[en,hi]")
    assert [s.code for s in schedule(en_target).stages[0].sources] == ["en"]


def test_zero_shot_schedule_evaluates_the_model_as_it_is(make_cfg, count_fits: list[str]) -> None:  # noqa: ANN001
    result = run_task(make_cfg("stage=zero_shot"), train)
    assert count_fits == [] and result["train"] is None and result["schedule"]["stages"] == []


def _split(language: str, corpus_ids: list[str], queries: dict[str, str], qrels: dict[str, str]) -> RetrievalSplit:
    corpus = {d: Passage(d, f"{language} passage {d}") for d in corpus_ids}
    return RetrievalSplit(
        corpus=corpus,
        queries={q: Query(q, f"{language} {text}") for q, text in queries.items()},
        qrels={q: {d: 1} for q, d in qrels.items()},
    )


def test_union_examples_draw_every_negative_from_their_own_language(cache_dir: Path, tiny_model: Path) -> None:
    # parallel sets: the same query ids and docids in both languages, as in XQuAD
    ids = [f"d{i}" for i in range(30)]
    queries = {f"q{i}": f"question {i}" for i in range(10)}
    qrels = {f"q{i}": f"d{i}" for i in range(10)}
    th, hi = _split("th", ids, queries, qrels), _split("hi", ids[:20], queries, qrels)
    union = UnionSplit([("th", th), ("hi", hi)])
    pools = {}
    for name, split in (("th", th), ("hi", hi)):
        raw = {q: [d for d in split.corpus if d != qrels[q]][:6] for q in queries}
        pools.update(UnionSplit.namespace_pools(name, raw))
    assert len(union.queries) == 20 and len(union.corpus) == 50
    for proportion in (0.0, 0.5, 1.0):
        sampler = NegativeSampler(4, proportion, seed=3)
        for epoch in range(3):
            examples, stats = sampler.examples(union, pools, epoch)
            assert len(examples) == 20 and stats.examples == 20 and stats.hard == 20 * sampler.num_hard
            for example in examples:
                part = example.query_id.split("/")[0]
                assert example.query.startswith(part)
                for docid in (example.positive, *example.negatives, *example.positives):
                    assert docid.startswith(f"{part}/"), (example, docid)
                    assert union.corpus[docid].text.startswith(f"{part} passage")  # its own language's corpus
                assert example.positive not in example.negatives
                hard = [d for d in example.negatives if d in pools[example.query_id]]
                assert len(hard) >= sampler.num_hard
    # the collator reads each passage from its own corpus
    collator = BiEncoderCollator(load_tokenizer(str(tiny_model)), union.corpus, 16, 32)
    batch = collator(examples[:4])
    assert batch.passages.real_tokens > 0 and batch.passage_ids.shape == (4 * 5,)
    assert len(set(batch.passage_ids.tolist())) == len({d for e in examples[:4] for d in (e.positive, *e.negatives)}), (
        "namespaced docids: th/d1 and hi/d1 hash apart"
    )


def test_no_import_cycle_between_stage_cache_and_pipeline() -> None:
    for first, second in (("mdr.stage_cache", "mdr.pipeline"), ("mdr.pipeline", "mdr.stage_cache")):
        code = (
            f"import sys, importlib; importlib.import_module({first!r}); "
            f"assert 'mdr.pipeline' not in sys.modules or {first!r} == 'mdr.pipeline', 'stages imports pipeline'; "
            f"importlib.import_module({second!r})"
        )
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]


def test_stages_only_trains_the_shared_stage_once_and_nothing_else(  # noqa: ANN001
    make_cfg, tmp_path: Path, count_fits: list[str]
) -> None:
    """run.stages_only: a pass over the sweep trains each distinct cached stage in one job; the cells reuse it.

    Seeds no other test uses: the session's cache must not hold these stages already.
    """
    import fcntl

    cells = [
        make_cfg(
            "stage=english_then_target",
            "seed=11",
            f"language={code}",
            "run.stages_only=true",
            f"paths.output_dir={out}",
        )
        for code, out in (("th", tmp_path / "th"), ("hi", tmp_path / "hi"))
    ]
    first = run_task(cells[0], train)
    assert first["stages_only"] and [r["status"] for r in first["schedule"]["stages"]] == ["trained"]
    assert len(count_fits) == 1 and "stages" in count_fits[0], "the English stage, not the cell's own"
    second = run_task(cells[1], train)  # another cell of the sweep: the same stage, found
    assert [r["status"] for r in second["schedule"]["stages"]] == ["reused"] and len(count_fits) == 1
    # a lock left by a job on a host that died long ago is taken over as a normal run would (was "busy" forever)
    second_spec = build_spec(cells[1])
    (_, shared), _ = stage_keys(second_spec)
    owner = stage_dir(second_spec, shared) / ".lock.owner"
    owner.write_text(json.dumps({"host": "node-gone", "pid": 4242, "token": "dead"}))
    os.utime(owner, (time.time() - 3600, time.time() - 3600))  # no heartbeat for an hour (limit: 300 s)
    again = run_task(cells[1], train)
    assert [r["status"] for r in again["schedule"]["stages"]] == ["reused"] and not owner.exists()
    for out in (tmp_path / "th", tmp_path / "hi"):
        assert not (out / "metrics.json").exists() and not (out / "checkpoints").exists()

    # a stage another job is training is left to it at once (no job waits on the lock holding a device)
    other = make_cfg("stage=english_then_target", "seed=12", "run.stages_only=true", f"paths.output_dir={tmp_path}/x")
    other_spec = build_spec(other)
    (_, digest), _ = stage_keys(other_spec)
    root = stage_dir(other_spec, digest)
    root.mkdir(parents=True)
    with open(root / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        busy = run_task(other, train)
    assert [r["status"] for r in busy["schedule"]["stages"]] == ["busy"] and len(count_fits) == 1

    # the normal run of the same command: the cell's own stage only, the English one reused
    with open_dict(cells[0]):
        cells[0].run.stages_only = False
    result = run_task(cells[0], train)
    assert [r["status"] for r in result["schedule"]["stages"]] == ["reused", "run"]
    assert len(count_fits) == 2 and count_fits[1] == str(tmp_path / "th")
    assert (tmp_path / "th" / "metrics.json").is_file()
