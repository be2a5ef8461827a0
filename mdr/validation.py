"""The composed config read and checked once into a :class:`mdr.spec.Spec`, before anything is read or built.

:func:`build_spec` checks every value the pipeline reads (types and ranges, the stage schedule, the evaluation
languages, that the model, checkpoint, dense-mining encoder and denoising teacher exist, the launch against this
machine) and reports every problem at once, each naming its key, as a :class:`mdr.data.schema.DataError`.
:func:`validate_splits` checks the splits the reader loaded against the spec.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from mdr.cluster import launch_problems
from mdr.data.checks import test_split_problems, train_split_problems
from mdr.data.negatives import num_hard, proportion_problem
from mdr.data.schema import DataError, RetrievalSplit
from mdr.evaluation.metrics import MIN_DEPTH
from mdr.mining.denoise import DenoiseSettings
from mdr.mining.miner import PoolSettings
from mdr.mining.tokenize import TOKENIZERS, tokenizer_version
from mdr.models.bi_encoder import EncoderSettings
from mdr.spec import (
    Data,
    Evaluation,
    EvaluationLanguage,
    Language,
    Logger,
    Model,
    Negatives,
    Paths,
    RunPolicy,
    Schedule,
    Source,
    Spec,
    Stage,
    Teacher,
    Train,
    Trainer,
)
from mdr.utils.allocator import MAX_RETAIN_MB
from mdr.utils.cache import settings_problems as cache_settings_problems
from mdr.utils.config_compat import NEUTRAL_DEFAULTS
from mdr.utils.instantiate import build_target_problem

CONF = Path(__file__).resolve().parents[1] / "conf"
MAX_SEED = 2**32 - 1
"""The largest seed numpy (and so ``lightning.seed_everything``) takes."""
ZERO_SHOT = "zero_shot"
"""The one schedule name an empty ``stage.stages`` may carry (``conf/stage/zero_shot.yaml``)."""
TARGET = "target"
"""In ``train_on`` and ``evaluation.languages``: the run's own language (in the run's data group)."""
APPLIES_TO = ("last", "all")
WANDB_MODES = ("offline", "online", "shared", "disabled", "dryrun", "run")
POOL_KEYS = ("source", "backend", "depth", "range_min", "range_max", "margin", "encoder", "threads", "tokenizer")
DENOISE_KEYS = ("enabled", "teacher", "relative_margin", "batch_size")
_ABSENT = object()


class _Values:
    """Reads dotted keys of a resolved mapping; every problem is noted with its full key (``prefix`` + key)."""

    def __init__(self, tree: Mapping[str, Any], problems: list[str], prefix: str = "") -> None:
        self.tree, self.problems, self.prefix = tree, problems, prefix

    def has(self, key: str) -> bool:
        """Whether the mapping holds ``key``."""
        node: Any = self.tree
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return False
            node = node[part]
        return True

    def get(self, key: str, optional: bool = False) -> Any:
        """The value at ``key``: a key added after a config was made (absent from it) takes its "as before" value
        (:data:`mdr.utils.config_compat.NEUTRAL_DEFAULTS`); ``_ABSENT`` (a problem noted) where it is missing or
        ``???``. ``optional``: an absent key or null is None, without a problem."""
        node: Any = self.tree
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                if self.prefix + key in NEUTRAL_DEFAULTS:
                    return NEUTRAL_DEFAULTS[self.prefix + key]
                if optional:
                    return None
                self.problems.append(f"{self.prefix}{key} is missing from the config")
                return _ABSENT
            node = node[part]
        if node == "???":
            self.problems.append(f"{self.prefix}{key} must be set (it is ???)")
            return _ABSENT
        return node

    def _bad(self, key: str, message: str) -> None:
        self.problems.append(f"{self.prefix}{key} {message}")

    def integer(
        self, key: str, minimum: int, maximum: int | None = None, optional: bool = False, allowed: tuple[int, ...] = ()
    ) -> Any:
        """An int in [minimum, maximum] or in ``allowed`` (null too where ``optional``); 2.5, "2" and true are
        errors, 2.0 is 2."""
        value = self.get(key, optional)
        if value is _ABSENT or (optional and value is None):
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        kind = f"{'null or ' if optional else ''}an integer"
        if isinstance(value, bool) or not isinstance(value, int):
            self._bad(key, f"must be {kind} >= {minimum}, got {value!r}")
        elif value < minimum and value not in allowed:
            extra = f" (or {', '.join(map(str, allowed))})" if allowed else ""
            self._bad(key, f"must be {kind} >= {minimum}{extra}, got {value}")
        elif maximum is not None and value > maximum:
            self._bad(key, f"must be an integer in [{minimum}, {maximum}], got {value}")
        else:
            return value
        return None

    def number(
        self,
        key: str,
        low: float | None = None,
        high: float | None = None,
        low_open: bool = False,
        optional: bool = False,
    ) -> Any:
        """A real number in [low, high] (``(low, high]`` where ``low_open``; null too where ``optional``)."""
        value = self.get(key, optional)
        if value is _ABSENT or (optional and value is None):
            return None
        if low is not None and high is not None:
            bounds = f" in {'(' if low_open else '['}{low:g}, {high:g}]"
        else:
            bounds = f" {'>' if low_open else '>='} {low:g}" if low is not None else ""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:  # NaN != NaN
            self._bad(key, f"must be a number{bounds}, got {value!r}")
        elif (low is not None and (value <= low if low_open else value < low)) or (high is not None and value > high):
            self._bad(key, f"must be{bounds}, got {value}")
        else:
            return float(value)
        return None

    def choice(self, key: str, allowed: tuple[Any, ...]) -> Any:
        """One of ``allowed``, of the same type (1 is not true)."""
        value = self.get(key)
        if value is _ABSENT:
            return None
        if not any(value == option and type(value) is type(option) for option in allowed):
            self._bad(key, f"must be one of {list(allowed)}, got {value!r}")
            return None
        return value

    def boolean(self, key: str) -> Any:
        """true or false."""
        value = self.get(key)
        if value is not _ABSENT and not isinstance(value, bool):
            self._bad(key, f"must be true or false, got {value!r}")
        return value if isinstance(value, bool) else None

    def text(self, key: str, optional: bool = False) -> Any:
        """A string (a number is taken as its text: a split named 1); null too where ``optional``."""
        value = self.get(key, optional)
        if value is _ABSENT or (optional and value is None):
            return None
        if isinstance(value, (Mapping, list, bool)) or value is None:
            self._bad(key, f"must be a string, got {value!r}")
            return None
        return str(value)

    def mapping(self, key: str, optional: bool = False) -> Any:
        """A mapping (null too where ``optional``)."""
        value = self.get(key, optional)
        if value is _ABSENT or (optional and value is None):
            return None
        if not isinstance(value, Mapping):
            self._bad(key, f"must be a mapping, got {value!r}")
            return None
        return value


def model_source_problem(key: str, value: Any, saved_encoder: bool = False) -> str | None:
    """Why ``value`` (at ``key``) is not a loadable model, or None: a local folder must hold ``config.json`` (or
    ``query_encoder/config.json``); anything else is a hub id, found in the local hub cache or by fetching its
    config. ``saved_encoder``: a local folder is required (``checkpoint=``)."""
    if value is None or str(value).strip() == "":
        return f"{key} must name a model folder{'' if saved_encoder else ' or hub id'}, got {value!r}"
    text = str(value)
    path = Path(text).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file() or (path / "query_encoder" / "config.json").is_file():
            return None
        return f"{key}={text!r} is a folder but not a saved model (no config.json in it)"
    if saved_encoder or path.exists() or text.startswith(("/", ".", "~")) or text.count("/") > 1:
        return f"{key}={text!r} does not exist (expected a saved encoder folder)"
    try:
        from huggingface_hub import try_to_load_from_cache
        from transformers import AutoConfig

        if isinstance(try_to_load_from_cache(text, "config.json"), str):
            return None  # in the local hub cache: no network call
        AutoConfig.from_pretrained(text)
    except Exception as error:  # noqa: BLE001 - any failure means the id cannot be used
        return (
            f"{key}={text!r} is not a local folder and cannot be loaded from the Hugging Face hub "
            f"({type(error).__name__})"
        )
    return None


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


class _Builder:
    """Builds a :class:`Spec` from one composed config, collecting every problem (``problems``)."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.problems: list[str] = []
        try:
            self.resolved: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
        except OmegaConfBaseException as error:
            raise DataError(f"the config does not resolve: {error}") from error
        self.values = _Values(self.resolved, self.problems)

    def spec(self) -> Spec:
        """The spec (some fields None where a problem was noted)."""
        v = self.values
        language = self.language(self.resolved.get("language"), "language", own=True)
        train = self.train() if v.has("train") else None
        trainer = self.trainer() if train is not None else None
        model = self.model(v.mapping("model") or {}, "model.")
        negatives = self.negatives(v.mapping("negatives") or {}, "negatives.") if train is not None else None
        self.model_files(model, v.text("checkpoint", optional=True) if v.has("checkpoint") else None)
        self.problems.extend(launch_problems(v.mapping("trainer") if train is not None else None))
        self.problems.extend(cache_settings_problems())  # MDR_VERIFY_CACHES, MDR_CACHE_LOCK, MDR_LOCK_STALE_SECONDS
        spec = Spec(
            task_name=v.text("task_name"),
            seed=v.integer("seed", 0, maximum=MAX_SEED),
            paths=Paths(*(v.text(f"paths.{name}") for name in ("data_dir", "cache_dir", "output_dir"))),
            language=language,
            data=self.data(v.mapping("data") or {}, "data."),
            model=model,
            evaluation=self.evaluation(),
            run=self.run_policy(),
            logger=self.logger(),
            resolved=self.resolved,
            checkpoint=v.text("checkpoint", optional=True) if v.has("checkpoint") else None,
            trainer=trainer,
            train=train,
            negatives=negatives,
        )
        if train is not None and not self.problems:  # a schedule of sound values
            spec = replace(spec, schedule=self.schedule(spec))
        if not self.problems:
            spec = replace(spec, evaluation=replace(spec.evaluation, languages=self.evaluation_languages(spec)))
        return spec

    # ---- groups ---------------------------------------------------------------------------------------------

    def language(self, node: Any, key: str, own: bool = False) -> Language:
        """A language config; the run's own must say ``low_resource``."""
        if not isinstance(node, Mapping) or node.get("code") in (None, ""):
            self.problems.append(f"{key}: a language needs a `code`, got {node!r}")
            return Language("", None, None)
        low = node.get("low_resource")
        if (own or low is not None) and not isinstance(low, bool):
            self.problems.append(f"{key}.low_resource must be true or false, got {low!r}")
        analyzer = node.get("analyzer")
        return Language(str(node["code"]), None if analyzer is None else str(analyzer), low)

    def data(self, tree: Mapping[str, Any], prefix: str) -> Data:
        """A data group, resolved (a stage source's may name no splits: the source names its own)."""
        v = _Values(tree, self.problems, prefix)
        reader = v.mapping("reader")
        if reader is not None and "_target_" not in reader:
            self.problems.append(f"{prefix}reader must name a `_target_` reader class")
        source = prefix != "data."
        splits = (v.text("train_split", optional=source), v.text("test_split", optional=source))
        return Data(v.text("name"), *splits, reader or {}, dict(tree))

    def model(self, tree: Mapping[str, Any], prefix: str) -> Model:
        """A model group."""
        v = _Values(tree, self.problems, prefix)
        settings = EncoderSettings(
            pooling=v.choice("pooling", ("cls", "mean")) or "cls",
            normalize=v.boolean("normalize"),
            shared=v.boolean("shared"),
            query_max_length=v.integer("query_max_length", 1),
            passage_max_length=v.integer("passage_max_length", 1),
            query_prefix=v.text("query_prefix"),
            passage_prefix=v.text("passage_prefix"),
        )
        temperature = v.number("temperature", 0.0, None, low_open=True, optional=True)
        return Model(v.text("name"), v.text("name_or_path"), v.mapping("build", optional=True), settings, temperature)

    def model_files(self, model: Model, checkpoint: str | None) -> None:
        """The encoder evaluated or trained exists (or is built where its group says how)."""
        if checkpoint is not None:
            problem = model_source_problem("checkpoint", checkpoint, saved_encoder=True)
        elif model.build is not None:
            problem = build_target_problem(model.name, model.name_or_path, model.build)
        else:
            problem = model_source_problem("model.name_or_path", model.name_or_path)
        if problem:
            self.problems.append(problem)

    def train(self) -> Train:
        """``train`` and ``loss``."""
        v = self.values
        grad_cache = v.boolean("train.grad_cache.enabled")
        chunk = v.integer("train.grad_cache.chunk_size", 1)
        return Train(
            batch_size=v.integer("train.batch_size", 1),
            learning_rate=v.number("train.learning_rate", 0.0, None, low_open=True),
            weight_decay=v.number("train.weight_decay", 0.0),
            warmup_ratio=v.number("train.warmup_ratio", 0.0, 1.0),
            num_workers=v.integer("train.num_workers", 0),
            save_encoder=v.boolean("train.save_encoder"),
            gradient_clip_val=v.number("train.gradient_clip_val", 0.0, None, low_open=True, optional=True),
            chunk_tokens=v.integer("train.chunk_tokens", 1),
            cpu_malloc_retain_mb=v.integer("train.cpu_malloc_retain_mb", 0, maximum=MAX_RETAIN_MB),
            token_cache=v.integer("train.token_cache", 0),
            checkpoint_every_n_steps=v.integer("train.checkpoint_every_n_steps", 1, optional=True),
            gradient_checkpointing=v.boolean("train.gradient_checkpointing"),
            fast_dropout=v.choice("train.fast_dropout", ("auto", True, False)),
            grad_cache_chunk_size=chunk if grad_cache else None,
            mask_false_negatives=v.boolean("loss.mask_false_negatives"),
        )

    def trainer(self) -> Trainer:
        """``trainer`` (devices and nodes are checked with the launch, :func:`mdr.cluster.launch_problems`)."""
        v = self.values
        v.choice("trainer.deterministic", (True, False, "warn"))
        return Trainer(
            accelerator=v.text("trainer.accelerator"),
            devices=v.get("trainer.devices"),
            num_nodes=v.get("trainer.num_nodes"),
            precision=v.text("trainer.precision"),
            max_epochs=v.integer("trainer.max_epochs", 1, allowed=(-1,)),
            args=v.mapping("trainer") or {},
        )

    def evaluation(self) -> Evaluation:
        """``evaluation`` (its languages are resolved once the rest is sound); its split is the one evaluated."""
        v = self.values
        split, evaluated = v.text("evaluation.split"), v.text("data.test_split")
        if split is not None and evaluated is not None and split != evaluated:
            self.problems.append(
                f"evaluation.split={split} but data.test_split={evaluated} is the split evaluated: metrics.json would "
                f"label {evaluated} results as {split}; set data.test_split={split} (evaluation.split follows it)"
            )
        return Evaluation(
            split=split,
            depth=v.integer("evaluation.depth", MIN_DEPTH),  # nDCG@10 needs the top 10; below 100 names mrr@<depth>
            batch_size=v.integer("evaluation.batch_size", 1),
            faiss_gpu=v.choice("evaluation.faiss_gpu", ("auto", True, False)),
            bf16=v.choice("evaluation.bf16", ("auto", True, False)),
            shard_size=v.integer("evaluation.shard_size", 1),
            fp16_index=v.boolean("evaluation.fp16_index"),
            keep_embeddings=v.boolean("evaluation.keep_embeddings"),
            languages=(),
        )

    def run_policy(self) -> RunPolicy:
        """``run``; keys evaluate.py's ``run`` lacks keep their defaults."""
        v = self.values
        found = {
            "on_config_change": v.choice("run.on_config_change", ("refuse", "fresh")),
            "on_complete": v.choice("run.on_complete", ("skip", "fresh")),
        }
        for key in ("stages_only", "keep_checkpoints", "keep_encoder"):
            if v.has(f"run.{key}"):
                found[key] = v.boolean(f"run.{key}")
        return RunPolicy(**found)

    def logger(self) -> Logger:
        """``logger``."""
        v = self.values
        return Logger(
            csv=v.boolean("logger.csv"),
            wandb_enabled=v.boolean("logger.wandb.enabled"),
            wandb_mode=v.choice("logger.wandb.mode", WANDB_MODES),
            wandb_project=v.text("logger.wandb.project"),
            wandb_entity=v.text("logger.wandb.entity", optional=True),
            wandb_group=v.text("logger.wandb.group", optional=True),
            progress_every_n_steps=v.integer("logger.progress.every_n_steps", 1, optional=True),
            progress_every_seconds=v.number("logger.progress.every_seconds", 0.0, None, low_open=True, optional=True),
        )

    # ---- negatives ------------------------------------------------------------------------------------------

    def negatives(self, tree: Mapping[str, Any], prefix: str) -> Negatives:
        """A ``negatives`` group (the run's, or a stage's merged over it): its pool, denoising and labels."""
        v = _Values(tree, self.problems, prefix)
        k, p = v.integer("num_negatives", 0), v.number("hard_proportion", 0.0, 1.0)
        strict = v.boolean("strict")
        pool = self.pool(v, prefix) if v.has("pool") else None
        if pool is None and not v.has("pool") and k is not None and p is not None and num_hard(p, k) > 0:
            self.problems.append(f"{prefix}pool must be set: {prefix}hard_proportion={p:g} draws hard negatives")
        if k == 0 and p is not None and p > 0:
            self.problems.append(
                f"{prefix}num_negatives=0 trains on in-batch negatives only, so {prefix}hard_proportion={p:g} would "
                f"label a run that used no hard negative; set {prefix}hard_proportion=0 (or num_negatives >= 1)"
            )
        elif k is not None and p is not None:
            problem = proportion_problem(p, k, prefix.rstrip("."))
            if problem:
                self.problems.append(problem)
        denoise = self.denoise(v, prefix)
        teacher = self.teacher(denoise.teacher) if denoise is not None and denoise.enabled else None
        return Negatives(k, p, strict, pool, denoise or DenoiseSettings(), teacher, dict(tree))

    def pool(self, v: _Values, prefix: str) -> PoolSettings | None:
        """``<negatives>.pool``."""
        node = v.mapping("pool") or {}
        unknown = sorted(set(node) - set(POOL_KEYS))
        if unknown:
            self.problems.append(f"{prefix}pool: unknown keys {unknown} (known: {list(POOL_KEYS)})")

        def read(name: str, check: Any) -> Any:
            return check() if name in node else None

        source = read("source", lambda: v.choice("pool.source", ("bm25", "dense", "shipped")))
        backend = read("backend", lambda: v.choice("pool.backend", ("bm25s", "pyserini")))
        tokenizer = read("tokenizer", lambda: v.choice("pool.tokenizer", TOKENIZERS))
        if tokenizer not in (None, "default") and backend == "pyserini":
            self.problems.append(
                f"{prefix}pool.tokenizer={tokenizer} is for backend=bm25s (pyserini uses its analyzer)"
            )
        elif tokenizer == "thai_words":
            try:
                tokenizer_version(tokenizer)
            except RuntimeError as error:
                self.problems.append(str(error))
        depth = read("depth", lambda: v.integer("pool.depth", 1))
        low = read("range_min", lambda: v.integer("pool.range_min", 0))
        high = v.integer("pool.range_max", 1, optional=True)
        if high is not None and low is not None and high <= low:
            self.problems.append(f"{prefix}pool.range_max ({high}) must be above {prefix}pool.range_min ({low})")
        if high is not None and depth is not None and low is not None and low >= depth:
            self.problems.append(f"{prefix}pool.range_min ({low}) must be below {prefix}pool.depth ({depth})")
        encoder = v.text("pool.encoder", optional=True)
        if source == "dense":  # checked whatever p is, so every cell of a sweep fails alike
            problem = model_source_problem(f"{prefix}pool.encoder", encoder)
            if problem:
                self.problems.append(problem)
        settings = {
            "source": source,
            "backend": backend,
            "depth": depth,
            "range_min": low,
            "range_max": high,
            "margin": v.number("pool.margin", optional=True),
            "encoder": encoder,
            "threads": v.integer("pool.threads", 1, optional=True),  # null: the CPUs this process may use
            "tokenizer": tokenizer,
        }
        return PoolSettings(**{key: value for key, value in settings.items() if key in node})

    def denoise(self, v: _Values, prefix: str) -> DenoiseSettings | None:
        """``<negatives>.denoise`` (absent or null: off)."""
        node = v.get("denoise", optional=True)
        if node is None:
            return None
        if not isinstance(node, Mapping):
            self.problems.append(f"{prefix}denoise must be a mapping of {list(DENOISE_KEYS)}, got {node!r}")
            return None
        unknown = sorted(set(node) - set(DENOISE_KEYS))
        if unknown:
            self.problems.append(f"{prefix}denoise: unknown keys {unknown} (known: {list(DENOISE_KEYS)})")
        found = {
            "enabled": v.boolean("denoise.enabled") if "enabled" in node else None,
            "relative_margin": v.number("denoise.relative_margin", 0.0, 0.5) if "relative_margin" in node else None,
            "batch_size": v.integer("denoise.batch_size", 1) if "batch_size" in node else None,
            "teacher": v.text("denoise.teacher") if "teacher" in node else None,
        }
        if "teacher" in node and not str(node["teacher"] or "").strip():
            self.problems.append(
                f"{prefix}denoise.teacher must name a model group (me5_small) or an encoder folder, got "
                f"{node['teacher']!r}"
            )
        return DenoiseSettings(**{key: value for key, value in found.items() if value is not None})

    def teacher(self, name: str) -> Teacher | None:
        """``negatives.denoise.teacher``: a model group (resolved with the run's paths) or an encoder folder."""
        group = CONF / "model" / f"{name}.yaml"
        if "/" not in name and group.is_file():
            other = copy.deepcopy(self.cfg)
            with open_dict(other):
                other.model = OmegaConf.load(group)
            return Teacher(name, self.model(_plain(other.model), f"negatives.denoise.teacher={name}: model."), None)
        if Path(name).is_dir():
            return Teacher(name, self.model(self.values.mapping("model") or {}, "model."), str(Path(name).resolve()))
        groups = sorted(path.stem for path in (CONF / "model").glob("*.yaml"))
        self.problems.append(
            f"negatives.denoise.teacher={name!r}: neither a model group ({', '.join(groups)}) nor an existing folder"
        )
        return None

    # ---- languages, sources, stages -------------------------------------------------------------------------

    def language_node(self, language: Any, key: str) -> Any:
        """The config of a language named by code (``conf/language/<code>.yaml``) or given as a mapping."""
        if isinstance(language, Mapping) or OmegaConf.is_dict(language):
            if "code" not in language:
                raise DataError(f"{key}: a language mapping needs a `code`, got {dict(_plain(language))}")
            return OmegaConf.create(_plain(language))
        path = CONF / "language" / f"{language}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in (CONF / "language").glob("*.yaml"))
            raise DataError(f"{key}: no language {language!r} (conf/language has {', '.join(known)})")
        return OmegaConf.load(path)

    def with_language(self, language: Any, data: Any = None) -> Any:
        """A copy of the config with ``language`` (and ``data``) put in, so the data group resolves for it."""
        other = copy.deepcopy(self.cfg)
        with open_dict(other):
            other.language = language
            if data is not None:
                other.data = OmegaConf.create(data)
        return other

    def evaluation_languages(self, spec: Spec) -> tuple[EvaluationLanguage, ...]:
        """``evaluation.languages``, else ``stage.evaluate_on``, else ``language``; each with its data group."""
        key, listed = "evaluation.languages", self.resolved["evaluation"].get("languages")
        if listed is None and (self.resolved.get("stage") or {}).get("evaluate_on") is not None:
            key, listed = "stage.evaluate_on", self.resolved["stage"]["evaluate_on"]
        listed = [spec.language.code] if listed is None else [listed] if isinstance(listed, str) else listed
        found: list[EvaluationLanguage] = []
        for number, code in enumerate(listed):
            if code in (spec.language.code, TARGET):
                found.append(EvaluationLanguage(spec.language, spec.data))
                continue
            try:
                other = self.with_language(self.language_node(code, f"{key}[{number}]"))
            except DataError as error:
                self.problems.append(str(error))
                continue
            language = self.language(_plain(other.language), f"{key}[{number}]", own=True)
            found.append(EvaluationLanguage(language, self.data(_plain(other.data), "data.")))
        codes = [item.language.code for item in found]
        if not listed:
            self.problems.append(f"{key} is empty: name at least one language (or leave it null for `language`)")
        elif len(set(codes)) != len(codes):
            self.problems.append(f"{key} names a language twice: {codes}")
        return tuple(found)

    def source(self, entry: Any, key: str) -> Source:
        """One ``train_on`` entry: a language code, ``target``, or {language, data, split}."""
        data = None
        if isinstance(entry, str):
            entry = {"language": entry}
        elif OmegaConf.is_dict(entry):
            # the data unresolved: it is resolved for the source's own language
            data = OmegaConf.to_container(entry.data, resolve=False) if entry.get("data") is not None else None
            entry = {"language": _plain(entry.get("language")), "split": entry.get("split")}
        if not isinstance(entry, Mapping) or entry.get("language") is None:
            raise DataError(f"{key}: a source is a language code, `{TARGET}`, or a mapping with a `language`")
        if entry["language"] == TARGET:
            if data is not None:
                raise DataError(f"{key}: `{TARGET}` means the run's data group; give a language code with `data`")
            language_node = copy.deepcopy(self.cfg.language)
        else:
            language_node = self.language_node(entry["language"], f"{key}.language")
        other = self.with_language(language_node, data)
        try:
            data_tree, language_tree = _plain(other.data), _plain(other.language)
        except OmegaConfBaseException as error:  # an interpolation that does not resolve for this language
            raise DataError(f"{key}: its data config does not resolve: {error}") from error
        language = self.language(language_tree, f"{key}.language")
        split = entry.get("split") or data_tree.get("train_split") or "train"
        is_target = data is None and language.code == str(self.resolved["language"]["code"])
        return Source(language.code, language, self.data(data_tree, f"{key}.data."), str(split), is_target)

    def stage(self, spec: Spec, index: int, entry: Any, last: bool, applies_to: str) -> Stage | None:
        """``stage.stages[index]``, resolved; None (problems noted) where it cannot be."""
        key = f"stage.stages[{index}]"
        if not OmegaConf.is_dict(entry):
            self.problems.append(f"{key} must be a mapping (name, train_on, epochs, negatives)")
            return None
        train_on = entry.get("train_on")
        if isinstance(train_on, str) or OmegaConf.is_dict(train_on):
            train_on = [train_on]
        if not train_on:
            self.problems.append(f"{key}.train_on must name at least one source")
            return None
        sources: list[Source] = []
        for number, item in enumerate(train_on):
            try:
                sources.append(self.source(item, f"{key}.train_on[{number}]"))
            except DataError as error:
                self.problems.append(str(error))
        if entry.get("exclude_target", False):
            sources = [source for source in sources if not source.is_target]
            if not sources and not self.problems:
                self.problems.append(
                    f"{key}.train_on holds nothing but the run's language ({spec.language.code}), excluded"
                )
        labels = [f"{source.label}:{source.split}" for source in sources]
        if len(set(labels)) != len(labels):
            self.problems.append(f"{key}.train_on names a source twice: {labels}")
        tree = {
            "epochs": _plain(entry.get("epochs", spec.trainer.max_epochs)),
            "negatives": _plain(entry.get("negatives")),
        }
        epochs = _Values(tree, self.problems, f"{key}.").integer("epochs", 1)
        overrides = tree["negatives"] or {}
        if not isinstance(overrides, dict):
            self.problems.append(f"{key}.negatives must be a mapping merged over `negatives`, got {overrides!r}")
            overrides = {}
        merged = _plain(OmegaConf.merge(spec.negatives.resolved, overrides))
        if last or applies_to == "all":
            merged["hard_proportion"] = spec.negatives.resolved["hard_proportion"]
        elif "hard_proportion" not in overrides:
            self.problems.append(
                f"{key}.negatives.hard_proportion must be set: with stage.proportion_applies_to=last only the last "
                "stage takes negatives.hard_proportion"
            )
        negatives = self.negatives(merged, f"{key}.negatives.")
        parts = [source.code for source in sources]
        sources = [
            source if parts.count(source.code) == 1 else replace(source, part=f"{source.data.name}-{source.code}")
            for source in sources
        ]
        sources = [replace(source, part=source.part.replace("/", "-")) for source in sources]
        own = last and any(source.is_target for source in sources)
        return Stage(index, str(entry.get("name") or f"stage{index}"), tuple(sources), epochs, negatives, own)

    def schedule(self, spec: Spec) -> Schedule:
        """``stage``: the schedule, each stage resolved against the run."""
        node = self.cfg.get("stage")
        if node is None:
            return Schedule(ZERO_SHOT, "last", ())
        v = self.values
        name, applies_to = v.text("stage.name"), v.choice("stage.proportion_applies_to", APPLIES_TO)
        entries = node.get("stages")
        if entries is not None and not OmegaConf.is_list(entries):
            self.problems.append(f"stage.stages must be a list of stages, got {type(entries).__name__}")
            entries = None
        entries = list(entries or [])
        if not entries and name != ZERO_SHOT:
            self.problems.append(
                f"stage.stages is empty, so nothing would be trained, but stage.name is {name!r}: the run would be "
                f"recorded as {name!r}; use stage={ZERO_SHOT} to evaluate the starting model as it is"
            )
        stages = [
            self.stage(spec, i, entry, i == len(entries) - 1, applies_to or "last") for i, entry in enumerate(entries)
        ]
        return Schedule(name, applies_to, tuple(stage for stage in stages if stage is not None))


