"""Stage schedules as data: a run trains a list of stages, each starting from the previous stage's encoder.

``stage.stages`` (``conf/stage/*.yaml``) lists the stages and ``stage.name`` names the schedule in tables::

    stages:
      - name: english
        train_on: [en]            # sources, trained on as one union when there are several: a language code of
                                  # the run's data group, `target` (the run's own language), or a mapping
                                  # {language: <code or language mapping>, data: <data config>, split: <split>}
        exclude_target: false     # true: drop the run's language from train_on ("every language but the target")
        epochs: ${trainer.max_epochs}
        negatives: {hard_proportion: 0.5}   # merged over the run's `negatives` (null: the run's negatives)
      - name: target
        train_on: [target]

``stage.proportion_applies_to`` says which stages take the swept ``negatives.hard_proportion``: ``last`` (the
last stage; every earlier stage must fix its own) or ``all``. ``stage.evaluate_on`` (optional) lists the
languages a recipe is evaluated on when ``evaluation.languages`` is not set.

The last stage is the run's own when it trains on the run's language: it trains in the run folder; every other
stage is cached (:mod:`mdr.stage_cache`).

A union's query ids and docids are namespaced by part (:mod:`mdr.data.union`): each query draws its negatives
from its own language's corpus and pools.

"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from mdr.data.checks import test_split_problems
from mdr.data.negatives import proportion_problem
from mdr.data.schema import DataError, RetrievalSplit
from mdr.utils.instantiate import build_reader
from mdr.utils.logging import get_logger

log = get_logger(__name__)

LANGUAGES_DIR = Path(__file__).resolve().parents[1] / "conf" / "language"
"""``conf/language``: the language configs a stage or ``evaluation.languages`` names by code."""
TARGET = "target"
"""In ``train_on``: the run's own language (``language``) in the run's data group (``data``)."""
APPLIES_TO = ("last", "all")


# ---- configs --------------------------------------------------------------------------------------------------


def language_config(language: str | Mapping[str, Any], key: str) -> DictConfig:
    """A language's config: ``conf/language/<code>.yaml`` for a code, the mapping itself otherwise.

    Raises:
        DataError: naming ``key`` when there is no such language config.
    """
    if isinstance(language, Mapping):
        if "code" not in language:
            raise DataError(f"{key}: a language mapping needs a `code`, got {dict(language)}")
        return OmegaConf.create(dict(language))
    path = LANGUAGES_DIR / f"{language}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in LANGUAGES_DIR.glob("*.yaml"))
        raise DataError(f"{key}: no language {language!r} (conf/language has {', '.join(known)})")
    return OmegaConf.load(path)


def with_language(cfg: DictConfig, language: DictConfig, data: Mapping[str, Any] | None = None) -> DictConfig:
    """A copy of ``cfg`` whose ``language`` (and, if given, ``data``) are replaced, so ``data`` resolves for it."""
    other = copy.deepcopy(cfg)
    with open_dict(other):
        other.language = language
        if data is not None:
            other.data = OmegaConf.create(dict(data))
    return other


def plain(node: Any) -> Any:
    """``node`` as plain Python, resolved."""
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def _without_cache_dir(tree: Any) -> Any:
    """``tree`` without its ``cache_dir`` keys (where a corpus is stored does not change the data)."""
    if isinstance(tree, dict):
        return {key: _without_cache_dir(value) for key, value in tree.items() if key != "cache_dir"}
    if isinstance(tree, list):
        return [_without_cache_dir(value) for value in tree]
    return tree


def placeholders(tree: Any, roots: Mapping[str, str]) -> Any:
    """``tree`` with every string starting with a ``roots`` value written as ``${<name>}...``, so that a key
    does not change when the data or cache folder moves (its content is keyed apart)."""
    if isinstance(tree, dict):
        return {key: placeholders(value, roots) for key, value in tree.items()}
    if isinstance(tree, list):
        return [placeholders(value, roots) for value in tree]
    if isinstance(tree, str):
        for name, root in roots.items():
            if root and (tree == root or tree.startswith(root.rstrip("/") + "/")):
                return "${" + name + "}" + tree[len(root.rstrip("/")) :]
    return tree


def path_roots(cfg: DictConfig) -> dict[str, str]:
    """``paths.data_dir`` and ``paths.cache_dir``, resolved (longest first, so a nested one wins)."""
    paths = plain(cfg.get("paths")) or {}
    roots = {f"paths.{name}": str(paths[name]) for name in ("cache_dir", "data_dir") if paths.get(name)}
    return dict(sorted(roots.items(), key=lambda item: -len(item[1])))


@dataclass(frozen=True)
class Source:
    """One training set of a stage.

    Attributes:
        part: the name its ids are namespaced with in a union (the language code, or ``<data>-<code>``).
        language: the language config (code, analyzer, ...), resolved.
        data: the data config (name, reader, ...), resolved for that language.
        split: the split trained on.
        is_target: the run's own language in the run's data group.
        cfg: the run's config with this language and data put in (its ``data`` builds the reader).
    """

    part: str
    language: dict[str, Any]
    data: dict[str, Any]
    split: str
    is_target: bool
    cfg: DictConfig = field(repr=False, compare=False)

    @property
    def code(self) -> str:
        """The language code."""
        return str(self.language["code"])

    @property
    def label(self) -> str:
        """``<data name>/<code>``, for logs and metrics.json."""
        return f"{self.data.get('name', 'data')}/{self.code}"

    def key(self, roots: Mapping[str, str] | None = None, content: str | None = None) -> dict[str, Any]:
        """What of this source shapes a stage trained on it: language, data config (paths under ``roots`` as
        placeholders), split and, where given, the split's ``content`` fingerprint."""
        key = {"language": self.code, "data": placeholders(_without_cache_dir(self.data), roots or {})}
        key["split"] = self.split
        if content is not None:
            key["content"] = content
        return key

    def load(self) -> RetrievalSplit:
        """Read the split."""
        return build_reader(self.cfg.data).load(self.split)


