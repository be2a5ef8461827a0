"""Pool diagnostics: what a hard-negative pool holds, before training on it.

    python -m mdr.pool_diagnostics --languages th,hi --negatives bm25,dense_me5,bm25_thai_words:th \\
        --seeds 0-4 --out docs/results/me5_grid/pool_diagnostics [hydra overrides ...]

Each (language, ``negatives`` option; ``name:th+lo``: those languages only) is composed as ``train.py`` composes a
run (:data:`DEFAULT_OVERRIDES`, then the overrides given), its pool mined as the run mines it and the first epoch's
negatives drawn for every training query with each seed. The measures (:mod:`mdr.mining.diagnostics`) go to
``pool_diagnostics.csv`` and ``pool_overlap.csv``, with a plot and a summary (:mod:`mdr.reporting.pool_diagnostics`).
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
from omegaconf import OmegaConf

from mdr.data.schema import DataError, RetrievalSplit
from mdr.mining import diagnostics as measures
from mdr.mining.denoise import cached_teacher_scores
from mdr.mining.miner import mine
from mdr.reporting import pool_diagnostics as report
from mdr.spec import Spec
from mdr.training import load_encoder, negative_pools, pool_key
from mdr.utils import quiet
from mdr.utils.environment import code_version
from mdr.utils.instantiate import build_reader, ensure_model_files, register_resolvers
from mdr.utils.io import atomic_write_text
from mdr.utils.logging import get_logger
from mdr.utils.ranks import cuda_device
from mdr.validation import build_spec, resolve_teacher

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

LoadedTeacher = tuple[Any, Any, str, str]
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


def option_label(spec: Spec) -> str:
    """A plain name for a composed ``negatives`` group: source, window, margin, denoising."""
    pool = spec.negatives.pool
    if pool.source == "dense":
        source = Path(str(pool.encoder)).name
    elif pool.source == "shipped":
        source = "shipped"
    else:
        source = "BM25" if pool.backend == "bm25s" else "BM25 (Lucene)"
        source += " (Thai words)" if pool.tokenizer == "thai_words" else ""
    end = pool.range_max if pool.range_max is not None else pool.depth
    label = f"{source} ranks {pool.range_min + 1}-{end}"
    if pool.margin is not None:
        label += f", margin {pool.margin:g}"
    if spec.negatives.denoise.enabled:
        label += f", denoised ({spec.negatives.denoise.teacher})"
    return label


def _compose(cells: Sequence[tuple[str, str]], overrides: Sequence[str], out: Path) -> list[Any]:
    """The train config composed for each (language, option), as ``train.py`` composes a run."""
    from hydra import compose, initialize_config_dir

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        fixed = [f"paths.output_dir={out}", *DEFAULT_OVERRIDES, *overrides]
        return [compose("train", [f"language={language}", f"negatives={option}", *fixed]) for language, option in cells]


def compose_cells(
    languages: Sequence[str], options: Sequence[Option], overrides: Sequence[str], out: Path
) -> dict[tuple[str, str], Spec]:
    """(language, option) -> the run's spec, every one built before any data is read (a dense pool mined by the
    run's own locally built model builds it first: the spec checks the encoder exists)."""
    for option in options:
        unknown = sorted(set(option.languages or ()) - set(languages))
        if unknown:
            raise DataError(
                f"--negatives {option.name}:{'+'.join(option.languages or ())}: {unknown} not in --languages"
            )
    keys = [(language, option.name) for language in languages for option in options if option.applies_to(language)]
    if not keys:
        raise DataError("no (language, negatives) cell to measure")
    configs = _compose(keys, overrides, out)
    for cfg in configs:
        pool, build = cfg.negatives.get("pool") or {}, cfg.model.get("build")
        if pool.get("source") == "dense" and build is not None and pool.get("encoder") == build.get("out_dir"):
            ensure_model_files(cfg.model.name, cfg.model.name_or_path, OmegaConf.to_container(build, resolve=True))
    return {key: build_spec(cfg) for key, cfg in zip(keys, configs)}


def mining_device(spec: Spec) -> str:
    """Where a run of ``spec`` mines and a teacher scores: the CPU for trainer=cpu, else this process's CUDA device."""
    return "cpu" if spec.trainer.accelerator == "cpu" else cuda_device()


def raw_pool_ranks(spec: Spec, split: RetrievalSplit) -> tuple[dict[str, int | None], int]:
    """The positive's rank per training query in the cell's miner ranking (the cached pool), and the depth."""
    settings, language = spec.negatives.pool, spec.language
    raw = mine(
        settings,
        split,
        language.code,
        language.analyzer,
        spec.paths.cache_dir,
        lambda path: load_encoder(spec.model, path),
        mining_device(spec),
        key=pool_key(settings, language.analyzer, spec.paths.cache_dir),
    )
    return measures.positive_ranks(raw, split, settings.depth), settings.depth