def _fail(problems: list[str]) -> None:
    if len(problems) == 1:
        raise DataError(problems[0])
    if problems:
        raise DataError(f"{len(problems)} problems with the config:\n  " + "\n  ".join(problems))


def config_problems(cfg: DictConfig) -> list[str]:
    """Every problem with the composed config's values, each naming its key (empty when there is none)."""
    builder = _Builder(cfg)
    builder.spec()
    return builder.problems


def build_spec(cfg: DictConfig) -> Spec:
    """The run's :class:`Spec`, every value checked before anything is read, built or trained.

    Raises:
        DataError: naming the config key of every problem found.
    """
    builder = _Builder(cfg)
    spec = builder.spec()
    _fail(builder.problems)
    return spec


def resolve_teacher(cfg: DictConfig, name: str) -> Teacher:
    """A denoising teacher named as ``negatives.denoise.teacher`` would name it, for the run ``cfg`` composes.

    Raises:
        DataError: neither a model group nor an existing folder.
    """
    builder = _Builder(cfg)
    teacher = builder.teacher(name)
    _fail(builder.problems)
    return teacher  # type: ignore[return-value]


def validate_splits(spec: Spec, train: RetrievalSplit | None, test: RetrievalSplit) -> None:
    """Check the loaded splits against the spec (before mining or training).

    Raises:
        DataError: naming the config key of every problem found.
    """
    problems = test_split_problems(test, spec.data.test_split)
    if train is not None and spec.negatives is not None:
        negatives = spec.negatives
        source = negatives.pool.source if negatives.pool is not None else ""
        problems += train_split_problems(
            train, spec.data.train_split, negatives.num_negatives, negatives.hard_proportion, source, spec.data.name
        )
    _fail(problems)
