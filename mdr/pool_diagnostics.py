"""Pool diagnostics: what a hard-negative pool holds, before training on it.

    python -m mdr.pool_diagnostics --languages th,hi --negatives bm25,dense_me5,bm25_thai_words:th \\
        --seeds 0-4 --out docs/results/me5_grid/pool_diagnostics [hydra overrides ...]

Each (language, ``negatives`` option) is composed from ``conf/`` as ``train.py`` composes a run (``data=xquad
model=me5_small trainer=cpu negatives.hard_proportion=1 negatives.num_negatives=4``, then the overrides given), its
pool is mined (or read from the pool cache) by :func:`mdr.training.negative_pools`, the run's own step, and the
training sampler draws the first epoch's negatives for every training query with each seed. The measures
(:mod:`mdr.mining.diagnostics`) go to ``pool_diagnostics.csv`` (one row per language and option) and
``pool_overlap.csv`` (long format), with a plot and a Markdown summary (:mod:`mdr.reporting.pool_diagnostics`).
An option written ``name:th+lo`` is measured on those languages only.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from mdr.data.schema import DataError, RetrievalSplit
from mdr.mining.denoise import cached_teacher_scores, teacher_model
from mdr.mining.diagnostics import (
    Draw,
    location_measures,
    overlap_shares,
    pool_measures,
    positive_ranks,
    rank_measures,
    sampled_negatives,
    scoring_pools,
    teacher_measures,
)
from mdr.mining.miner import PoolSettings, mine
from mdr.reporting.pool_diagnostics import (
    COLUMNS,
    CSV_NAME,
    OVERLAP_COLUMNS,
    OVERLAP_NAME,
    PLOT_NAME,
    SUMMARY_NAME,
    plot_diagnostics,
    summary_markdown,
)
from mdr.training import load_encoder, negative_pools
from mdr.utils import quiet
from mdr.utils.environment import code_version
from mdr.utils.instantiate import build_reader, ensure_model_files, register_resolvers
from mdr.utils.io import atomic_write_text
from mdr.utils.logging import get_logger
from mdr.utils.ranks import cuda_device
from mdr.validation import validate

log = get_logger(__name__)

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

DEFAULT_OVERRIDES = (
    "data=xquad",
    "model=me5_small",
    "trainer=cpu",
    "negatives.hard_proportion=1",
    "negatives.num_negatives=4",
)
"""The me5_small grid's settings (conf/experiment/_me5_grid.yaml, block c's p = 1); the overrides given come after."""

Teacher = tuple[Any, Any, str, str]
"""(encoder, tokenizer, its folder or hub id, the name the files show)."""


@dataclass(frozen=True)
class Option:
    """A ``negatives`` group option and the languages it is measured on (None: every language)."""

    name: str
    languages: tuple[str, ...] | None = None

    def applies_to(self, language: str) -> bool:
        """Whether this option is measured on ``language``."""
        return self.languages is None or language in self.languages


def parse_options(text: str) -> list[Option]:
    """``bm25,dense_me5,bm25_thai_words:th+lo`` -> options (a ``:`` limits one to the languages after it)."""
    options = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, languages = item.partition(":")
        options.append(Option(name, tuple(languages.split("+")) if languages else None))
    if not options:
        raise DataError("--negatives names no option (e.g. --negatives bm25,dense_me5)")
    return options


def parse_seeds(text: str) -> list[int]:
    """``0-4`` or ``0,2,3`` -> seeds."""
    seeds: list[int] = []
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        low, dash, high = part.partition("-")
        try:
            seeds += list(range(int(low), int(high) + 1)) if dash else [int(part)]
        except ValueError as error:
            raise DataError(f"--seeds {text!r}: expected integers such as 0-4 or 0,1,2") from error
    if not seeds:
        raise DataError(f"--seeds {text!r} names no seed")
    return seeds


def option_label(cfg: DictConfig) -> str:
    """A plain name for a composed ``negatives`` group: source, window, margin, denoising."""
    pool = cfg.negatives.pool
    if pool.source == "dense":
        source = Path(str(pool.encoder)).name
    elif pool.source == "shipped":
        source = "shipped"
    else:
        source = "BM25" if pool.backend == "bm25s" else "BM25 (Lucene)"
        source += " (Thai words)" if pool.tokenizer == "thai_words" else ""
    end = pool.range_max if pool.range_max is not None else pool.depth
    label = f"{source} ranks {int(pool.range_min) + 1}-{end}"
    if pool.margin is not None:
        label += f", margin {pool.margin:g}"
    denoise = cfg.negatives.get("denoise")
    if denoise is not None and denoise.enabled:
        label += f", denoised ({denoise.teacher})"
    return label


def compose_cells(
    languages: Sequence[str], options: Sequence[Option], overrides: Sequence[str], out: Path
) -> dict[tuple[str, str], DictConfig]:
    """(language, option) -> the composed train config, every one before any data is read.

    Raises:
        DataError: an option limited to a language not asked for, or no cell to measure.
    """
    from hydra import compose, initialize_config_dir

    register_resolvers()
    for option in options:
        unknown = sorted(set(option.languages or ()) - set(languages))
        if unknown:
            raise DataError(
                f"--negatives {option.name}:{'+'.join(option.languages or ())}: {unknown} not in --languages"
            )
    cells: dict[tuple[str, str], DictConfig] = {}
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for language in languages:
            for option in options:
                if option.applies_to(language):
                    cells[(language, option.name)] = compose(
                        config_name="train",
                        overrides=[
                            f"language={language}",
                            f"negatives={option.name}",
                            f"paths.output_dir={out}",
                            *DEFAULT_OVERRIDES,
                            *overrides,
                        ],
                    )
    if not cells:
        raise DataError("no (language, negatives) cell to measure")
    return cells


def mining_device(cfg: DictConfig) -> str:
    """Where a run of ``cfg`` mines and a teacher scores: the CPU for trainer=cpu, else this process's CUDA device."""
    return "cpu" if cfg.trainer.accelerator == "cpu" else cuda_device()


