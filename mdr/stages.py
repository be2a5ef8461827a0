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

The last stage is the run's own when it trains on the run's language: it trains in the run folder (resumable
there, its encoder saved to ``<run>/encoder``). Every other stage is cached under
``<paths.cache_dir>/stages/<key hash>/`` (``encoder/``, ``stage.json`` with its key, ``summary.json``), keyed by
everything that shapes it: the model (its settings and the content of its weight files, not its path), its
training data (the data configs with ``paths.*`` written as placeholders, and a fingerprint of the split's
queries, qrels and corpus content), negatives, epochs, train / loss / trainer settings, the resolved precision,
the seed and the key of the stage before it. A moved or copied cache is reused; edited training data or another
starting model trains again. Jobs of a sweep that need the same stage wait on a lock (:func:`mdr.utils.cache.
cache_lock`, which holds across nodes) and reuse it, so a stage is trained once per sweep however many cells
start from it. A reused encoder is checked against its manifest (sizes and checksums, :func:`mdr.utils.cache.
check_folder`) and trained again, with a warning, when it is not what was saved.

A union's query ids and docids are namespaced by part (:mod:`mdr.data.union`): each query draws its negatives
from its own language's corpus and pools.

A stage is trained by :mod:`mdr.training` (encoder, pools, fit); :mod:`mdr.pipeline` runs the schedule.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import uuid
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from mdr import training
from mdr.data.checks import test_split_problems
from mdr.data.negatives import proportion_problem
from mdr.data.schema import DataError, RetrievalSplit
from mdr.data.union import UnionSplit
from mdr.mining.pools import fingerprint as split_fingerprint
from mdr.models.bi_encoder import SETTINGS_FILE
from mdr.models.precision import resolve_precision
from mdr.run_folder import remove_checkpoints
from mdr.utils.cache import (
    LockBusy,
    cache_lock,
    check_folder,
    digests_dir,
    folder_digest,
    remove_stale_builds,
    staging_name,
    write_folder_manifest,
)
from mdr.utils.config_compat import drop_neutral_defaults
from mdr.utils.config_identity import left_out
from mdr.utils.instantiate import build_reader, ensure_model_files
from mdr.utils.io import atomic_write_json
from mdr.utils.logging import get_logger

log = get_logger(__name__)

LANGUAGES_DIR = Path(__file__).resolve().parents[1] / "conf" / "language"
"""``conf/language``: the language configs a stage or ``evaluation.languages`` names by code."""
TARGET = "target"
"""In ``train_on``: the run's own language (``language``) in the run's data group (``data``)."""
APPLIES_TO = ("last", "all")
TRAINER_KEYS_IGNORED = left_out("stage", "trainer")
"""Trainer settings left out of a stage key (:data:`mdr.utils.config_identity.IDENTITY`): epochs and the resolved
precision are keyed apart, and a cached stage is always trained by one process on one device (:func:`cached_stage`),
so a DDP run reuses it."""
TRAIN_KEYS_IGNORED = left_out("stage", "train")
"""``train`` settings left out of a stage key: none of them changes the encoder."""
MODEL_KEYS_IGNORED = left_out("stage", "model")
"""``model`` settings left out of a stage key: how a local model is built (its weights are keyed by content)."""


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


def _plain(node: Any) -> Any:
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


def _placeholders(tree: Any, roots: Mapping[str, str]) -> Any:
    """``tree`` with every string starting with a ``roots`` value written as ``${<name>}...``, so that a key
    does not change when the data or cache folder moves (its content is keyed apart)."""
    if isinstance(tree, dict):
        return {key: _placeholders(value, roots) for key, value in tree.items()}
    if isinstance(tree, list):
        return [_placeholders(value, roots) for value in tree]
    if isinstance(tree, str):
        for name, root in roots.items():
            if root and (tree == root or tree.startswith(root.rstrip("/") + "/")):
                return "${" + name + "}" + tree[len(root.rstrip("/")) :]
    return tree


