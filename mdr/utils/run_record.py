"""The run record: ``metrics.json``, written by :mod:`mdr.run_evaluation`, read by :mod:`mdr.reporting`; what an
older record lacks (no ``record_version``, depth or ``low_resource``, masking under ``loss``) is supplied here."""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mdr.utils.config_identity import parent_of

RECORD_VERSION = 1
DEFAULT_DEPTH = 100  # the evaluation depth of a record that states none
LANGUAGES_DIR = Path(__file__).resolve().parents[2] / "conf" / "language"


@functools.cache
def language_config(code: str) -> dict[str, Any]:
    """``conf/language/<code>.yaml``; empty when there is none."""
    path = LANGUAGES_DIR / f"{code}.yaml"
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.is_file() else {}


def _first(*values: Any) -> Any:
    """The first of ``values`` that is not None; None when every one is."""
    return next((value for value in values if value is not None), None)


def lookup(config: dict[str, Any], dotted: str) -> Any:
    """The value at ``dotted`` in a plain config, None where it is missing."""
    node, leaf = parent_of(config, dotted)
    return None if node is None else node.get(leaf)


@dataclass(frozen=True)
class LanguageResult:
    """One evaluated language of a run: its measures and files."""

    language: str | None
    low_resource: bool | None
    num_queries: int | None
    metrics: dict[str, float]
    per_query_file: str
    depth: int | None = None  # older per-language sections may state their own


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    """``metrics.json``, values kept as written; ``extra``: the fields this version does not know (e.g. ``loss``)."""

    language: str | None = None
    low_resource: bool | None = None
    data: str | None = None
    model: str | None = None
    stage: str | None = None
    hard_proportion: float | None = None
    num_negatives: int | None = None
    seed: int | None = None
    split: str | None = None
    depth: int | None = None
    num_queries: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    run_file: str | None = None
    per_query_file: str | None = None
    code: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    train: dict[str, Any] | None = None
    initialised_from: str | None = None
    encoder: str | None = None
    denoised: bool | None = None
    denoise: dict[str, Any] | None = None
    proportion_applies_to: str | None = None
    schedule: dict[str, Any] | None = None
    checkpoint: str | None = None
    evaluation_languages: list[str] | None = None
    per_language: dict[str, dict[str, Any]] | None = None
    record_version: int = RECORD_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    OPTIONAL = ("checkpoint", "evaluation_languages", "per_language")  # written only when set

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRecord:
        """A record from ``metrics.json``'s object (ValueError: not an object, or of a newer version)."""
        if not isinstance(data, dict):
            raise ValueError(f"a run record is a JSON object, got {type(data).__name__}")
        version = int(data.get("record_version", 0))
        if version > RECORD_VERSION:
            raise ValueError(f"record_version {version} is newer than this mdr reads ({RECORD_VERSION}): update mdr")
        names = {item.name for item in dataclasses.fields(cls)} - {"extra", "record_version"}
        known = {name: data[name] for name in names if name in data}
        extra = {name: value for name, value in data.items() if name not in names and name != "record_version"}
        return cls(**known, record_version=version, extra=extra)

    def to_json(self) -> dict[str, Any]:
        """The record as ``metrics.json`` holds it."""
        fields = {item.name: getattr(self, item.name) for item in dataclasses.fields(self) if item.name != "extra"}
        payload = {name: value for name, value in fields.items() if name not in self.OPTIONAL or value is not None}
        return {**payload, **self.extra}

    @property
    def trained(self) -> bool:
        """Whether the run trained (zero-shot and evaluate.py runs did not)."""
        return isinstance(self.train, dict)

    def used_hard_negatives(self) -> bool:
        """Whether the run drew hard negatives: its training summary's ``num_hard``, else a p above 0."""
        if self.trained and "num_hard" in self.train:  # type: ignore[operator]
            return int(self.train.get("num_hard") or 0) > 0  # type: ignore[union-attr]
        return bool(self.hard_proportion)

    def proportion_stages(self) -> str | None:
        """``stage.proportion_applies_to`` of a run whose schedule trained more than one stage, else None."""
        if not isinstance(self.schedule, dict) or len(self.schedule.get("stages") or []) < 2:
            return None
        return str(self.proportion_applies_to or self.schedule.get("proportion_applies_to") or "last")

    def evaluated(self, config: dict[str, Any] | None = None) -> list[LanguageResult]:
        """One entry per evaluated language (the ``per_language`` sections, else the top-level fields); a
        ``low_resource`` not recorded from the job's resolved ``config``, else ``conf/language/<code>.yaml``."""
        names = ("low_resource", "num_queries", "metrics", "per_query_file", "depth")
        sections = self.per_language if isinstance(self.per_language, dict) and self.per_language else None
        sections = sections or {self.language: {name: getattr(self, name) for name in names[:-1]}}
        found = [LanguageResult(code, *(section.get(name) for name in names)) for code, section in sections.items()]
        return [dataclasses.replace(item, low_resource=_low_resource(item, config or {})) for item in found]

    def evaluation_depth(self, evaluated: LanguageResult | None = None) -> int:
        """The ranking depth: the language section's, the record's or its ``evaluation`` section's, else 100."""
        section = self.evaluation if isinstance(self.evaluation, dict) else {}
        depth = _first(evaluated.depth if evaluated else None, self.depth, section.get("depth"))
        return DEFAULT_DEPTH if depth is None else int(depth)

    def mask(self, config: dict[str, Any]) -> bool | None:
        """Whether in-batch false negatives were masked: as recorded (older records: under ``loss``), else as the
        resolved ``config`` says, else False (the option's absence meant no masking); None: nothing trained."""
        if not self.trained:
            return None
        loss = self.extra.get("loss") if isinstance(self.extra.get("loss"), dict) else {}
        recorded = _first(loss.get("mask_false_negatives"), self.train.get("mask_false_negatives"))  # type: ignore[union-attr]
        return bool(_first(recorded, lookup(config, "loss.mask_false_negatives")))

    def denoised_negatives(self, config: dict[str, Any]) -> bool:
        """Whether hard negatives were denoised: as recorded (``denoised``, else ``denoise``, else the training
        summary's ``denoise``), else hard negatives drawn and the resolved ``config`` denoising."""
        if (recorded := _first(self.denoised, self.denoise)) is not None:
            return bool(recorded)
        if self.trained and "denoise" in self.train:  # type: ignore[operator]
            return bool(self.train["denoise"])  # type: ignore[index]
        hard = self.trained and int(self.train.get("num_hard") or 0) > 0  # type: ignore[union-attr]
        return hard and bool(lookup(config, "negatives.denoise.enabled"))


def _low_resource(evaluated: LanguageResult, config: dict[str, Any]) -> bool | None:
    language = config.get("language")
    own = isinstance(language, dict) and str(language.get("code")) == str(evaluated.language)
    configured = language.get("low_resource") if own else None  # type: ignore[union-attr]
    found = _first(evaluated.low_resource, configured, language_config(str(evaluated.language)).get("low_resource"))
    return None if found is None else bool(found)


def read_record(path: Path) -> RunRecord:
    """The run record at ``path`` (ValueError naming ``path``: not JSON, not an object, or of a newer version)."""
    try:
        return RunRecord.from_json(json.loads(path.read_text(encoding="utf-8")))
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error