@dataclass(frozen=True)
class Stage:
    """One stage of a schedule, resolved against the run's config.

    Attributes:
        index: position in the schedule.
        name: for logs and metrics.json.
        sources: what it trains on (several: one union).
        epochs: training epochs.
        negatives: the stage's negatives config (the run's, with the stage's overrides and the proportion rule).
        own: the run's own stage (the last one, training on the run's language): trained in the run folder.
    """

    index: int
    name: str
    sources: tuple[Source, ...]
    epochs: int
    negatives: dict[str, Any]
    own: bool

    @property
    def hard_proportion(self) -> float:
        """The stage's share of mined hard negatives."""
        return float(self.negatives["hard_proportion"])


@dataclass(frozen=True)
class Schedule:
    """A run's stages, resolved (empty: zero-shot, the configured model is evaluated as it is)."""

    name: str
    proportion_applies_to: str
    stages: tuple[Stage, ...]

    @property
    def trains_on_target(self) -> bool:
        """Whether the last stage trains on the run's own language (in the run folder)."""
        return bool(self.stages) and self.stages[-1].own


def _source(cfg: DictConfig, entry: Any, key: str) -> Source:
    """One ``train_on`` entry, resolved."""
    target = cfg.language.code
    if isinstance(entry, str):
        entry = {"language": entry}
    elif isinstance(entry, DictConfig):
        entry = {
            "language": plain(entry.get("language")),
            # unresolved: resolved below in a config holding the source's own language
            "data": OmegaConf.to_container(entry.data, resolve=False) if entry.get("data") is not None else None,
            "split": entry.get("split"),
        }
    if not isinstance(entry, Mapping) or entry.get("language") is None:
        raise DataError(f"{key}: a source is a language code, `{TARGET}`, or a mapping with a `language`")
    data = entry.get("data")
    language_value = entry["language"]
    if language_value == TARGET:
        if data is not None:
            raise DataError(f"{key}: `{TARGET}` means the run's data group; give a language code with `data`")
        language = copy.deepcopy(cfg.language)
    else:
        language = language_config(language_value, f"{key}.language")
    source_cfg = with_language(cfg, language, data)
    split = entry.get("split") or source_cfg.data.get("train_split") or "train"
    try:
        resolved = plain(source_cfg.data)
        language_plain = plain(source_cfg.language)
    except Exception as error:  # noqa: BLE001 - an interpolation that does not resolve for this language
        raise DataError(f"{key}: its data config does not resolve: {error}") from error
    is_target = data is None and str(language_plain["code"]) == str(target)
    return Source(str(language_plain["code"]), language_plain, resolved, str(split), is_target, source_cfg)


