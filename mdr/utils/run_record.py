"""The run record: what ``metrics.json`` holds, written by :mod:`mdr.pipeline` and read by :mod:`mdr.reporting`.

Version 1 adds ``record_version``; a record without it (version 0, every run before) reads the same way, with
the fallbacks older records need (no ``depth``: 100; masking under ``loss``; denoising under ``denoise``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RECORD_VERSION = 1
DEFAULT_DEPTH = 100
"""The evaluation depth of a record that states none (every run before depth was recorded)."""


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
    """``metrics.json``. Values are kept as written (``0`` stays ``0``), so a report reads what was recorded.

    Attributes:
        language: the primary evaluated language (the run's own if evaluated, else the first listed).
        hard_proportion / num_negatives: None where nothing was trained (no negatives drawn).
        split: the evaluated split by its published name; depth: what the measures were computed over.
        metrics: the primary language's measures (``mrr@100``, ``recall@100``, ``ndcg@10`` at depth 100).
        code: mdr's commit and package versions; evaluation: how the corpus was encoded and searched.
        train: the final stage's training summary (None: nothing trained); schedule: one record per stage.
        checkpoint: the encoder evaluate.py evaluated (None for train.py).
        per_language: language -> section (low_resource, num_queries, metrics, files) with ``evaluation.languages``.
        extra: fields this version does not know (a newer writer's, or an older one's such as ``loss``), kept.
    """

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

    OPTIONAL = ("checkpoint", "evaluation_languages", "per_language")
    """Fields written only when set."""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRecord:
        """A record from ``metrics.json``'s object, of this version or an older one.

        Raises:
            ValueError: not an object, or written by a newer mdr (a higher ``record_version``).
        """
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

    def evaluated(self) -> list[LanguageResult]:
        """One entry per evaluated language: the ``per_language`` sections, else the top-level fields."""
        if isinstance(self.per_language, dict) and self.per_language:
            return [
                LanguageResult(
                    code,
                    section.get("low_resource"),
                    section.get("num_queries"),
                    section.get("metrics"),
                    section.get("per_query_file"),
                    section.get("depth"),
                )
                for code, section in self.per_language.items()
            ]
        return [
            LanguageResult(self.language, self.low_resource, self.num_queries, self.metrics, self.per_query_file)  # type: ignore[arg-type]
        ]

    def evaluation_depth(self, evaluated: LanguageResult | None = None) -> int:
        """The ranking depth: the language section's, the record's or its ``evaluation`` section's, else 100."""
        section = self.evaluation if isinstance(self.evaluation, dict) else {}
        for value in (evaluated.depth if evaluated else None, self.depth, section.get("depth")):
            if value is not None:
                return int(value)
        return DEFAULT_DEPTH

    def recorded_mask(self) -> bool | None:
        """Whether in-batch false negatives were masked, as recorded (older records: under ``loss``)."""
        loss = self.extra.get("loss")
        for value in (
            (loss or {}).get("mask_false_negatives") if isinstance(loss, dict) else None,
            (self.train or {}).get("mask_false_negatives"),
        ):
            if value is not None:
                return bool(value)
        return None

    def recorded_denoised(self) -> bool | None:
        """Whether hard negatives were denoised, as recorded (``denoised``, else ``denoise``); None: not recorded."""
        if self.denoised is not None:
            return bool(self.denoised)
        if self.denoise is not None:
            return bool(self.denoise)
        if self.trained and "denoise" in self.train:  # type: ignore[operator]
            return bool(self.train["denoise"])  # type: ignore[index]
        return None


def read_record(path: Path) -> RunRecord:
    """The run record at ``path``.

    Raises:
        OSError: unreadable; ValueError: not JSON, not an object, or of a newer version (the message names ``path``).
    """
    try:
        return RunRecord.from_json(json.loads(path.read_text(encoding="utf-8")))
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error
