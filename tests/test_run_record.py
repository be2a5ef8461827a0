"""mdr.utils.run_record: metrics.json as one versioned type, written by the pipeline and read by reporting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mdr.utils.run_record import RECORD_VERSION, RunRecord, read_record

ROOT = Path(__file__).resolve().parents[1]


def test_a_record_round_trips_and_keeps_fields_it_does_not_know() -> None:
    record = RunRecord(language="th", model="tiny", stage="target_only", seed=0, metrics={"mrr@100": 0.5})
    payload = {**record.to_json(), "from_a_newer_writer": 1}
    again = RunRecord.from_json(json.loads(json.dumps(payload)))
    assert again.to_json() == payload and again.record_version == RECORD_VERSION
    assert "checkpoint" not in payload and "per_language" not in payload  # written only when set


def test_an_older_record_reads_with_its_fallbacks() -> None:
    old = {
        "language": "th",
        "metrics": {"mrr@100": 0.4},
        "train": {"num_hard": 2},
        "loss": {"mask_false_negatives": True},
    }
    record = RunRecord.from_json(old)
    assert record.record_version == 0 and record.evaluation_depth() == 100
    assert record.mask({}) is True and record.used_hard_negatives()
    assert not record.denoised_negatives({})
    assert record.to_json()["loss"] == {"mask_false_negatives": True}  # nothing dropped


def test_a_newer_record_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"record_version": RECORD_VERSION + 1}))
    with pytest.raises(ValueError, match=rf"{path}: record_version {RECORD_VERSION + 1} is newer"):
        read_record(path)


def test_variant_is_read_from_the_record_then_config() -> None:
    def variant(metrics: dict, config: dict) -> tuple[bool | None, bool]:
        record = RunRecord.from_json(metrics)
        return record.mask(config), record.denoised_negatives(config)

    assert variant({"train": {"mask_false_negatives": False}, "denoised": True}, {}) == (False, True)
    config = {"loss": {"mask_false_negatives": True}, "negatives": {"denoise": {"enabled": True}}}
    assert variant({"train": {"num_hard": 2}}, config) == (True, True)
    assert variant({"train": {"num_hard": 0}}, config) == (True, False)  # p = 0: nothing to denoise
    assert variant({"train": {}}, {}) == (False, False)  # predates masking
    assert variant({"train": None}, config) == (None, False)  # zero-shot: trained nothing


def test_every_committed_record_reads() -> None:
    paths = sorted((ROOT / "docs" / "results").rglob("metrics.json"))
    for path in paths:
        record = read_record(path)
        assert record.record_version <= RECORD_VERSION
        assert all(section.metrics and section.per_query_file for section in record.evaluated()), path


def test_an_older_record_without_low_resource_takes_it_from_its_config_then_conf_language() -> None:
    old = {"language": "th", "metrics": {"mrr@100": 0.4}, "per_query_file": "per_query/th.tsv"}
    (th,) = RunRecord.from_json(old).evaluated()
    assert th.low_resource is True  # conf/language/th.yaml
    (own,) = RunRecord.from_json(old).evaluated({"language": {"code": "th", "low_resource": False}})
    assert own.low_resource is False  # the job's own config.yaml first
    (unknown,) = RunRecord.from_json({**old, "language": "xx"}).evaluated()
    assert unknown.low_resource is None  # described nowhere
    (recorded,) = RunRecord.from_json({**old, "low_resource": False}).evaluated()
    assert recorded.low_resource is False