def measure_language(
    cells: dict[str, Spec], seeds: Sequence[int], teacher: LoadedTeacher
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows (one per option) and overlap rows of one language, whose cells are ``option -> spec``."""
    first = next(iter(cells.values()))
    split = build_reader(first.data.reader).load(first.data.train_split)
    pools: dict[str, dict[str, list[str]]] = {}
    draws: dict[str, list[measures.Draw]] = {}
    ranks: dict[str, tuple[dict[str, int | None], int]] = {}
    for option, spec in cells.items():
        log.info("pool diagnostics: %s %s", spec.language.code, option)
        negatives = spec.negatives
        pools[option] = dict(negative_pools(spec, negatives, split, spec.language))
        ranks[option] = raw_pool_ranks(spec, split)
        draws[option] = measures.sampled_negatives(
            split, pools[option], negatives.num_negatives, negatives.hard_proportion, seeds, negatives.strict
        )
    encoder, tokenizer, teacher_path, teacher_name = teacher
    every = [draw for option_draws in draws.values() for draw in option_draws]
    log.info("pool diagnostics: %s, the teacher scores %d sampled negatives", first.language.code, len(every))
    scores, _, _ = cached_teacher_scores(
        measures.scoring_pools(every),
        split,
        first.language.code,
        encoder,
        tokenizer,
        teacher_path,
        first.paths.cache_dir,
        device=mining_device(first),
    )
    rows = []
    for option, spec in cells.items():
        depth_ranks, depth = ranks[option]
        rows.append(
            {
                "language": spec.language.code,
                "negatives": option,
                "label": option_label(spec),
                "seeds": seeds_text(seeds),
                "num_negatives": spec.negatives.num_negatives,
                "hard_proportion": spec.negatives.hard_proportion,
                "depth": depth,
                **measures.pool_measures(pools[option], draws[option]),
                **measures.rank_measures(depth_ranks),
                **measures.location_measures(draws[option]),
                "teacher": teacher_name,
                **measures.teacher_measures(draws[option], scores),
            }
        )
    overlap = [
        {"language": first.language.code, "negatives": option, "other": other, "share": share}
        for option, other, share in measures.overlap_shares(draws, pools)
    ]
    return rows, overlap


def seeds_text(seeds: Sequence[int]) -> str:
    """``0-4`` for a run of consecutive seeds, else ``0+2+3`` (no comma: it is a CSV cell)."""
    ordered = sorted(seeds)
    if len(ordered) > 1 and ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"{ordered[0]}-{ordered[-1]}"
    return "+".join(str(seed) for seed in ordered)


def load_teacher(cell: tuple[str, str], overrides: Sequence[str], out: Path, name: str) -> LoadedTeacher:
    """The teacher ``name`` (a model group, built on first use, or an encoder folder, as
    ``negatives.denoise.teacher`` names one), resolved for the run of ``cell``."""
    teacher = resolve_teacher(_compose([cell], overrides, out)[0], name)
    encoder, tokenizer = load_encoder(teacher.model, teacher.folder)
    name_or_path = teacher.folder or teacher.model.name_or_path
    return encoder, tokenizer, name_or_path, name if teacher.folder is None else Path(teacher.folder).name


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
    loaded_teacher = load_teacher(next(iter(cells)), overrides, out, teacher)
    rows: list[dict[str, Any]] = []
    overlap: list[dict[str, Any]] = []
    for language in languages:
        language_cells = {option: spec for (code, option), spec in cells.items() if code == language}
        if language_cells:
            found, shared = measure_language(language_cells, seeds, loaded_teacher)
            rows += found
            overlap += shared
    frame = pd.DataFrame(rows, columns=list(report.COLUMNS))
    shares = pd.DataFrame(overlap, columns=list(report.OVERLAP_COLUMNS))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / report.CSV_NAME, frame.round(4).to_csv(index=False))
    atomic_write_text(out / report.OVERLAP_NAME, shares.round(4).to_csv(index=False))
    report.plot_diagnostics(frame, out / report.PLOT_NAME)
    atomic_write_text(
        out / report.SUMMARY_NAME, report.summary_markdown(frame.round(4), shares.round(4), command, code) + "\n"
    )
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
    names = (report.OVERLAP_NAME, report.PLOT_NAME, report.SUMMARY_NAME)
    print(f"[mdr] pool diagnostics -> {args.out / report.CSV_NAME}, {', '.join(names)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
