"""The composed config checked into a :class:`mdr.spec.Spec` before any work, every problem naming its key."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import MISSING, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from mdr.cluster import launch_problems
from mdr.data.checks import test_split_problems, train_split_problems
from mdr.data.negatives import num_hard, proportion_problem
from mdr.data.schema import DataError, RetrievalSplit
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
from mdr.utils.cache import settings_problems as cache_settings_problems
from mdr.utils.config_identity import NEUTRAL_DEFAULTS
from mdr.utils.instantiate import build_target_problem, model_source_problem

CONF = Path(__file__).resolve().parents[1] / "conf"
MAX_SEED = 2**32 - 1  # the largest seed numpy (and so lightning.seed_everything) takes
ZERO_SHOT = "zero_shot"  # the one schedule name an empty stage.stages may carry
TARGET = "target"  # in train_on and evaluation.languages: the run's own language (in the run's data group)
NULLABLE = ("range_max", "margin", "encoder", "threads")  # pool settings whose null means something
_ABSENT = object()
T = TypeVar("T")


class _Values:
    """Reads dotted keys of a resolved mapping; every problem is noted with its full key (``prefix`` + key)."""

    def __init__(self, tree: Mapping[str, Any], problems: list[str], prefix: str = "") -> None:
        self.tree, self.problems, self.prefix = tree, problems, prefix

    def find(self, key: str) -> Any:
        """The value at dotted ``key`` as held (a null included); ``_ABSENT`` where the mapping has no such key."""
        node: Any = self.tree
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return _ABSENT
            node = node[part]
        return node

    def get(self, key: str, optional: bool = False) -> Any:
        """The value at ``key`` (absent: its :data:`NEUTRAL_DEFAULTS` value, or None if ``optional``, or a problem)."""
        node, full = self.find(key), self.prefix + key
        if node is _ABSENT and full in NEUTRAL_DEFAULTS:
            return NEUTRAL_DEFAULTS[full]
        if node is _ABSENT and optional:
            return None
        if node is _ABSENT or node == "???":
            missing = "must be set (it is ???)" if node == "???" else "is missing from the config"
            self.problems.append(f"{full} {missing}")
            return _ABSENT
        return node

    def _checked(
        self, key: str, problem: Callable[[Any], str | None], optional: bool = False, convert: Callable = lambda x: x
    ) -> Any:
        """The value at ``key``, ``convert``-ed, where ``problem`` finds none in it (else None)."""
        value = self.get(key, optional)
        if value is _ABSENT or value is None and optional:
            return None
        if found := problem(value):
            self.problems.append(f"{self.prefix}{key} {found}")
            return None
        return convert(value)

    def integer(
        self, key: str, minimum: int, maximum: int | None = None, optional: bool = False, allowed: tuple[int, ...] = ()
    ) -> Any:
        """An int in [minimum, maximum] or in ``allowed``; 2.5, "2" and true are errors, 2.0 is 2."""
        kind = f"{'null or ' if optional else ''}an integer >= {minimum}"

        def problem(value: Any) -> str | None:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value % 1:
                return f"must be {kind}, got {value!r}"
            if value < minimum and value not in allowed:
                return f"must be {kind}{f' (or {allowed[0]})' if allowed else ''}, got {value}"
            if maximum is not None and value > maximum:
                return f"must be an integer in [{minimum}, {maximum}], got {value}"
            return None

        return self._checked(key, problem, optional, int)

    def number(
        self, key: str, low: float | None = None, high: float | None = None, above: bool = False, optional: bool = False
    ) -> Any:
        """A real number in [low, high] (``(low, high]`` where ``above``)."""
        if high is not None:
            bounds = f" in {'(' if above else '['}{low:g}, {high:g}]"
        else:
            bounds = f" {'>' if above else '>='} {low:g}" if low is not None else ""

        def problem(value: Any) -> str | None:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:  # NaN != NaN
                return f"must be a number{bounds}, got {value!r}"
            if (low is not None and (value <= low if above else value < low)) or (high is not None and value > high):
                return f"must be{bounds}, got {value}"
            return None

        return self._checked(key, problem, optional, float)

    def choice(self, key: str, allowed: tuple[Any, ...]) -> Any:
        """One of ``allowed``, of the same type (1 is not true)."""
        listed = f"must be one of {list(allowed)}, got "
        return self._checked(
            key, lambda v: None if any(v == o and type(v) is type(o) for o in allowed) else listed + repr(v)
        )

    def boolean(self, key: str) -> Any:
        """true or false."""
        return self._checked(key, lambda v: None if isinstance(v, bool) else f"must be true or false, got {v!r}")

    def text(self, key: str, optional: bool = False, allowed: tuple[str, ...] = ()) -> Any:
        """A string (a number is taken as its text: a split named 1), one of ``allowed`` where given."""

        def problem(value: Any) -> str | None:
            if value is None or isinstance(value, (Mapping, list, bool)):
                return f"must be a string, got {value!r}"
            return f"must be one of {list(allowed)}, got {value!r}" if allowed and str(value) not in allowed else None

        return self._checked(key, problem, optional, str)

    def mapping(self, key: str, optional: bool = False) -> Any:
        """A mapping."""
        return self._checked(
            key, lambda v: None if isinstance(v, Mapping) else f"must be a mapping, got {v!r}", optional
        )


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


# negatives.pool: a key the group leaves out keeps PoolSettings' value; negatives.denoise absent: off
POOL_CHECKS: dict[str, Callable[[_Values], Any]] = {
    "source": lambda v: v.choice("pool.source", ("bm25", "dense", "shipped")),
    "backend": lambda v: v.choice("pool.backend", ("bm25s", "pyserini")),
    "depth": lambda v: v.integer("pool.depth", 1),
    "range_min": lambda v: v.integer("pool.range_min", 0),
    "range_max": lambda v: v.integer("pool.range_max", 1, optional=True),
    "margin": lambda v: v.number("pool.margin", optional=True),
    "encoder": lambda v: v.text("pool.encoder", optional=True),
    "threads": lambda v: v.integer("pool.threads", 1, optional=True),  # null: the CPUs this process may use
    "tokenizer": lambda v: v.choice("pool.tokenizer", TOKENIZERS),
}
DENOISE_CHECKS: dict[str, Callable[[_Values], Any]] = {
    "enabled": lambda v: v.boolean("denoise.enabled"),
    "teacher": lambda v: v.text("denoise.teacher"),
    "relative_margin": lambda v: v.number("denoise.relative_margin", 0.0, 0.5),
    "batch_size": lambda v: v.integer("denoise.batch_size", 1),
}


class _Builder:
    """Builds a :class:`Spec` from one composed config, noting every problem in ``problems``."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.problems: list[str] = []
        try:
            self.resolved: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
        except OmegaConfBaseException as error:
            raise DataError(f"the config does not resolve: {error}") from error
        self.values = _Values(self.resolved, self.problems)

    def spec(self) -> Spec:
        """The spec (a field None where a problem was noted; the schedule only where all else is sound)."""
        v, trains = self.values, "train" in self.resolved
        model = self.model(v.mapping("model") or {}, "model.")
        checkpoint = v.text("checkpoint", optional=True)
        if checkpoint is not None:
            problem = model_source_problem("checkpoint", checkpoint, saved_encoder=True)
        elif model.build is not None:
            problem = build_target_problem(model.name, model.name_or_path, model.build)
        else:
            problem = model_source_problem("model.name_or_path", model.name_or_path)
        spec = Spec(
            task_name=v.text("task_name"),
            seed=v.integer("seed", 0, maximum=MAX_SEED),
            paths=self.read(Paths),
            language=self.language(self.resolved.get("language"), "language", own=True),
            data=self.data(v.mapping("data") or {}, "data."),
            model=model,
            evaluation=self.read(Evaluation),
            run=self.read(RunPolicy),
            logger=self.read(Logger),
            resolved=self.resolved,
            checkpoint=checkpoint,
            trainer=self.read(Trainer) if trains else None,
            train=self.read(Train) if trains else None,
            negatives=self.negatives(v.mapping("negatives") or {}, "negatives.") if trains else None,
        )
        self.problems += [problem] if problem else []
        split, evaluated = spec.evaluation.split, spec.data.test_split
        if None not in (split, evaluated) and split != evaluated:
            self.problems.append(
                f"evaluation.split={split} but data.test_split={evaluated} is the split evaluated: metrics.json would "
                f"label {evaluated} results as {split}; set data.test_split={split} (evaluation.split follows it)"
            )
        self.problems += launch_problems(self.resolved.get("trainer") if trains else None)
        self.problems += cache_settings_problems()  # MDR_VERIFY_CACHES, MDR_CACHE_LOCK, MDR_LOCK_STALE_SECONDS
        if trains and not self.problems:
            spec = replace(spec, schedule=self.schedule(spec))
        if not self.problems:
            spec = replace(spec, evaluation=replace(spec.evaluation, languages=self.evaluation_languages(spec)))
        return spec

    def language(self, node: Any, key: str, own: bool = False) -> Language:
        """A language config; a run's own or evaluated language says ``low_resource``."""
        if not isinstance(node, Mapping) or node.get("code") in (None, ""):
            self.problems.append(f"{key}: a language needs a `code`, got {node!r}")
            return Language("", None, None)
        low, analyzer = node.get("low_resource"), node.get("analyzer")
        if (own or low is not None) and not isinstance(low, bool):
            self.problems.append(f"{key}.low_resource must be true or false, got {low!r}")
        return Language(str(node["code"]), None if analyzer is None else str(analyzer), low)

    def data(self, tree: Mapping[str, Any], prefix: str) -> Data:
        """A data group, resolved (a stage source's may name no splits: the source names its own)."""
        v, source = _Values(tree, self.problems, prefix), prefix != "data."
        reader = v.mapping("reader")
        if reader is not None and "_target_" not in reader:
            self.problems.append(f"{prefix}reader must name a `_target_` reader class")
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
        temperature = v.number("temperature", 0.0, above=True, optional=True)
        return Model(v.text("name"), v.text("name_or_path"), v.mapping("build", optional=True), settings, temperature)

    def read(self, cls: type[T]) -> T:
        """A ``cls`` whose fields name their config keys (:func:`mdr.spec.key`); a default stands for an absent key."""
        v, found = self.values, {}
        for item in fields(cls):  # type: ignore[arg-type]
            meta = item.metadata
            if "key" in meta and (item.default is MISSING or v.find(meta["key"]) is not _ABSENT):
                found[item.name] = getattr(v, meta["check"])(meta["key"], **meta["options"])
        return cls(**found)

    def negatives(self, tree: Mapping[str, Any], prefix: str) -> Negatives:
        """A ``negatives`` group (the run's, or a stage's merged over it): its pool, denoising and labels."""
        v = _Values(tree, self.problems, prefix)
        k, p, strict = v.integer("num_negatives", 0), v.number("hard_proportion", 0.0, 1.0), v.boolean("strict")
        pool = self.pool(v, prefix) if "pool" in tree else None
        if "pool" not in tree and k is not None and p is not None and num_hard(p, k) > 0:
            self.problems.append(f"{prefix}pool must be set: {prefix}hard_proportion={p:g} draws hard negatives")
        if k == 0 and p is not None and p > 0:
            self.problems.append(
                f"{prefix}num_negatives=0 trains on in-batch negatives only, so {prefix}hard_proportion={p:g} would "
                f"label a run that used no hard negative; set {prefix}hard_proportion=0 (or num_negatives >= 1)"
            )
        elif k is not None and p is not None and (problem := proportion_problem(p, k, prefix.rstrip("."))):
            self.problems.append(problem)
        denoise = DenoiseSettings(**self.known(v, "denoise", DENOISE_CHECKS))
        teacher = self.teacher(denoise.teacher) if denoise.enabled else None
        return Negatives(k, p, strict, pool, denoise, teacher, dict(tree))

    def known(self, v: _Values, section: str, checks: dict[str, Callable[[_Values], Any]]) -> dict[str, Any]:
        """The keys a ``section`` of ``v`` gives, checked; unknown keys are problems."""
        node = v.mapping(section, optional=True) or {}
        unknown = sorted(set(node) - set(checks))
        if unknown:
            self.problems.append(f"{v.prefix}{section}: unknown keys {unknown} (known: {list(checks)})")
        return {key: check(v) for key, check in checks.items() if key in node}

    def pool(self, v: _Values, prefix: str) -> PoolSettings:
        """``<negatives>.pool``."""
        found = self.known(v, "pool", POOL_CHECKS)
        tokenizer, low, high, depth = (found.get(key) for key in ("tokenizer", "range_min", "range_max", "depth"))
        if tokenizer not in (None, "default") and found.get("backend") == "pyserini":
            self.problems.append(
                f"{prefix}pool.tokenizer={tokenizer} is for backend=bm25s (pyserini uses its analyzer)"
            )
        elif tokenizer == "thai_words":
            try:
                tokenizer_version(tokenizer)
            except RuntimeError as error:
                self.problems.append(str(error))
        if None not in (high, low) and high <= low:  # type: ignore[operator]
            self.problems.append(f"{prefix}pool.range_max ({high}) must be above {prefix}pool.range_min ({low})")
        if None not in (high, low, depth) and low >= depth:  # type: ignore[operator]
            self.problems.append(f"{prefix}pool.range_min ({low}) must be below {prefix}pool.depth ({depth})")
        if found.get("source") == "dense":  # checked whatever p is, so every cell of a sweep fails alike
            problem = model_source_problem(f"{prefix}pool.encoder", found.get("encoder"))
            self.problems += [problem] if problem else []
        return PoolSettings(**{key: value for key, value in found.items() if value is not None or key in NULLABLE})

    def teacher(self, name: str) -> Teacher | None:
        """``negatives.denoise.teacher``: a model group (resolved with the run's paths) or an encoder folder."""
        group = CONF / "model" / f"{name}.yaml"
        if "/" not in name and group.is_file():
            other = self.replaced(model=OmegaConf.load(group))
            return Teacher(name, self.model(_plain(other.model), f"negatives.denoise.teacher={name}: model."), None)
        if Path(name).is_dir():
            return Teacher(name, self.model(self.resolved["model"], "model."), str(Path(name).resolve()))
        groups = ", ".join(sorted(path.stem for path in (CONF / "model").glob("*.yaml")))
        self.problems.append(
            f"negatives.denoise.teacher={name!r}: neither a model group ({groups}) nor an existing folder"
        )
        return None

    def language_node(self, language: Any, key: str) -> Any:
        """The config of a language named by code (``conf/language/<code>.yaml``) or given as a mapping."""
        if isinstance(language, Mapping) or OmegaConf.is_dict(language):
            if "code" not in language:
                raise DataError(f"{key}: a language mapping needs a `code`, got {dict(_plain(language))}")
            return OmegaConf.create(_plain(language))
        path = CONF / "language" / f"{language}.yaml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in (CONF / "language").glob("*.yaml")))
            raise DataError(f"{key}: no language {language!r} (conf/language has {known})")
        return OmegaConf.load(path)

    def replaced(self, **groups: Any) -> Any:
        """A copy of the config with ``groups`` put in, so the rest resolves for them."""
        other = copy.deepcopy(self.cfg)
        with open_dict(other):
            for name, node in groups.items():
                setattr(other, name, node)
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
                other = self.replaced(language=self.language_node(code, f"{key}[{number}]"))
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
        elif OmegaConf.is_dict(entry):  # its data unresolved: resolved below for the source's own language
            data = OmegaConf.to_container(entry.data, resolve=False) if entry.get("data") is not None else None
            entry = {"language": _plain(entry.get("language")), "split": entry.get("split")}
        if not isinstance(entry, Mapping) or entry.get("language") is None:
            raise DataError(f"{key}: a source is a language code, `{TARGET}`, or a mapping with a `language`")
        target = entry["language"] == TARGET
        if target and data is not None:
            raise DataError(f"{key}: `{TARGET}` means the run's data group; give a language code with `data`")
        node = copy.deepcopy(self.cfg.language) if target else self.language_node(entry["language"], f"{key}.language")
        other = self.replaced(language=node, **({} if data is None else {"data": OmegaConf.create(data)}))
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
        train_on = [train_on] if isinstance(train_on, str) or OmegaConf.is_dict(train_on) else train_on
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
        v = _Values({"epochs": _plain(entry.get("epochs", spec.trainer.max_epochs))}, self.problems, f"{key}.")
        epochs, overrides = v.integer("epochs", 1), _plain(entry.get("negatives")) or {}
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
        codes = [source.code for source in sources]
        sources = [
            replace(s, part=(s.code if codes.count(s.code) == 1 else f"{s.data.name}-{s.code}").replace("/", "-"))
            for s in sources
        ]
        own = last and any(source.is_target for source in sources)
        negatives = self.negatives(merged, f"{key}.negatives.")
        return Stage(index, str(entry.get("name") or f"stage{index}"), tuple(sources), epochs, negatives, own)

    def schedule(self, spec: Spec) -> Schedule:
        """``stage``: the schedule, each stage resolved against the run."""
        v = self.values
        name, applies_to = v.text("stage.name"), v.choice("stage.proportion_applies_to", ("last", "all"))
        entries = self.cfg.stage.get("stages")
        if entries is not None and not OmegaConf.is_list(entries):
            self.problems.append(f"stage.stages must be a list of stages, got {type(entries).__name__}")
        entries = list(entries) if OmegaConf.is_list(entries) else []
        if not entries and name != ZERO_SHOT:
            self.problems.append(
                f"stage.stages is empty, so nothing would be trained, but stage.name is {name!r}: the run would be "
                f"recorded as {name!r}; use stage={ZERO_SHOT} to evaluate the starting model as it is"
            )
        last = len(entries) - 1
        stages = [self.stage(spec, i, entry, i == last, applies_to or "last") for i, entry in enumerate(entries)]
        return Schedule(name, applies_to, tuple(stage for stage in stages if stage is not None))


