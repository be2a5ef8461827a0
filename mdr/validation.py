"""One validation pass over config and data before any expensive step (mining, building, training).

:func:`validate` checks the config alone (types and ranges of every value the pipeline reads, and that the
model, checkpoint and dense-mining encoder named exist); :func:`validate_splits` checks the data the reader
loaded (``mdr.pipeline.load_splits``, read once and passed on). Every problem is reported at once, each
naming its config key, as a :class:`mdr.data.schema.DataError`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from mdr.data.checks import test_split_problems, train_split_problems
from mdr.data.negatives import proportion_problem
from mdr.data.schema import DataError, RetrievalSplit
from mdr.evaluation.metrics import MIN_DEPTH
from mdr.mining.tokenize import TOKENIZERS, tokenizer_version
from mdr.utils.allocator import MAX_RETAIN_MB
from mdr.utils.cache import settings_problems as cache_settings_problems
from mdr.utils.instantiate import build_target_problem

_ABSENT = object()

MAX_SEED = 2**32 - 1
"""The largest seed numpy (and so ``lightning.seed_everything``) takes."""

ZERO_SHOT = "zero_shot"
"""The one stage name an empty ``stage.stages`` may carry (``conf/stage/zero_shot.yaml``)."""


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

    def integer(self, key: str, minimum: int, allowed: tuple[int, ...] = (), maximum: int | None = None) -> int | None:
        """An int >= ``minimum`` (or one of ``allowed``) and <= ``maximum``; 2.5, "2" and true are errors, 2.0 is 2."""
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
        if maximum is not None and value > maximum:
            self.problems.append(f"{key} must be an integer in [{minimum}, {maximum}], got {value}")
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

    def optional_integer(self, key: str, minimum: int) -> int | None:
        """null, or an int >= ``minimum``."""
        value = self.value(key)
        if value is None or value is _ABSENT:
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.problems.append(f"{key} must be null or an integer >= {minimum}, got {value!r}")
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
    backend = check.choice(f"{pool}.backend", ("bm25s", "pyserini"))
    tokenizer = check.choice(f"{pool}.tokenizer", TOKENIZERS)
    if tokenizer not in (None, "default") and backend == "pyserini":
        check.problems.append(f"{pool}.tokenizer={tokenizer} is for backend=bm25s (pyserini uses its analyzer)")
    if tokenizer == "thai_words":
        try:
            tokenizer_version(tokenizer)
        except RuntimeError as error:
            check.problems.append(str(error))
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
    check.optional_integer(f"{pool}.threads", 1)  # null: the CPUs this process may use
    _denoise(check)
    if source == "dense":  # checked whatever p is, so every cell of a sweep fails alike
        problem = model_source_problem(f"{pool}.encoder", check.value(f"{pool}.encoder"))
        if problem:
            check.problems.append(problem)


DENOISE_KEYS = ("enabled", "teacher", "relative_margin", "batch_size")


def _denoise(check: _Checker) -> None:
    """``negatives.denoise`` (absent: off)."""
    node = check.value("negatives.denoise")
    if node is _ABSENT or node is None:
        return
    if not isinstance(node, DictConfig):
        check.problems.append(f"negatives.denoise must be a mapping of {list(DENOISE_KEYS)}, got {node!r}")
        return
    unknown = sorted(set(node.keys()) - set(DENOISE_KEYS))
    if unknown:
        check.problems.append(f"negatives.denoise: unknown keys {unknown} (known: {list(DENOISE_KEYS)})")
    check.boolean("negatives.denoise.enabled")
    check.number("negatives.denoise.relative_margin", 0.0, 0.5)
    check.integer("negatives.denoise.batch_size", 1)
    teacher = check.value("negatives.denoise.teacher")
    if teacher is not _ABSENT and (not isinstance(teacher, str) or not teacher.strip()):
        check.problems.append(
            f"negatives.denoise.teacher must name a model group (me5_small) or an encoder folder, got {teacher!r}"
        )


def _labels(check: _Checker) -> None:
    """Configs whose metrics.json would name something that did not run (a stage, a share of hard negatives)."""
    if check.has("stage"):
        name, stages = check.value("stage.name"), check.value("stage.stages")
        if stages in (None, _ABSENT) or (isinstance(stages, ListConfig) and len(stages) == 0):
            if name != ZERO_SHOT:
                check.problems.append(
                    f"stage.stages is empty, so nothing would be trained, but stage.name is {name!r}: the run would be "
                    f"recorded as {name!r}; use stage={ZERO_SHOT} to evaluate the starting model as it is"
                )
    if check.has("evaluation") and check.has("data"):
        label, evaluated = check.value("evaluation.split"), check.value("data.test_split")
        if label not in (_ABSENT, None) and evaluated not in (_ABSENT, None) and str(label) != str(evaluated):
            check.problems.append(
                f"evaluation.split={label} but data.test_split={evaluated} is the split evaluated: metrics.json would "
                f"label {evaluated} results as {label}; set data.test_split={label} (evaluation.split follows it)"
            )
    k, proportion = check.value("negatives.num_negatives"), check.value("negatives.hard_proportion")
    numeric = isinstance(proportion, (int, float)) and not isinstance(proportion, bool)
    if k == 0 and numeric and proportion > 0:
        check.problems.append(
            f"negatives.num_negatives=0 trains on in-batch negatives only, so negatives.hard_proportion={proportion} "
            "would label a run that used no hard negative; set negatives.hard_proportion=0 (or num_negatives >= 1)"
        )
    elif numeric and isinstance(k, int) and not isinstance(k, bool) and 0 <= proportion <= 1:
        problem = proportion_problem(float(proportion), k)
        if problem:
            check.problems.append(problem)


GPU_ACCELERATORS = ("gpu", "cuda")
WANDB_MODES = ("offline", "online", "shared", "disabled", "dryrun", "run")
LOCAL_DDP_MULTIRUN = (
    "a multirun (-m) with {devices} processes per node on the {launcher} launcher: Lightning starts the extra ranks "
    "by re-running this command line, sweep and all, so they would train other cells than rank 0. Use "
    "launcher=slurm (its tasks_per_node follows trainer.devices: each task of a job is one rank of one cell), or run "
    "one cell per command without -m (python train.py trainer=ddp trainer.devices={devices} <the cell's overrides>)"
)


def cuda_device_count() -> int:
    """CUDA devices this process sees (0 without a CUDA build of torch or without a driver)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def processes_per_node(trainer: Mapping[str, Any], cuda_devices: int) -> int | None:
    """How many processes (ranks) per node ``trainer`` runs: ``devices`` as a count or a list, ``auto`` as Lightning
    reads it (1 on CPU, every visible GPU); None when ``devices`` is none of these."""
    devices = trainer.get("devices", 1)
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        return len(devices)
    if str(devices) in ("auto", "-1"):
        on_gpu = str(trainer.get("accelerator")) in GPU_ACCELERATORS or (
            str(trainer.get("accelerator")) == "auto" and cuda_devices > 0
        )
        return max(cuda_devices, 1) if on_gpu else 1
    if isinstance(devices, bool) or not isinstance(devices, int):
        return None
    return devices