def _roots(cfg: DictConfig) -> dict[str, str]:
    """``paths.data_dir`` and ``paths.cache_dir``, resolved (longest first, so a nested one wins)."""
    paths = _plain(cfg.get("paths")) or {}
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
        key = {"language": self.code, "data": _placeholders(_without_cache_dir(self.data), roots or {})}
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
            "language": _plain(entry.get("language")),
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
        resolved = _plain(source_cfg.data)
        language_plain = _plain(source_cfg.language)
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
    run_negatives = _plain(cfg.negatives)
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
        epochs = _plain(entry.get("epochs", cfg.trainer.max_epochs))
        if isinstance(epochs, float) and epochs.is_integer():
            epochs = int(epochs)
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            problems.append(f"{key}.epochs must be an integer >= 1, got {epochs!r}")
        overrides = _plain(entry.get("negatives")) or {}
        if not isinstance(overrides, dict):
            problems.append(f"{key}.negatives must be a mapping merged over `negatives`, got {overrides!r}")
            overrides = {}
        negatives = _plain(OmegaConf.merge(run_negatives, overrides))
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


# ---- cache keys -----------------------------------------------------------------------------------------------


SplitMemo = dict[tuple[str, str], RetrievalSplit]
"""Training splits read for keys, by (source label, split), so training does not read them again."""


def model_identity(cfg: DictConfig) -> str:
    """The starting model's identity: ``folder:<digest of its files>`` for a local folder (built first where the
    model group builds it), else the hub id. Digests are remembered under ``<paths.cache_dir>/digests``."""
    name = str(cfg.model.name_or_path)
    if cfg.model.get("build") is not None:
        ensure_model_files(cfg.model)
    path = Path(name)
    if path.is_dir():
        return f"folder:{folder_digest(path, digests_dir(cfg.paths.cache_dir))}"
    return name


def _negatives_identity(cfg: DictConfig, negatives: dict[str, Any]) -> dict[str, Any]:
    """``negatives`` with a dense miner's encoder folder and a denoising teacher folder written as the digest of
    their files: a retrained encoder re-keys the stage, a moved one does not (model groups and hub ids stay names)."""
    result = copy.deepcopy(negatives)
    for section, key in (("pool", "encoder"), ("denoise", "teacher")):
        value = (result.get(section) or {}).get(key)
        if value and Path(str(value)).is_dir():
            result[section][key] = f"folder:{folder_digest(Path(str(value)), digests_dir(cfg.paths.cache_dir))}"
    return result


def source_content(source: Source, splits: SplitMemo | None = None, target_train: RetrievalSplit | None = None) -> str:
    """The content fingerprint (queries, qrels, corpus) of ``source``'s training split, read once into ``splits``."""
    memo = splits if splits is not None else {}
    slot = (source.label, source.split)
    if slot not in memo:
        memo[slot] = target_train if source.is_target and target_train is not None else source.load()
    return split_fingerprint(memo[slot])


def stage_key(
    cfg: DictConfig,
    stage: Stage,
    previous: str | None,
    splits: SplitMemo | None = None,
    target_train: RetrievalSplit | None = None,
    model: str | None = None,
    content: bool = True,
) -> dict[str, Any]:
    """Everything that shapes a stage's encoder (not its name, nor the target language unless trained on).

    Content, not places: the starting model is keyed by its weights (:func:`model_identity`, ``model``), each
    source by its split's content fingerprint (:func:`source_content`), and paths under ``paths.data_dir`` /
    ``paths.cache_dir`` are written as placeholders. ``content=False`` leaves the data's content out (reads
    nothing: for comparing configs only, never for finding a cached stage).
    """
    roots = _roots(cfg)
    settings = _placeholders(_plain(cfg.model), roots)
    for key in MODEL_KEYS_IGNORED:
        settings.pop(key, None)
    settings["name_or_path"] = model if model is not None else model_identity(cfg)
    trainer = {k: v for k, v in _plain(cfg.trainer).items() if k not in TRAINER_KEYS_IGNORED}
    train_on = [
        source.key(roots, source_content(source, splits, target_train) if content else None) for source in stage.sources
    ]
    return {
        "model": settings,
        "previous": previous,
        "train_on": train_on,
        "epochs": stage.epochs,
        "negatives": _placeholders(_negatives_identity(cfg, stage.negatives), roots),
        "train": drop_neutral_defaults(
            {"train": {k: v for k, v in _plain(cfg.train).items() if k not in TRAIN_KEYS_IGNORED}}
        )["train"],
        "loss": _plain(cfg.loss),
        "trainer": trainer,
        "precision": resolve_precision(str(cfg.trainer.precision), str(cfg.trainer.accelerator)),
        "seed": int(cfg.seed),
    }


