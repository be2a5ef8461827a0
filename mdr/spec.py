"""The typed run specification, one frozen dataclass per config group (built by :func:`mdr.validation.build_spec`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mdr.evaluation.metrics import MIN_DEPTH
from mdr.mining.denoise import DenoiseSettings
from mdr.mining.miner import PoolSettings
from mdr.models.bi_encoder import EncoderSettings
from mdr.models.precision import PRECISIONS
from mdr.utils.allocator import MAX_RETAIN_MB


def key(path: str, check: str, default: Any = ..., **options: Any) -> Any:
    """A field read from config key ``path`` by ``check`` (a ``mdr.validation._Values`` method) with ``options``."""
    metadata = {"key": path, "check": check, "options": options}
    return field(metadata=metadata) if default is ... else field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Paths:
    """``paths``: absolute folders."""

    data_dir: str = key("paths.data_dir", "text")
    cache_dir: str = key("paths.cache_dir", "text")
    output_dir: str = key("paths.output_dir", "text")


@dataclass(frozen=True)
class Language:
    """A language config (``conf/language/<code>.yaml`` or a mapping); None where a mapping does not say."""

    code: str
    analyzer: str | None
    low_resource: bool | None


@dataclass(frozen=True)
class Data:
    """A data group resolved for one language: its ``reader`` node and the whole group (``resolved``)."""

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
    """``negatives`` (or a stage's, merged over it); ``teacher`` where ``denoise.enabled``, ``resolved``: the group."""

    num_negatives: int
    hard_proportion: float
    strict: bool
    pool: PoolSettings | None
    denoise: DenoiseSettings
    teacher: Teacher | None
    resolved: Mapping[str, Any]


@dataclass(frozen=True)
class Trainer:
    """``trainer``; ``args`` holds every key as ``lightning.Trainer`` takes them (devices, nodes: mdr.cluster)."""

    accelerator: str = key("trainer.accelerator", "text")
    devices: Any = key("trainer.devices", "get")
    num_nodes: int = key("trainer.num_nodes", "get")
    precision: str = key("trainer.precision", "text", allowed=PRECISIONS)
    max_epochs: int = key("trainer.max_epochs", "integer", minimum=1, allowed=(-1,))
    deterministic: bool | str = key("trainer.deterministic", "choice", allowed=(True, False, "warn"))
    args: Mapping[str, Any] = key("trainer", "mapping")


@dataclass(frozen=True)
class Train:
    """``train`` and ``loss``."""

    batch_size: int = key("train.batch_size", "integer", minimum=1)
    learning_rate: float = key("train.learning_rate", "number", low=0.0, above=True)
    weight_decay: float = key("train.weight_decay", "number", low=0.0)
    warmup_ratio: float = key("train.warmup_ratio", "number", low=0.0, high=1.0)
    num_workers: int = key("train.num_workers", "integer", minimum=0)
    save_encoder: bool = key("train.save_encoder", "boolean")
    gradient_clip_val: float | None = key("train.gradient_clip_val", "number", low=0.0, above=True, optional=True)
    chunk_tokens: int = key("train.chunk_tokens", "integer", minimum=1)
    cpu_malloc_retain_mb: int = key("train.cpu_malloc_retain_mb", "integer", minimum=0, maximum=MAX_RETAIN_MB)
    token_cache: int = key("train.token_cache", "integer", minimum=0)
    checkpoint_every_n_steps: int | None = key("train.checkpoint_every_n_steps", "integer", minimum=1, optional=True)
    gradient_checkpointing: bool = key("train.gradient_checkpointing", "boolean")
    fast_dropout: bool | str = key("train.fast_dropout", "choice", allowed=("auto", True, False))
    grad_cache: bool = key("train.grad_cache.enabled", "boolean")
    grad_cache_size: int = key("train.grad_cache.chunk_size", "integer", minimum=1)
    mask_false_negatives: bool = key("loss.mask_false_negatives", "boolean")

    @property
    def grad_cache_chunk_size(self) -> int | None:
        """Texts per GradCache chunk; None where ``train.grad_cache.enabled`` is false."""
        return self.grad_cache_size if self.grad_cache else None


@dataclass(frozen=True)
class EvaluationLanguage:
    """A language evaluated, with the run's data group resolved for it."""

    language: Language
    data: Data


@dataclass(frozen=True)
class Evaluation:
    """``evaluation``; ``languages``: ``evaluation.languages``, else ``stage.evaluate_on``, else ``language``."""

    split: str = key("evaluation.split", "text")
    depth: int = key("evaluation.depth", "integer", minimum=MIN_DEPTH)  # nDCG@10 needs the top 10
    batch_size: int = key("evaluation.batch_size", "integer", minimum=1)
    faiss_gpu: bool | str = key("evaluation.faiss_gpu", "choice", allowed=("auto", True, False))
    bf16: bool | str = key("evaluation.bf16", "choice", allowed=("auto", True, False))
    shard_size: int = key("evaluation.shard_size", "integer", minimum=1)
    fp16_index: bool = key("evaluation.fp16_index", "boolean")
    keep_embeddings: bool = key("evaluation.keep_embeddings", "boolean")
    languages: tuple[EvaluationLanguage, ...] = ()


@dataclass(frozen=True)
class RunPolicy:
    """``run``: a run folder's policy on another config, a finished run, what it keeps (evaluate.py: the first two)."""

    on_config_change: str = key("run.on_config_change", "choice", "refuse", allowed=("refuse", "fresh"))
    on_complete: str = key("run.on_complete", "choice", "skip", allowed=("skip", "fresh"))
    stages_only: bool = key("run.stages_only", "boolean", False)
    keep_checkpoints: bool = key("run.keep_checkpoints", "boolean", False)
    keep_encoder: bool = key("run.keep_encoder", "boolean", True)


@dataclass(frozen=True)
class Logger:
    """``logger``: CSV, W&B and the progress lines."""

    csv: bool = key("logger.csv", "boolean")
    wandb_enabled: bool = key("logger.wandb.enabled", "boolean")
    wandb_mode: str = key(
        "logger.wandb.mode", "choice", allowed=("offline", "online", "shared", "disabled", "dryrun", "run")
    )
    wandb_project: str = key("logger.wandb.project", "text")
    wandb_entity: str | None = key("logger.wandb.entity", "text", optional=True)
    wandb_group: str | None = key("logger.wandb.group", "text", optional=True)
    progress_every_n_steps: int | None = key("logger.progress.every_n_steps", "integer", minimum=1, optional=True)
    progress_every_seconds: float | None = key(
        "logger.progress.every_seconds", "number", low=0.0, above=True, optional=True
    )


@dataclass(frozen=True)
class Source:
    """A stage's training set; ``part``: its ids' namespace in a union; ``is_target``: the run's language and data."""

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
    """One stage of a schedule; ``own``: the run's own stage, trained in the run folder."""

    index: int
    name: str
    sources: tuple[Source, ...]
    epochs: int
    negatives: Negatives
    own: bool


@dataclass(frozen=True)
class Schedule:
    """A run's stages, each trained from the previous one's encoder (none: zero-shot)."""

    name: str
    proportion_applies_to: str
    stages: tuple[Stage, ...]

    @property
    def trains_on_target(self) -> bool:
        """Whether the last stage trains on the run's own language (in the run folder)."""
        return bool(self.stages) and self.stages[-1].own


@dataclass(frozen=True)
class Spec:
    """A run as train.py or evaluate.py composed it (``checkpoint``: evaluate.py's; the last four train.py's)."""

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