def _parts(sources: list[Source]) -> list[Source]:
    """Name each source's namespace: its code, or ``<data name>-<code>`` where codes repeat."""
    codes = [source.code for source in sources]
    named = []
    for source in sources:
        part = source.code if codes.count(source.code) == 1 else f"{source.data.get('name', 'data')}-{source.code}"
        named.append(replace(source, part=part.replace("/", "-")))
    return named


def schedule(cfg: DictConfig) -> Schedule:
    """The run's schedule (``stage.stages``), resolved and checked.

    Raises:
        DataError: listing every problem, each naming its config key.
    """
    stage_cfg = cfg.get("stage")
    if stage_cfg is None:
        return Schedule("zero_shot", "last", ())
    name = str(stage_cfg.get("name", "schedule"))
    applies_to = str(stage_cfg.get("proportion_applies_to", "last"))
    problems: list[str] = []
    if applies_to not in APPLIES_TO:
        problems.append(f"stage.proportion_applies_to must be one of {list(APPLIES_TO)}, got {applies_to!r}")
    entries = stage_cfg.get("stages")
    if entries is None:
        entries = []
    if not isinstance(entries, ListConfig):
        problems.append(f"stage.stages must be a list of stages, got {type(entries).__name__}")
        entries = []
    run_negatives = plain(cfg.negatives)
    stages: list[Stage] = []
    for index, entry in enumerate(entries):
        key = f"stage.stages[{index}]"
        last = index == len(entries) - 1
        if not isinstance(entry, DictConfig):
            problems.append(f"{key} must be a mapping (name, train_on, epochs, negatives)")
            continue
        train_on = entry.get("train_on")
        if isinstance(train_on, (str, DictConfig)):
            train_on = [train_on]
        if not train_on:
            problems.append(f"{key}.train_on must name at least one source")
            continue
        sources: list[Source] = []
        for number, item in enumerate(train_on):
            try:
                sources.append(_source(cfg, item, f"{key}.train_on[{number}]"))
            except DataError as error:
                problems.append(str(error))
        if entry.get("exclude_target", False):
            sources = [source for source in sources if not source.is_target]
            if not sources and not problems:
                problems.append(f"{key}.train_on holds nothing but the run's language ({cfg.language.code}), excluded")
        labels = [source.label + ":" + source.split for source in sources]
        if len(set(labels)) != len(labels):
            problems.append(f"{key}.train_on names a source twice: {labels}")
        epochs = plain(entry.get("epochs", cfg.trainer.max_epochs))
        if isinstance(epochs, float) and epochs.is_integer():
            epochs = int(epochs)
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            problems.append(f"{key}.epochs must be an integer >= 1, got {epochs!r}")
        overrides = plain(entry.get("negatives")) or {}
        if not isinstance(overrides, dict):
            problems.append(f"{key}.negatives must be a mapping merged over `negatives`, got {overrides!r}")
            overrides = {}
        negatives = plain(OmegaConf.merge(run_negatives, overrides))
        takes_sweep = last or applies_to == "all"
        if takes_sweep:
            negatives["hard_proportion"] = run_negatives["hard_proportion"]
        elif "hard_proportion" not in overrides:
            problems.append(
                f"{key}.negatives.hard_proportion must be set: with stage.proportion_applies_to=last only the last "
                "stage takes negatives.hard_proportion"
            )
        proportion = negatives.get("hard_proportion")
        if isinstance(proportion, bool) or not isinstance(proportion, (int, float)) or not 0 <= proportion <= 1:
            problems.append(f"{key}.negatives.hard_proportion must be a number in [0, 1], got {proportion!r}")
        k = negatives.get("num_negatives")
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            problems.append(f"{key}.negatives.num_negatives must be an integer >= 0, got {k!r}")
        elif isinstance(proportion, (int, float)) and not isinstance(proportion, bool) and 0 <= proportion <= 1:
            problem = proportion_problem(float(proportion), k, f"{key}.negatives")
            same_as_run = (proportion, k) == (run_negatives["hard_proportion"], run_negatives["num_negatives"])
            if problem and not same_as_run:  # the run's own p and k: validation names them
                problems.append(problem)
        own = last and any(source.is_target for source in sources)
        stages.append(
            Stage(index, str(entry.get("name") or f"stage{index}"), tuple(_parts(sources)), epochs, negatives, own)
        )
    if problems:
        raise DataError(
            problems[0] if len(problems) == 1 else f"{len(problems)} problems with stage:\n  " + "\n  ".join(problems)
        )
    return Schedule(name, applies_to, tuple(stages))