def key_digest(key: Mapping[str, Any]) -> str:
    """A 16-hex-digit hash of a stage key."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage_keys(
    cfg: DictConfig,
    plan: Schedule,
    splits: SplitMemo | None = None,
    target_train: RetrievalSplit | None = None,
    content: bool = True,
) -> list[tuple[dict[str, Any], str]]:
    """(key, digest) of every stage, each chained to the one before.

    Reads each stage's training splits for their content fingerprints (into ``splits`` when given, so that
    training reuses them; ``target_train`` stands for the run's own). ``content=False``: config only
    (:func:`stage_key`).
    """
    keys: list[tuple[dict[str, Any], str]] = []
    previous = None
    model = model_identity(cfg) if plan.stages else None
    for stage in plan.stages:
        key = stage_key(cfg, stage, previous, splits, target_train, model, content)
        previous = key_digest(key)
        keys.append((key, previous))
    return keys


def stage_dir(cfg: DictConfig, digest: str) -> Path:
    """``<paths.cache_dir>/stages/<digest>``."""
    return Path(cfg.paths.cache_dir) / "stages" / digest


# ---- running --------------------------------------------------------------------------------------------------


@dataclass
class StageRun:
    """A stage just trained: its encoder, tokenizer, fit summary and negatives record."""

    encoder: Any
    tokenizer: Any
    summary: dict[str, Any]
    denoise: Any
    is_global_zero: bool
    world_size: int = 1


def stage_config(cfg: DictConfig, stage: Stage, out: Path, own: bool) -> DictConfig:
    """The config ``fit`` gets for ``stage``: its epochs and negatives, its single source's language and data."""
    stage_cfg = copy.deepcopy(stage.sources[0].cfg if len(stage.sources) == 1 else cfg)
    with open_dict(stage_cfg):
        stage_cfg.negatives = OmegaConf.create(stage.negatives)
        stage_cfg.trainer.max_epochs = stage.epochs
        if not own:
            stage_cfg.paths.output_dir = str(out)
            stage_cfg.logger.wandb.enabled = False
    return stage_cfg


def training_data(
    stage_cfg: DictConfig,
    stage: Stage,
    target_train: RetrievalSplit | None,
    splits: SplitMemo | None = None,
) -> tuple[RetrievalSplit | UnionSplit, Mapping[str, list[str]], Any]:
    """The stage's training split (a :class:`UnionSplit` for several sources), its pools and denoise record.

    Splits already read for the stage's key are taken from ``splits``.
    """
    loaded = []
    for source in stage.sources:
        if splits is not None and (source.label, source.split) in splits:
            split = splits[(source.label, source.split)]
        else:
            split = target_train if source.is_target and target_train is not None else source.load()
        log.info("stage %s: %s %s, %d queries", stage.name, source.label, source.split, len(split.queries))
        pools = training.negative_pools(stage_cfg, split, OmegaConf.create(source.language))
        loaded.append((source, split, pools))
    if len(loaded) == 1:
        _, split, pools = loaded[0]
        denoised = getattr(pools, "denoise", None)
        return split, pools, denoised.as_dict() if denoised is not None else None
    from mdr.mining.denoise import NegativePools

    union = UnionSplit([(source.part, split) for source, split, _ in loaded])
    merged = NegativePools()
    denoise: dict[str, Any] = {}
    for source, _, pools in loaded:
        merged.update(UnionSplit.namespace_pools(source.part, pools))
        if getattr(pools, "denoise", None) is not None:
            denoise[source.part] = pools.denoise.as_dict()
    return union, merged, denoise or None