def raw_pool_ranks(cfg: DictConfig, split: RetrievalSplit) -> tuple[dict[str, int | None], int]:
    """The positive's rank per training query in the cell's miner ranking (the cached pool), and the depth."""
    settings = PoolSettings(**OmegaConf.to_container(cfg.negatives.pool, resolve=True))  # type: ignore[arg-type]
    raw = mine(
        settings,
        split,
        cfg.language.code,
        cfg.language.analyzer,
        cfg.paths.cache_dir,
        lambda path: load_encoder(cfg, path),
        mining_device(cfg),
    )
    return positive_ranks(raw, split, settings.depth), settings.depth


def measure_language(
    cells: dict[str, DictConfig], seeds: Sequence[int], teacher: Teacher
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows (one per option) and overlap rows of one language, whose cells are ``option -> config``."""
    first = next(iter(cells.values()))
    split = build_reader(first.data).load(first.data.train_split)
    pools: dict[str, dict[str, list[str]]] = {}
    draws: dict[str, list[Draw]] = {}
    ranks: dict[str, tuple[dict[str, int | None], int]] = {}
    for option, cfg in cells.items():
        log.info("pool diagnostics: %s %s", cfg.language.code, option)
        pools[option] = dict(negative_pools(cfg, split, cfg.language))
        ranks[option] = raw_pool_ranks(cfg, split)
        negatives = cfg.negatives
        draws[option] = sampled_negatives(
            split,
            pools[option],
            int(negatives.num_negatives),
            float(negatives.hard_proportion),
            seeds,
            bool(negatives.strict),
        )
    encoder, tokenizer, teacher_path, teacher_name = teacher
    every = [draw for option_draws in draws.values() for draw in option_draws]
    log.info("pool diagnostics: %s, the teacher scores %d sampled negatives", first.language.code, len(every))
    scores, _, _ = cached_teacher_scores(
        scoring_pools(every),
        split,
        first.language.code,
        encoder,
        tokenizer,
        teacher_path,
        first.paths.cache_dir,
        device=mining_device(first),
    )
    rows = []
    for option, cfg in cells.items():
        depth_ranks, depth = ranks[option]
        rows.append(
            {
                "language": cfg.language.code,
                "negatives": option,
                "label": option_label(cfg),
                "seeds": seeds_text(seeds),
                "num_negatives": int(cfg.negatives.num_negatives),
                "hard_proportion": float(cfg.negatives.hard_proportion),
                "depth": depth,
                **pool_measures(pools[option], draws[option]),
                **rank_measures(depth_ranks),
                **location_measures(draws[option]),
                "teacher": teacher_name,
                **teacher_measures(draws[option], scores),
            }
        )
    overlap = [
        {"language": first.language.code, "negatives": option, "other": other, "share": share}
        for option, other, share in overlap_shares(draws, pools)
    ]
    return rows, overlap


def seeds_text(seeds: Sequence[int]) -> str:
    """``0-4`` for a run of consecutive seeds, else ``0+2+3`` (no comma: it is a CSV cell)."""
    ordered = sorted(seeds)
    if len(ordered) > 1 and ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"{ordered[0]}-{ordered[-1]}"
    return "+".join(str(seed) for seed in ordered)


def load_teacher(cfg: DictConfig, teacher: str) -> Teacher:
    """The teacher: a model group (built on first use) or an encoder folder, as ``negatives.denoise.teacher``."""
    teacher_cfg, path = teacher_model(cfg, teacher)
    encoder, tokenizer = load_encoder(teacher_cfg, path)
    name_or_path = path or str(teacher_cfg.model.name_or_path)
    return encoder, tokenizer, name_or_path, teacher if path is None else Path(path).name


def run(
    languages: Sequence[str],
    options: Sequence[Option],
    seeds: Sequence[int],
    out: Path,
    teacher: str = "me5_small",
    overrides: Sequence[str] = (),
    command: str = "",
) -> pd.DataFrame:
    """Measure every (language, option) and write the CSVs, the plot and the summary into ``out``."""
    version = code_version()  # the code that measures, before the long part
    code = f"mdr {version.get('commit') or 'outside git'}{' (uncommitted changes)' if version.get('dirty') else ''}"
    cells = compose_cells(languages, options, overrides, out)
    first = next(iter(cells.values()))
    ensure_model_files(first.model)  # dense_me5 mines with the model as built, which validation wants to exist
    for cfg in cells.values():
        validate(cfg)
    loaded_teacher = load_teacher(first, teacher)
    rows: list[dict[str, Any]] = []
    overlap: list[dict[str, Any]] = []
    for language in languages:
        language_cells = {option: cfg for (code, option), cfg in cells.items() if code == language}
        if language_cells:
            found, shared = measure_language(language_cells, seeds, loaded_teacher)
            rows += found
            overlap += shared
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    shares = pd.DataFrame(overlap, columns=list(OVERLAP_COLUMNS))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / CSV_NAME, frame.round(4).to_csv(index=False))
    atomic_write_text(out / OVERLAP_NAME, shares.round(4).to_csv(index=False))
    plot_diagnostics(frame, out / PLOT_NAME)
    atomic_write_text(out / SUMMARY_NAME, summary_markdown(frame.round(4), shares.round(4), command, code) + "\n")
    return frame


def main(argv: list[str] | None = None) -> int:
    """CLI: measure, write the files, print where they are."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--languages", required=True, help="language codes (conf/language/), e.g. th,hi")
    parser.add_argument(
        "--negatives", required=True, help="negatives options (conf/negatives/); name:th+lo limits one to languages"
    )
    parser.add_argument("--seeds", default="0-4", help="sampler seeds, e.g. 0-4 or 0,1 (default %(default)s)")
    parser.add_argument("--out", required=True, type=Path, help="folder for the CSVs, the plot and the summary")
    parser.add_argument(
        "--teacher", default="me5_small", help="a model group (conf/model/) or an encoder folder (default %(default)s)"
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every cell, e.g. paths.cache_dir=...")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    quiet.install()  # library messages a user cannot act on (mdr/utils/quiet.py)
    languages = [code.strip() for code in args.languages.split(",") if code.strip()]
    command = "python -m mdr.pool_diagnostics " + " ".join(shlex.quote(arg) for arg in (argv or sys.argv[1:]))
    run(
        languages,
        parse_options(args.negatives),
        parse_seeds(args.seeds),
        args.out,
        args.teacher,
        args.overrides,
        command,
    )
    print(f"[mdr] pool diagnostics -> {args.out / CSV_NAME}, {OVERLAP_NAME}, {PLOT_NAME}, {SUMMARY_NAME}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