def slurm_tasks(environ: Mapping[str, str]) -> tuple[int, int] | None:
    """(tasks per node, nodes) of the SLURM job step this process is a task of, as Lightning's SLURM environment
    sees it (``SLURM_NTASKS`` set, not an interactive shell); None outside SLURM."""
    if not environ.get("SLURM_NTASKS") or environ.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return None
    nodes = int(environ.get("SLURM_NNODES") or 1)
    per_node = environ.get("SLURM_NTASKS_PER_NODE", "").split("(")[0]  # "8(x2)" on some versions
    tasks = int(per_node) if per_node.isdigit() else max(int(environ["SLURM_NTASKS"]) // nodes, 1)
    return tasks, nodes


def launch_problems(
    cfg: DictConfig,
    environ: Mapping[str, str] | None = None,
    cuda_devices: int | None = None,
    launcher: str | None = None,
) -> list[str]:
    """Problems of the trainer with this machine and launcher, found before any data is read.

    A GPU trainer needs CUDA (and as many GPUs as ``trainer.devices``); inside a SLURM job the tasks per node and
    nodes must be ``trainer.devices`` and ``trainer.num_nodes`` (Lightning would refuse them at ``fit``, after
    mining); and a multirun on a local launcher cannot run more than one process per node (:data:`LOCAL_DDP_MULTIRUN`).

    Args:
        environ: the process environment (default ``os.environ``).
        cuda_devices: visible CUDA devices (default: asked of torch).
        launcher: the multirun's Hydra launcher ``_target_`` (None: not a multirun; default: read from Hydra).
    """
    trainer = OmegaConf.select(cfg, "trainer")
    if not isinstance(trainer, DictConfig):
        return []
    env = os.environ if environ is None else environ
    cuda = cuda_device_count() if cuda_devices is None else cuda_devices
    problems: list[str] = []
    accelerator = str(trainer.get("accelerator"))
    devices = trainer.get("devices", 1)
    per_node = processes_per_node(trainer, cuda)
    if per_node is None or per_node < 1:
        problems.append(
            f"trainer.devices must be a positive number of devices, a list of device ids or auto, got {devices!r}"
        )
    nodes = trainer.get("num_nodes", 1)
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        problems.append(f"trainer.num_nodes must be an integer >= 1, got {nodes!r}")
        nodes = None
    if accelerator in GPU_ACCELERATORS:
        import torch

        if cuda == 0:
            problems.append(
                f"trainer.accelerator={accelerator} but torch {torch.__version__} sees no CUDA device (CUDA build: "
                f"{torch.version.cuda}): run on a GPU node with a CUDA build of torch, or use trainer=cpu"
            )
        elif per_node is not None and per_node > cuda:
            problems.append(f"trainer.devices={devices} but this node has {cuda} visible CUDA device(s)")
    tasks = slurm_tasks(env)
    if tasks is not None and per_node is not None and nodes is not None:
        if tasks[0] != per_node:
            problems.append(
                f"trainer.devices={devices} runs {per_node} process(es) per node but this SLURM job has {tasks[0]} "
                "task(s) per node (hydra.launcher.tasks_per_node, or sbatch/srun --ntasks-per-node): they must match; "
                "launcher=slurm sets tasks_per_node from trainer.devices unless it is overridden"
            )
        if tasks[1] != nodes:
            problems.append(
                f"trainer.num_nodes={nodes} but this SLURM job has {tasks[1]} node(s) (hydra.launcher.nodes, or "
                "sbatch --nodes): they must match; launcher=slurm sets nodes from trainer.num_nodes unless overridden"
            )
    if launcher is None:
        launcher = _multirun_launcher()
    external = tasks is not None or "TORCHELASTIC_RUN_ID" in env or "LOCAL_RANK" in env
    if launcher is not None and not external and (per_node or 1) > 1 and not launcher.endswith("SlurmLauncher"):
        problems.append(LOCAL_DDP_MULTIRUN.format(devices=per_node, launcher=launcher.rsplit(".", 1)[-1]))
    return problems


def _multirun_launcher() -> str | None:
    """The Hydra launcher's ``_target_`` inside a multirun job, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return str(HydraConfig.get().launcher.get("_target_", ""))


def config_problems(cfg: DictConfig) -> list[str]:
    """Every problem with the config's values, each naming its key (empty when there is none)."""
    check = _Checker(cfg)
    seed = check.integer("seed", 0)  # numpy's seeds are 0 .. 2**32 - 1
    if seed is not None and seed > MAX_SEED:
        check.problems.append(f"seed must be an integer in [0, {MAX_SEED}], got {seed}")
    for key, allowed in (("run.on_config_change", ("refuse", "fresh")), ("run.on_complete", ("skip", "fresh"))):
        if check.has(key):
            check.choice(key, allowed)
    check.boolean("run.keep_checkpoints")
    check.boolean("run.keep_encoder")
    check.integer("model.query_max_length", 1)
    check.integer("model.passage_max_length", 1)
    check.choice("model.pooling", ("cls", "mean"))
    check.boolean("model.normalize")
    check.boolean("model.shared")
    if check.has("run.stages_only"):
        check.boolean("run.stages_only")
    if check.has("evaluation"):
        _evaluation(check)
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
        _train(check)
        check.integer("trainer.max_epochs", 1, allowed=(-1,))
        check.choice("trainer.deterministic", (True, False, "warn"))
        check.number("model.temperature", 0.0, None, low_open=True)
        _negatives(check)
        _labels(check)
    _logger(check)
    check.problems.extend(launch_problems(cfg))
    check.problems.extend(cache_settings_problems())  # MDR_VERIFY_CACHES, MDR_CACHE_LOCK, MDR_LOCK_STALE_SECONDS
    if not check.problems:  # the schedule and the evaluation languages resolve a config whose values are sound
        check.problems.extend(_resolution_problems(cfg))
    return check.problems


def _train(check: _Checker) -> None:
    """The ``train`` and ``loss`` groups."""
    check.integer("train.batch_size", 1)
    check.number("train.learning_rate", 0.0, None, low_open=True)
    check.number("train.weight_decay", 0.0)
    check.number("train.warmup_ratio", 0.0, 1.0)
    check.choice("train.fast_dropout", ("auto", True, False))
    check.integer("train.token_cache", 0)
    check.integer("train.cpu_malloc_retain_mb", 0, maximum=MAX_RETAIN_MB)  # mallopt takes a C int of bytes
    check.integer("train.num_workers", 0)
    check.integer("train.chunk_tokens", 1)
    check.optional_integer("train.checkpoint_every_n_steps", 1)
    if check.value("train.gradient_clip_val") is not None:  # null: no clipping
        check.number("train.gradient_clip_val", 0.0, None, low_open=True)
    for key in ("train.save_encoder", "train.gradient_checkpointing", "train.grad_cache.enabled"):
        check.boolean(key)
    check.integer("train.grad_cache.chunk_size", 1)
    check.boolean("loss.mask_false_negatives")


def _evaluation(check: _Checker) -> None:
    """The ``evaluation`` group."""
    check.integer("evaluation.depth", MIN_DEPTH)  # nDCG@10 needs the top 10; below 100 names mrr@<depth>
    check.integer("evaluation.batch_size", 1)
    check.choice("evaluation.faiss_gpu", ("auto", True, False))
    check.choice("evaluation.bf16", ("auto", True, False))
    check.integer("evaluation.shard_size", 1)
    check.boolean("evaluation.fp16_index")
    check.boolean("evaluation.keep_embeddings")


def _logger(check: _Checker) -> None:
    """The ``logger`` group."""
    check.boolean("logger.csv")
    check.boolean("logger.wandb.enabled")
    check.choice("logger.wandb.mode", WANDB_MODES)
    check.optional_integer("logger.progress.every_n_steps", 1)  # null: no step trigger
    if check.value("logger.progress.every_seconds") is not None:  # null: no time trigger
        check.number("logger.progress.every_seconds", 0.0, None, low_open=True)


def _resolution_problems(cfg: DictConfig) -> list[str]:
    """Problems of the stage schedule (:func:`mdr.stages.schedule`) and of the evaluation languages."""
    from mdr.stages import evaluation_languages, schedule

    problems = []
    checks = [schedule] + ([evaluation_languages] if OmegaConf.select(cfg, "language.code") is not None else [])
    for resolve in checks:
        try:
            resolve(cfg)
        except DataError as error:
            problems.append(str(error))
    return problems


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


def split_problems(cfg: DictConfig, train: RetrievalSplit | None, test: RetrievalSplit) -> list[str]:
    """Problems of the loaded data with this config, each naming the config key it concerns."""
    problems = test_split_problems(test, str(OmegaConf.select(cfg, "data.test_split", default="test")))
    if train is None:
        return problems
    negatives = cfg.negatives
    return problems + train_split_problems(
        train,
        str(OmegaConf.select(cfg, "data.train_split", default="train")),
        int(negatives.num_negatives),
        float(negatives.hard_proportion),
        str(negatives.pool.source),
        str(cfg.data.name),
    )


def validate_splits(cfg: DictConfig, train: RetrievalSplit | None, test: RetrievalSplit) -> None:
    """Check the loaded splits against the config (run after :func:`validate`, before mining or training).

    Raises:
        DataError: naming the config key of every problem found.
    """
    _fail(split_problems(cfg, train, test))