def _fail(problems: list[str], result: Any = None) -> Any:
    if len(problems) == 1:
        raise DataError(problems[0])
    if problems:
        raise DataError(f"{len(problems)} problems with the config:\n  " + "\n  ".join(problems))
    return result


def config_problems(cfg: DictConfig) -> list[str]:
    """Every problem with the composed config's values, each naming its key (empty when there is none)."""
    builder = _Builder(cfg)
    builder.spec()
    return builder.problems


def build_spec(cfg: DictConfig) -> Spec:
    """The run's :class:`Spec`; a :class:`DataError` names the key of every problem found."""
    builder = _Builder(cfg)
    return _fail(builder.problems, builder.spec())  # the problems list is filled by spec(), before _fail reads it


def resolve_teacher(cfg: DictConfig, name: str) -> Teacher:
    """Denoising teacher ``name`` for ``cfg``; a :class:`DataError` where it is neither a model group nor a folder."""
    builder = _Builder(cfg)
    return _fail(builder.problems, builder.teacher(name))  # teacher() notes its problems first


def validate_splits(spec: Spec, train: RetrievalSplit | None, test: RetrievalSplit) -> None:
    """Check the loaded splits against the spec; a :class:`DataError` names the key of every problem found."""
    problems, data, negatives = test_split_problems(test, spec.data.test_split), spec.data, spec.negatives
    if train is not None and negatives is not None:
        source = negatives.pool.source if negatives.pool is not None else ""
        k, p = negatives.num_negatives, negatives.hard_proportion
        problems += train_split_problems(train, data.train_split, k, p, source, data.name)
    _fail(problems)