def trains_on_target(cfg: DictConfig) -> bool:
    """Whether the run trains on its own language's training split (its last stage does)."""
    return cfg.get("stage") is not None and schedule(cfg).trains_on_target


# ---- evaluation languages -------------------------------------------------------------------------------------


def evaluation_languages(cfg: DictConfig) -> list[DictConfig]:
    """The languages a run is evaluated on: ``evaluation.languages``, else ``stage.evaluate_on``, else ``language``.

    Raises:
        DataError: naming the key of an unknown or repeated language.
    """
    evaluation = cfg.get("evaluation") or {}
    key, listed = "evaluation.languages", evaluation.get("languages")
    if listed is None and cfg.get("stage") is not None and cfg.stage.get("evaluate_on") is not None:
        key, listed = "stage.evaluate_on", cfg.stage.evaluate_on
    if listed is None:
        return [cfg.language]
    if isinstance(listed, str):
        listed = [listed]
    languages = []
    for number, item in enumerate(listed):
        value = plain(item)
        if value == cfg.language.code or value == TARGET:
            languages.append(cfg.language)
        else:
            languages.append(language_config(value, f"{key}[{number}]"))
    codes = [str(language.code) for language in languages]
    if not codes:
        raise DataError(f"{key} is empty: name at least one language (or leave it null for `language`)")
    if len(set(codes)) != len(codes):
        raise DataError(f"{key} names a language twice: {codes}")
    return languages


def evaluation_splits(cfg: DictConfig, test: RetrievalSplit) -> RetrievalSplit | dict[str, RetrievalSplit]:
    """``test`` when the run is evaluated on its own language only, else language code -> test split.

    Each other language's test split is read with the run's data group in that language and checked like the
    run's own (:func:`mdr.data.checks.test_split_problems`).
    """
    languages = evaluation_languages(cfg)
    if [str(language.code) for language in languages] == [str(cfg.language.code)]:
        return test
    splits: dict[str, RetrievalSplit] = {}
    for language in languages:
        code = str(language.code)
        if code == str(cfg.language.code):
            splits[code] = test
            continue
        other = with_language(cfg, language)
        split = build_reader(other.data).load(other.data.test_split)
        problems = test_split_problems(split, str(other.data.test_split))
        if problems:
            raise DataError(f"evaluation language {code}: {problems[0]}")
        splits[code] = split
    return splits


def low_resource(cfg: DictConfig, code: str) -> bool:
    """Whether language ``code`` is marked low-resource (the run's own config, else conf/language/<code>.yaml)."""
    if code == str(cfg.language.code):
        return bool(cfg.language.low_resource)
    return bool(language_config(code, "evaluation.languages").get("low_resource", False))
