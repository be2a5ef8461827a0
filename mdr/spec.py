"""The typed run specification: one frozen dataclass per config group, built once from the composed config by
:func:`mdr.validation.build_spec`, every value checked there. Nothing below the entry point reads the config.

A schedule (``stage.stages``, ``conf/stage/*.yaml``) is a list of stages, each trained from the previous stage's
encoder on its sources (several: one union, :mod:`mdr.data.union`); the last stage is the run's own when it trains
on the run's language (it trains in the run folder), every other stage is cached (:mod:`mdr.stage_cache`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mdr.mining.denoise import DenoiseSettings
from mdr.mining.miner import PoolSettings
from mdr.models.bi_encoder import EncoderSettings


@dataclass(frozen=True)
class Paths:
    """``paths``: absolute folders."""

    data_dir: str
    cache_dir: str
    output_dir: str


@dataclass(frozen=True)
class Language:
    """A language config (``conf/language/<code>.yaml`` or a mapping in ``train_on``).

    Attributes:
        analyzer: the Lucene analyzer language (pyserini), None where the mapping names none.
        low_resource: as the language config says (metrics.json records it); None where a mapping does not say.
    """

    code: str
    analyzer: str | None
    low_resource: bool | None


@dataclass(frozen=True)
class Data:
    """A data group resolved for one language.

    Attributes:
        reader: the ``reader`` node (``_target_`` and its arguments: :func:`mdr.utils.instantiate.build_reader`).
        resolved: the whole group, resolved (a stage key holds it).
    """

    name: str
    train_split: str
    test_split: str
    reader: Mapping[str, Any]
    resolved: Mapping[str, Any]


@dataclass(frozen=True)
class Model:
    """A model group: where the weights are, how a local model is built, how texts become vectors."""

    name: str
    name_or_path: str
    build: Mapping[str, Any] | None
    encoder: EncoderSettings
    temperature: float | None


@dataclass(frozen=True)
class Teacher:
    """``negatives.denoise.teacher``: a model group (``folder`` None) or an encoder folder (with the run's model)."""

    name: str
    model: Model
    folder: str | None


@dataclass(frozen=True)
class Negatives:
    """``negatives`` (or a stage's, merged over it).

    Attributes:
        pool: None where the group names no pool (nothing is mined: no hard negative is drawn).
        teacher: the denoising teacher where ``denoise.enabled``.
        resolved: the group as a mapping (a stage key holds it).
    """

    num_negatives: int
    hard_proportion: float
    strict: bool
    pool: PoolSettings | None
    denoise: DenoiseSettings
    teacher: Teacher | None
    resolved: Mapping[str, Any]


@dataclass(frozen=True)
class Trainer:
    """``trainer``; ``args`` holds every key, as ``lightning.Trainer`` takes them."""

    accelerator: str
    devices: Any
    num_nodes: int
    precision: str
    max_epochs: int
    args: Mapping[str, Any]


@dataclass(frozen=True)
class Train:
    """``train`` and ``loss``.

    Attributes:
        grad_cache_chunk_size: texts per GradCache chunk; None where ``train.grad_cache.enabled`` is false.
        fast_dropout: true, false or ``auto``.
    """

    batch_size: int
    learning_rate: float
    weight_decay: float
    warmup_ratio: float
    num_workers: int
    save_encoder: bool
    gradient_clip_val: float | None
    chunk_tokens: int
    cpu_malloc_retain_mb: int
    token_cache: int
    checkpoint_every_n_steps: int | None
    gradient_checkpointing: bool
    fast_dropout: bool | str
    grad_cache_chunk_size: int | None
    mask_false_negatives: bool


@dataclass(frozen=True)
class EvaluationLanguage:
    """A language evaluated, with the run's data group resolved for it."""

    language: Language
    data: Data


@dataclass(frozen=True)
class Evaluation:
    """``evaluation``; ``languages``: ``evaluation.languages``, else ``stage.evaluate_on``, else ``language``."""

    split: str
    depth: int
    batch_size: int
    faiss_gpu: bool | str
    bf16: bool | str
    shard_size: int
    fp16_index: bool
    keep_embeddings: bool
    languages: tuple[EvaluationLanguage, ...]


@dataclass(frozen=True)
class RunPolicy:
    """``run``: what a run folder does with another config or a finished run, and what it keeps.

    The defaults are conf/train.yaml's (evaluate.py's ``run`` sets only the first two).
    """

    on_config_change: str = "refuse"
    on_complete: str = "skip"
    stages_only: bool = False
    keep_checkpoints: bool = False
    keep_encoder: bool = True


@dataclass(frozen=True)
class Logger:
    """``logger``: CSV, W&B and the progress lines."""

    csv: bool
    wandb_enabled: bool
    wandb_mode: str
    wandb_project: str
    wandb_entity: str | None
    wandb_group: str | None
    progress_every_n_steps: int | None
    progress_every_seconds: float | None


@dataclass(frozen=True)
class Source:
    """One training set of a stage.

    Attributes:
        part: the namespace of its ids in a union (the language code, or ``<data>-<code>`` where codes repeat).
        is_target: the run's own language in the run's data group.
    """

    part: str
    language: Language
    data: Data
    split: str
    is_target: bool

    @property
    def code(self) -> str:
        """The language code."""
        return self.language.code

    @property
    def label(self) -> str:
        """``<data name>/<code>``, for logs and metrics.json."""
        return f"{self.data.name}/{self.code}"


@dataclass(frozen=True)
class Stage:
    """One stage of a schedule.

    Attributes:
        negatives: the run's, with the stage's overrides and the proportion rule (``stage.proportion_applies_to``).
        own: the run's own stage (the last one, training on the run's language), trained in the run folder.
    """

    index: int
    name: str
    sources: tuple[Source, ...]
    epochs: int
    negatives: Negatives
    own: bool


@dataclass(frozen=True)
class Schedule:
    """A run's stages (none: zero-shot, the configured model is evaluated as it is)."""

    name: str
    proportion_applies_to: str
    stages: tuple[Stage, ...]

    @property
    def trains_on_target(self) -> bool:
        """Whether the last stage trains on the run's own language (in the run folder)."""
        return bool(self.stages) and self.stages[-1].own


@dataclass(frozen=True)
class Spec:
    """A run, as ``train.py`` or ``evaluate.py`` composed it.

    Attributes:
        resolved: the composed config, resolved (W&B's config; stage keys take their sections from it).
        checkpoint: evaluate.py's encoder folder (None: the configured model).
        trainer / train / negatives / schedule: train.py's (None for evaluate.py).
    """

    task_name: str
    seed: int
    paths: Paths
    language: Language
    data: Data
    model: Model
    evaluation: Evaluation
    run: RunPolicy
    logger: Logger
    resolved: Mapping[str, Any]
    checkpoint: str | None = None
    trainer: Trainer | None = None
    train: Train | None = None
    negatives: Negatives | None = None
    schedule: Schedule | None = None

    @property
    def trains(self) -> bool:
        """Whether the run trains at all (not ``stage=zero_shot``, not evaluate.py)."""
        return self.schedule is not None and bool(self.schedule.stages)

    @property
    def stage_name(self) -> str:
        """The schedule's name (``zero_shot`` for evaluate.py)."""
        return self.schedule.name if self.schedule is not None else "zero_shot"