def run_stage(
    cfg: DictConfig,
    stage: Stage,
    start: str | None,
    out: Path,
    target_train: RetrievalSplit | None = None,
    splits: SplitMemo | None = None,
) -> StageRun:
    """Train one stage from ``start`` (an encoder folder; None: the configured model) in ``out``.

    ``fit`` resumes from ``out/checkpoints/last.ckpt`` when a killed attempt left one.
    """
    stage_cfg = stage_config(cfg, stage, out, stage.own)
    data, pools, denoise = training_data(stage_cfg, stage, target_train, splits)
    encoder, tokenizer = training.load_encoder(stage_cfg, start)
    fitted = training.fit(stage_cfg, encoder, tokenizer, data, pools, out)
    trainer = fitted["trainer"]
    return StageRun(
        encoder, tokenizer, fitted["summary"], denoise, bool(trainer.is_global_zero), int(trainer.world_size)
    )


def cached_stage(
    cfg: DictConfig,
    stage: Stage,
    key: dict[str, Any],
    digest: str,
    start: str | None,
    splits: SplitMemo | None = None,
    wait: bool = True,
) -> tuple[Path, str, dict[str, Any] | None]:
    """(encoder folder, ``trained``, ``reused`` or ``busy``, summary) of a cached stage, trained now unless found.

    Jobs needing the same stage wait on ``<dir>/.lock`` (:func:`mdr.utils.cache.cache_lock`: it holds across
    nodes, so two jobs never train into one ``run/``); the encoder is saved with a manifest to
    ``.encoder.tmp-<host>-<pid>`` and renamed, so a folder with ``encoder/`` is complete. A found encoder is
    reused only when ``stage.json`` holds this key and the encoder matches its manifest (sizes, and every byte up
    to :data:`mdr.utils.cache.FULL_CHECK_BYTES`); otherwise the reason is logged and the stage is trained again.
    With ``wait=False`` (``run.stages_only``) a stage another job holds is left to it: ``busy``, nothing trained.
    """
    root = stage_dir(cfg, digest)
    encoder_dir = root / "encoder"
    root.mkdir(parents=True, exist_ok=True)
    waiting = f"stage {stage.name}: another job is training {root}; waiting for it"
    with ExitStack() as held:
        try:  # a second job of the sweep waits here, then reuses the result
            held.enter_context(cache_lock(root / ".lock", waiting, wait=wait))
        except LockBusy:
            log.info("stage %s: another job is training %s; left to it (run.stages_only)", stage.name, root)
            return encoder_dir, "busy", None
        if (encoder_dir / SETTINGS_FILE).is_file():
            problem = _reuse_problem(root, key)
            if problem is None:
                log.info("stage %s: reusing %s", stage.name, encoder_dir)
                return encoder_dir, "reused", _summary(root)
            log.warning("stage %s: %s cannot be reused (%s): training the stage again", stage.name, root, problem)
            aside = root / f".encoder.broken-{uuid.uuid4().hex[:8]}"
            encoder_dir.rename(aside)  # a job loading it keeps its open files
            shutil.rmtree(aside, ignore_errors=True)
        if not one_process(cfg):  # its ranks would wait on this lock for each other
            raise DataError(
                f"stage {stage.name} ({root}) is not cached yet, and cached stages are trained by one process on one "
                "device: run the same command once with trainer=gpu (trainer=cpu on CPU) in place of trainer=ddp and "
                "without trainer.devices / trainer.num_nodes (with launcher=slurm its jobs then ask for one task and "
                "one GPU; not inside a multi-task allocation, whose tasks per node must equal trainer.devices), then "
                "this run reuses it"
            )
        atomic_write_json(root / "stage.json", {"name": stage.name, "key": key})
        log.info("stage %s: training on %s -> %s", stage.name, ", ".join(s.label for s in stage.sources), root)
        trained = run_stage(cfg, stage, start, root / "run", splits=splits)
        if not trained.is_global_zero:
            raise RuntimeError(
                f"stage {stage.name} is cached and must be trained before DDP spawns: train it first with trainer=gpu "
                "(one process, one device), then rerun"
            )
        remove_stale_builds(root, ".encoder.tmp*")  # saves of killed jobs (legacy '.encoder.tmp' included)
        staging = root / staging_name(".encoder")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            trained.encoder.save_pretrained(staging, trained.tokenizer)
            write_folder_manifest(staging)
            summary = {**trained.summary, "denoise": trained.denoise}
            atomic_write_json(root / "summary.json", summary)
            staging.rename(encoder_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        remove_checkpoints(cfg, root / "run", encoder_dir)  # later jobs reuse the encoder, never resume
        return encoder_dir, "trained", summary


def _reuse_problem(root: Path, key: Mapping[str, Any]) -> str | None:
    """Why the stage at ``root`` cannot be reused for ``key``, or None."""
    try:
        recorded = json.loads((root / "stage.json").read_text(encoding="utf-8")).get("key")
    except (OSError, ValueError, AttributeError) as error:
        return f"{root / 'stage.json'} cannot be read ({error})"
    if json.loads(json.dumps(recorded, sort_keys=True, default=str)) != json.loads(
        json.dumps(key, sort_keys=True, default=str)
    ):
        return f"{root / 'stage.json'} holds another key than this run's"
    return check_folder(root / "encoder", "auto")


def one_process(cfg: DictConfig) -> bool:
    """Whether the trainer runs as a single process on one device (no DDP)."""
    trainer = cfg.trainer
    devices = trainer.get("devices", 1)
    count = len(devices) if isinstance(devices, (list, ListConfig)) else devices
    if str(count) == "auto":
        count = 1 if str(trainer.get("accelerator")) == "cpu" else "auto"
    return str(count) == "1" and int(trainer.get("num_nodes") or 1) == 1


def _summary(root: Path) -> dict[str, Any] | None:
    path = root / "summary.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        log.warning("%s cannot be read (%s): the stage's training summary is left out", path, error)
        return None


@dataclass
class ScheduleResult:
    """What the schedule left to evaluate.

    Attributes:
        encoder / tokenizer: the final encoder (the configured model for zero-shot).
        extra: metrics.json fields: ``train`` (the final stage's training summary), ``initialised_from`` (the
            encoder the final stage started from), ``encoder`` (the evaluated encoder's folder), ``denoised`` /
            ``denoise``, ``proportion_applies_to`` and ``schedule`` (one record per stage).
    """

    encoder: Any
    tokenizer: Any
    extra: dict[str, Any]
    distributed: bool = False


def _record(stage: Stage, digest: str) -> dict[str, Any]:
    return {
        "name": stage.name,
        "train_on": [f"{source.label}:{source.split}" for source in stage.sources],
        "epochs": stage.epochs,
        "hard_proportion": stage.hard_proportion,
        "num_negatives": int(stage.negatives["num_negatives"]),
        "pool": (stage.negatives.get("pool") or {}).get("source"),
        "key": digest,
        "dir": None,
        "status": None,
        "train": None,
    }


def run_schedule(
    cfg: DictConfig, out: Path, target_train: RetrievalSplit | None = None
) -> ScheduleResult:
    """Run the schedule's stages in order; return the final encoder (on every DDP rank).

    After a DDP fit every rank gets a result with ``distributed=True``: each evaluates its shards of the corpus
    (:func:`mdr.run_evaluation.evaluate_and_report`); only rank 0 saves the encoder and writes files.

    Cached stages come first (trained or reused); the run's own stage trains in ``out`` and, with
    ``train.save_encoder``, is saved to ``out/encoder``. Each record's ``status`` is ``trained`` or ``reused``
    (cached stages) or ``run`` (the run's own).

    Args:
        target_train: the run's own training split, already read (``mdr.pipeline.load_splits``), or None.
    """
    plan = schedule(cfg)
    splits: SplitMemo = {}
    keys = stage_keys(cfg, plan, splits, target_train)
    records = [_record(stage, digest) for stage, (_, digest) in zip(plan.stages, keys)]
    extra: dict[str, Any] = {
        "train": None,
        "initialised_from": None,
        "encoder": None,
        "denoised": False,
        "denoise": None,
        "proportion_applies_to": plan.proportion_applies_to,
        "schedule": {"name": plan.name, "proportion_applies_to": plan.proportion_applies_to, "stages": records},
    }
    start: str | None = None
    summary: dict[str, Any] | None = None
    for stage in (stage for stage in plan.stages if not stage.own):
        key, digest = keys[stage.index]
        encoder_dir, status, summary = cached_stage(cfg, stage, key, digest, start, splits)
        records[stage.index].update(dir=str(stage_dir(cfg, digest)), status=status, train=summary)
        extra["initialised_from"] = start
        start = str(encoder_dir)
    if not plan.stages:  # zero-shot
        encoder, tokenizer = training.load_encoder(cfg, None)
        return ScheduleResult(encoder, tokenizer, extra)
    last = plan.stages[-1]
    if not last.own:  # the final stage is cached: evaluate its encoder
        encoder, tokenizer = training.load_encoder(cfg, start)
        denoise = (summary or {}).get("denoise")
        extra.update(train=summary, encoder=start, denoised=denoise is not None, denoise=denoise)
        return ScheduleResult(encoder, tokenizer, extra)
    trained = run_stage(cfg, last, start, out, target_train, splits)
    distributed = trained.world_size > 1
    if not trained.is_global_zero:
        return ScheduleResult(trained.encoder, trained.tokenizer, extra, distributed)
    records[-1].update(status="run", train=trained.summary)
    extra.update(train=trained.summary, initialised_from=start, denoised=trained.denoise is not None)
    extra["denoise"] = trained.denoise
    if cfg.train.save_encoder:
        trained.encoder.save_pretrained(out / "encoder", trained.tokenizer)
        extra["encoder"] = str(out / "encoder")
    return ScheduleResult(trained.encoder, trained.tokenizer, extra, distributed)


def train_cached_stages(cfg: DictConfig) -> dict[str, Any]:
    """``run.stages_only``: train (or find) the run's cached stages in order, nothing else; return their records.

    A pass of this over a sweep's command trains each distinct cached stage in one job: a stage another job
    holds is not waited for (``busy``, and the later stages of this run are left for the run itself), so no
    job holds a device waiting on a stage lock. The run's own stage, evaluation and ``metrics.json`` are left
    to the normal run of the same command, which then reuses the cache.
    """
    plan = schedule(cfg)
    splits: SplitMemo = {}
    keys = stage_keys(cfg, plan, splits)
    records = [_record(stage, digest) for stage, (_, digest) in zip(plan.stages, keys)]
    start: str | None = None
    for stage in (stage for stage in plan.stages if not stage.own):
        key, digest = keys[stage.index]
        encoder_dir, status, summary = cached_stage(cfg, stage, key, digest, start, splits, wait=False)
        records[stage.index].update(dir=str(stage_dir(cfg, digest)), status=status, train=summary)
        if status == "busy":
            break
        start = str(encoder_dir)
    done = [record for record in records if record["status"] is not None]
    return {"stages_only": True, "schedule": {"name": plan.name, "stages": done}}


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
        value = _plain(item)
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
