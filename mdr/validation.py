"""One validation pass over config and data before any expensive step (mining, building, training).

:func:`validate` checks the config alone (types and ranges of every value the pipeline reads, and that the
model, checkpoint and dense-mining encoder named exist); :func:`validate_splits` checks the data the reader
loaded (``mdr.pipeline.load_splits``, read once and passed on). Every problem is reported at once, each
naming its config key, as a :class:`mdr.data.schema.DataError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from mdr.data.negatives import num_hard
from mdr.data.schema import DataError, RetrievalSplit
from mdr.utils.instantiate import build_target_problem
from mdr.utils.logging import get_logger

log = get_logger(__name__)

_ABSENT = object()


class _Checker:
    """Collects problems; each check reads one dotted key of the config."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.problems: list[str] = []

    def value(self, key: str) -> Any:
        """The resolved value at ``key``; ``_ABSENT`` if the config has no such key (or a problem was noted)."""
        try:
            found = OmegaConf.select(self.cfg, key, default=_ABSENT, throw_on_missing=True)
        except MissingMandatoryValue:
            self.problems.append(f"{key} must be set (it is ???)")
            return _ABSENT
        except OmegaConfBaseException as error:
            self.problems.append(f"{key} cannot be resolved: {error}")
            return _ABSENT
        return found

    def integer(self, key: str, minimum: int, allowed: tuple[int, ...] = ()) -> int | None:
        """An int >= ``minimum`` (or one of ``allowed``); 2.5, "2" and true are errors, 2.0 is 2."""
        value = self.value(key)
        if value is _ABSENT:
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            self.problems.append(f"{key} must be an integer >= {minimum}, got {value!r}")
            return None
        if value < minimum and value not in allowed:
            extra = f" (or {', '.join(map(str, allowed))})" if allowed else ""
            self.problems.append(f"{key} must be an integer >= {minimum}{extra}, got {value}")
            return None
        return value

    def number(
        self, key: str, low: float | None = None, high: float | None = None, low_open: bool = False
    ) -> float | None:
        """A real number within [low, high] (``(low, high]`` when ``low_open``); strings and bools are errors."""
        value = self.value(key)
        if value is _ABSENT:
            return None
        if low is not None and high is not None:
            bounds = f" in {'(' if low_open else '['}{low:g}, {high:g}]"
        elif low is not None:
            bounds = f" {'>' if low_open else '>='} {low:g}"
        else:
            bounds = ""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:  # NaN != NaN
            self.problems.append(f"{key} must be a number{bounds}, got {value!r}")
            return None
        too_low = low is not None and (value <= low if low_open else value < low)
        if too_low or (high is not None and value > high):
            self.problems.append(f"{key} must be{bounds}, got {value}")
            return None
        return float(value)

    def choice(self, key: str, allowed: tuple[Any, ...]) -> Any:
        """One of ``allowed`` (of the same type: 1 is not true)."""
        value = self.value(key)
        if value is _ABSENT:
            return None
        if not any(value == option and type(value) is type(option) for option in allowed):
            self.problems.append(f"{key} must be one of {list(allowed)}, got {value!r}")
            return None
        return value

    def boolean(self, key: str) -> None:
        """true or false."""
        value = self.value(key)
        if value is not _ABSENT and not isinstance(value, bool):
            self.problems.append(f"{key} must be true or false, got {value!r}")

    def has(self, key: str) -> bool:
        """Whether the config has ``key`` at all."""
        return OmegaConf.select(self.cfg, key, default=_ABSENT, throw_on_missing=False) is not _ABSENT


def model_source_problem(key: str, value: Any, saved_encoder: bool = False) -> str | None:
    """Why ``value`` (the config value at ``key``) is not a loadable model, or None.

    A local folder must hold ``config.json`` (or ``query_encoder/config.json``, a two-tower save); a value
    that does not look like a path is taken as a hub id, found in the local hub cache or checked by fetching
    its config only.
    ``saved_encoder`` requires a local folder (``checkpoint=`` is a train.py ``encoder/`` folder).
    """
    if value is None or str(value).strip() == "":
        return f"{key} must name a model folder{'' if saved_encoder else ' or hub id'}, got {value!r}"
    text = str(value)
    path = Path(text).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file() or (path / "query_encoder" / "config.json").is_file():
            return None
        return f"{key}={text!r} is a folder but not a saved model (no config.json in it)"
    looks_local = saved_encoder or path.exists() or text.startswith(("/", ".", "~")) or text.count("/") > 1
    if looks_local:
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


def _negatives(check: _Checker) -> None:
    """The run's ``negatives`` group (a key the config lacks is skipped, as by every check)."""
    check.integer("negatives.num_negatives", 0)
    check.number("negatives.hard_proportion", 0.0, 1.0)
    check.boolean("negatives.strict")
    pool = "negatives.pool"
    source = check.choice(f"{pool}.source", ("bm25", "dense", "shipped"))
    check.choice(f"{pool}.backend", ("bm25s", "pyserini"))
    depth = check.integer(f"{pool}.depth", 1)
    low = check.integer(f"{pool}.range_min", 0)
    if check.value(f"{pool}.range_max") is not None:
        high = check.integer(f"{pool}.range_max", 1)
        if high is not None and low is not None and high <= low:
            check.problems.append(f"{pool}.range_max ({high}) must be above {pool}.range_min ({low})")
        if depth is not None and low is not None and low >= depth:
            check.problems.append(f"{pool}.range_min ({low}) must be below {pool}.depth ({depth})")
    if check.value(f"{pool}.margin") is not None:
        check.number(f"{pool}.margin")
    if source == "dense":  # checked whatever p is, so every cell of a sweep fails alike
        problem = model_source_problem(f"{pool}.encoder", check.value(f"{pool}.encoder"))
        if problem:
            check.problems.append(problem)


def config_problems(cfg: DictConfig) -> list[str]:
    """Every problem with the config's values, each naming its key (empty when there is none)."""
    check = _Checker(cfg)
    check.integer("seed", -(2**63))
    for key, allowed in (("run.on_config_change", ("refuse", "fresh")), ("run.on_complete", ("skip", "fresh"))):
        if check.has(key):
            check.choice(key, allowed)
    check.boolean("run.keep_checkpoints")
    check.integer("model.query_max_length", 1)
    check.integer("model.passage_max_length", 1)
    check.choice("model.pooling", ("cls", "mean"))
    check.boolean("model.normalize")
    check.boolean("model.shared")
    if check.has("evaluation"):
        check.integer("evaluation.depth", 1)
        check.integer("evaluation.batch_size", 1)
        check.choice("evaluation.faiss_gpu", ("auto", True, False))
    checkpoint = check.value("checkpoint") if check.has("checkpoint") else None
    if checkpoint not in (None, _ABSENT):
        problem = model_source_problem("checkpoint", checkpoint, saved_encoder=True)
    else:
        model = check.value("model")
        problem = build_target_problem(model) if isinstance(model, DictConfig) else None
        if problem is None and isinstance(model, DictConfig) and model.get("build") is None:
            problem = model_source_problem("model.name_or_path", check.value("model.name_or_path"))
    if problem:
        check.problems.append(problem)
    if check.has("train"):  # train.py
        check.integer("train.batch_size", 1)
        check.number("train.learning_rate", 0.0, None, low_open=True)
        check.number("train.weight_decay", 0.0)
        check.number("train.warmup_ratio", 0.0, 1.0)
        check.integer("trainer.max_epochs", 1, allowed=(-1,))
        check.number("model.temperature", 0.0, None, low_open=True)
        _negatives(check)  # the stage schedule's own keys are checked by mdr.stages.schedule
    if check.value("logger.progress.every_n_steps") is not None:  # null: no step trigger
        check.integer("logger.progress.every_n_steps", 1)
    if check.value("logger.progress.every_seconds") is not None:  # null: no time trigger
        check.number("logger.progress.every_seconds", 0.0, None, low_open=True)
    return check.problems


def _fail(problems: list[str]) -> None:
    if len(problems) == 1:
        raise DataError(problems[0])
    if problems:
        raise DataError(f"{len(problems)} problems with the config:\n  " + "\n  ".join(problems))


def validate(cfg: DictConfig) -> None:
    """Check the config before anything is read, built or trained.

    Raises:
        DataError: naming the config key of every problem found.
    """
    _fail(config_problems(cfg))


def _relevant(split: RetrievalSplit) -> dict[str, list[str]]:
    """query_id -> positives, for the split's queries that have at least one."""
    return {qid: pos for qid in split.queries if (pos := split.positives(qid))}


def split_problems(cfg: DictConfig, train: RetrievalSplit | None, test: RetrievalSplit) -> list[str]:
    """Problems of the loaded data with this config, each naming the config key it concerns."""
    problems: list[str] = []
    test_name = OmegaConf.select(cfg, "data.test_split", default="test")
    judged = _relevant(test)
    if not judged:
        problems.append(
            f"data.test_split={test_name!r}: none of its {len(test.queries)} queries has a relevant passage in "
            f"the qrels ({len(test.qrels)} judged query ids): there is nothing to evaluate"
        )
    elif len(judged) < len(test.queries):
        missing = len(test.queries) - len(judged)
        log.info("test split %s: %d of %d queries have no relevant passage", test_name, missing, len(test.queries))
    if train is None:
        return problems
    train_name = OmegaConf.select(cfg, "data.train_split", default="train")
    usable = _relevant(train)
    if not usable:
        problems.append(
            f"data.train_split={train_name!r}: none of its {len(train.queries)} queries has a relevant passage: "
            "nothing to train on"
        )
        return problems
    if len(usable) < len(train.queries):
        log.warning(
            "training split %s: %d of %d queries have no relevant passage and are skipped",
            train_name,
            len(train.queries) - len(usable),
            len(train.queries),
        )
    k = int(cfg.negatives.num_negatives)
    worst = max(usable, key=lambda qid: (len(usable[qid]), qid))
    room = len(train.corpus) - len(usable[worst])
    if k > room:
        problems.append(
            f"negatives.num_negatives={k} is more than the training corpus can supply: it has {len(train.corpus)} "
            f"passages and query {worst!r} has {len(usable[worst])} positive(s), leaving {room}"
        )
    hard = num_hard(float(cfg.negatives.hard_proportion), k)
    if hard and cfg.negatives.pool.source == "shipped" and not train.shipped_negatives:
        problems.append(
            f"negatives.pool.source=shipped but data={cfg.data.name} ships no negative passages for "
            f"{train_name!r} (use negatives=bm25, or hard_proportion=0)"
        )
    return problems


def validate_splits(cfg: DictConfig, train: RetrievalSplit | None, test: RetrievalSplit) -> None:
    """Check the loaded splits against the config (run after :func:`validate`, before mining or training).

    Raises:
        DataError: naming the config key of every problem found.
    """
    _fail(split_problems(cfg, train, test))
