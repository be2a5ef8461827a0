"""Pool diagnostics: what a hard-negative pool holds, before training on it (docs/negatives.md#pool-diagnostics).

    python -m mdr.pool_diagnostics --languages th,hi --negatives bm25,dense_me5,bm25_thai_words:th \\
        --seeds 0-4 --out docs/results/me5_grid/pool_diagnostics [hydra overrides ...]
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import re
import shlex
import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from mdr.data.negatives import NegativeSampler
from mdr.data.schema import DataError, RetrievalSplit
from mdr.mining.denoise import cached_teacher_scores
from mdr.mining.miner import mine
from mdr.mining.pools import RawPools
from mdr.reporting import pool_diagnostics as report
from mdr.reporting.statistics import seed_label
from mdr.spec import Spec
from mdr.training import load_encoder, mining_device, negative_pools, pool_key
from mdr.utils import quiet
from mdr.utils.environment import code_version
from mdr.utils.instantiate import build_reader, ensure_model_files, register_resolvers
from mdr.utils.io import atomic_write_text
from mdr.utils.logging import get_logger
from mdr.validation import CONF, build_spec, resolve_teacher

log = get_logger(__name__)

# the me5_small grid's settings (conf/experiment/_me5_grid.yaml, block c's p = 1); the overrides given come after
DEFAULT_OVERRIDES = (
    "data=xquad",
    "model=me5_small",
    "trainer=cpu",
    "negatives.hard_proportion=1",
    "negatives.num_negatives=4",
)
# XQuAD-style docids: language, article, paragraph and (sentence level) sentence
DOCID_LOCATION = re.compile(r"^(?P<language>[^_]+)_(?P<article>a\d+)_(?P<paragraph>p\d+)(?:_s\d+)?$")
DENOISE_RATIO = 0.95  # the teacher ratio above which denoising at relative margin 0.05 (the default) drops one
LoadedTeacher = tuple[Any, Any, str, str]  # (encoder, tokenizer, its folder or hub id, the name the files show)


@dataclass(frozen=True)
class Draw:
    """One training query's positive and negatives (hard ones first) as the sampler drew them with ``seed``."""

    query_id: str
    seed: int
    positive: str
    negatives: tuple[str, ...]


def sampled_negatives(
    split: RetrievalSplit,
    pools: Mapping[str, Sequence[str]],
    num_negatives: int,
    hard_proportion: float,
    seeds: Iterable[int],
    strict: bool = False,
) -> list[Draw]:
    """The negatives a run with each of ``seeds`` draws in the first epoch, through the training sampler itself."""
    return [
        Draw(e.query_id, int(seed), e.positive, tuple(e.negatives))
        for seed in seeds
        for e in NegativeSampler(num_negatives, hard_proportion, seed=seed, strict=strict).examples(split, pools, 0)[0]
    ]


def positive_ranks(raw: RawPools, split: RetrievalSplit, depth: int) -> dict[str, int | None]:
    """Query -> its positive's rank in the miner's ranking; None beyond ``depth`` or where the miner lacks its score."""
    ranks: dict[str, int | None] = {}
    for query_id in filter(split.positives, sorted(split.queries)):
        score = raw.positive_scores.get(query_id)
        rank = None if score is None else 1 + sum(c > score for _, c in raw.candidates.get(query_id, ()))
        ranks[query_id] = rank if rank is not None and rank <= depth else None
    return ranks


def _share(count: float, total: int) -> float:
    return count / total if total else math.nan


def rank_measures(ranks: Mapping[str, int | None]) -> dict[str, float]:
    """Median rank (NaN when beyond the depth), share at rank 1 and share beyond the depth over ``ranks``' queries."""
    values = list(ranks.values())
    middle = statistics.median([math.inf if rank is None else float(rank) for rank in values]) if values else math.nan
    return {
        "positive_rank_median": middle if math.isfinite(middle) else math.nan,
        "positive_rank1_share": _share(sum(rank == 1 for rank in values), len(values)),
        "positive_beyond_depth_share": _share(sum(rank is None for rank in values), len(values)),
    }


def docid_location(docid: str) -> tuple[str, str] | None:
    """(article, article + paragraph) of an XQuAD-style docid, None for any other docid."""
    if (found := DOCID_LOCATION.match(docid)) is None:
        return None
    article = f"{found['language']}_{found['article']}"
    return article, f"{article}_{found['paragraph']}"


def location_measures(draws: Sequence[Draw]) -> dict[str, float]:
    """Shares of sampled negatives from the positive's paragraph and article, over the located ones."""
    pairs = [(docid_location(draw.positive), docid_location(negative)) for draw in draws for negative in draw.negatives]
    located = [(positive, where) for positive, where in pairs if positive is not None and where is not None]
    if len(located) < len(pairs):
        log.warning(
            f"{len(pairs) - len(located)} of {len(pairs)} sampled negatives (or their positives) have docids without "
            "article and paragraph: the same-paragraph and same-article shares count only the others"
        )
    return {
        "located_share": _share(len(located), len(pairs)),
        "same_paragraph_share": _share(sum(where[1] == positive[1] for positive, where in located), len(located)),
        "same_article_share": _share(sum(where[0] == positive[0] for positive, where in located), len(located)),
    }


def pool_measures(pools: Mapping[str, Sequence[str]], draws: Sequence[Draw]) -> dict[str, float]:
    """Median pool size and empty pools over the sampled queries; sampled negatives and the share from the pool."""
    queries = sorted({draw.query_id for draw in draws})
    sizes = [len(pools.get(query_id, ())) for query_id in queries]
    members = {query_id: set(pools.get(query_id, ())) for query_id in queries}
    sampled = sum(len(draw.negatives) for draw in draws)
    in_pool = sum(negative in members[draw.query_id] for draw in draws for negative in draw.negatives)
    return {
        "queries": len(queries),
        "pool_size_median": statistics.median(sizes) if sizes else math.nan,
        "queries_empty_pool": sum(size == 0 for size in sizes),
        "sampled": sampled,
        "in_pool_share": _share(in_pool, sampled),
    }


def scoring_pools(draws: Iterable[Draw]) -> dict[str, list[str]]:
    """Query -> every negative sampled for it (any seed, any option), in first-seen order: what a teacher scores."""
    pools: dict[str, dict[str, None]] = {}
    for draw in draws:
        pools.setdefault(draw.query_id, {}).update(dict.fromkeys(draw.negatives))
    return {query_id: list(negatives) for query_id, negatives in pools.items()}


def teacher_measures(draws: Sequence[Draw], scores: RawPools) -> dict[str, float]:
    """Median teacher ratio negative / positive, shares of negatives scoring >= the positive and above
    :data:`DENOISE_RATIO` of it (``scores``: the teacher's over at least the sampled negatives)."""
    pairs: list[tuple[float, float]] = []  # (negative's score, positive's score)
    for draw in draws:
        positive = scores.positive_scores.get(draw.query_id)
        if positive is None:
            raise KeyError(f"query {draw.query_id!r} has no teacher score for its positive")
        scored = dict(scores.candidates.get(draw.query_id, ()))
        for negative in draw.negatives:
            if negative not in scored:
                raise KeyError(f"query {draw.query_id!r}: sampled negative {negative!r} has no teacher score")
            pairs.append((scored[negative], positive))
    ratios = [score / positive for score, positive in pairs if positive > 0]
    if len(ratios) < len(pairs):
        log.warning(
            "%d sampled negatives left out of the teacher ratio: their positive scores <= 0", len(pairs) - len(ratios)
        )
    above = sum(score > positive - abs(positive) * (1 - DENOISE_RATIO) for score, positive in pairs)
    return {
        "teacher_ratio_median": statistics.median(ratios) if ratios else math.nan,
        "teacher_at_least_positive_share": _share(sum(score >= positive for score, positive in pairs), len(pairs)),
        "teacher_above_denoise_share": _share(above, len(pairs)),
    }


def overlap_shares(
    draws: Mapping[str, Sequence[Draw]], pools: Mapping[str, Mapping[str, Sequence[str]]]
) -> list[tuple[str, str, float]]:
    """(option, other, share of the option's sampled negatives in the other's pool) per ordered pair, self included."""
    rows: list[tuple[str, str, float]] = []
    for option, option_draws in draws.items():
        drawn = [(draw.query_id, negative) for draw in option_draws for negative in draw.negatives]
        for other, other_pools in pools.items():
            members = {query_id: set(docids) for query_id, docids in other_pools.items()}
            inside = sum(negative in members.get(query_id, ()) for query_id, negative in drawn)
            rows.append((option, other, _share(inside, len(drawn))))
    return rows


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
    items = [part.strip().partition(":") for part in text.split(",") if part.strip()]
    options = [Option(name, tuple(languages.split("+")) if languages else None) for name, _, languages in items]
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
    label = f"{source} ranks {pool.range_min + 1}-{pool.range_max if pool.range_max is not None else pool.depth}"
    label += f", margin {pool.margin:g}" if pool.margin is not None else ""
    return label + (f", denoised ({spec.negatives.denoise.teacher})" if spec.negatives.denoise.enabled else "")


def _compose(cells: Sequence[tuple[str, str]], overrides: Sequence[str], out: Path) -> list[Any]:
    """The train config composed for each (language, option), as ``train.py`` composes a run."""
    from hydra import compose, initialize_config_dir

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        fixed = [f"paths.output_dir={out}", *DEFAULT_OVERRIDES, *overrides]
        return [compose("train", [f"language={language}", f"negatives={option}", *fixed]) for language, option in cells]


def compose_cells(
    languages: Sequence[str], options: Sequence[Option], overrides: Sequence[str], out: Path
) -> dict[tuple[str, str], Spec]:
    """(language, option) -> the run's spec, all built (and a locally built miner model) before any data is read."""
    for option in options:
        if unknown := sorted(set(option.languages or ()) - set(languages)):
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


def measure_language(
    cells: dict[str, Spec], seeds: Sequence[int], teacher: LoadedTeacher
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows (one per option) and overlap rows of one language, whose cells are ``option -> spec``."""
    first = next(iter(cells.values()))
    language, cache_dir = first.language, first.paths.cache_dir
    split = build_reader(first.data.reader).load(first.data.train_split)
    pools: dict[str, dict[str, list[str]]] = {}
    draws: dict[str, list[Draw]] = {}
    ranks: dict[str, dict[str, int | None]] = {}
    for option, spec in cells.items():
        log.info("pool diagnostics: %s %s", language.code, option)
        negatives, settings = spec.negatives, spec.negatives.pool
        pools[option] = dict(negative_pools(spec, negatives, split, language))
        key = pool_key(settings, language.analyzer, cache_dir)
        load = functools.partial(load_encoder, spec.model)
        raw = mine(
            settings, split, language.code, language.analyzer, cache_dir, load, mining_device(spec.trainer), key=key
        )
        ranks[option] = positive_ranks(raw, split, settings.depth)
        draws[option] = sampled_negatives(
            split, pools[option], negatives.num_negatives, negatives.hard_proportion, seeds, negatives.strict
        )
    encoder, tokenizer, teacher_path, teacher_name = teacher
    every = scoring_pools(draw for option_draws in draws.values() for draw in option_draws)
    log.info(
        "pool diagnostics: %s, the teacher scores %d sampled negatives", language.code, sum(map(len, draws.values()))
    )
    scores, _, _ = cached_teacher_scores(
        every, split, language.code, encoder, tokenizer, teacher_path, cache_dir, device=mining_device(first.trainer)
    )
    rows = [
        {
            "language": language.code,
            "negatives": option,
            "label": option_label(spec),
            "seeds": seed_label(seeds, "+", shortest_run=2),  # no comma: it is a CSV cell
            "num_negatives": spec.negatives.num_negatives,
            "hard_proportion": spec.negatives.hard_proportion,
            "depth": spec.negatives.pool.depth,
            **pool_measures(pools[option], draws[option]),
            **rank_measures(ranks[option]),
            **location_measures(draws[option]),
            "teacher": teacher_name,
            **teacher_measures(draws[option], scores),
        }
        for option, spec in cells.items()
    ]
    overlap = [
        {"language": language.code, "negatives": option, "other": other, "share": share}
        for option, other, share in overlap_shares(draws, pools)
    ]
    return rows, overlap


def load_teacher(cell: tuple[str, str], overrides: Sequence[str], out: Path, name: str) -> LoadedTeacher:
    """The teacher ``name`` (a model group or an encoder folder) resolved for the run of ``cell``."""
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
    by_language = [
        {option: spec for (code, option), spec in cells.items() if code == language} for language in languages
    ]
    measured = [measure_language(found, seeds, loaded_teacher) for found in by_language if found]
    frame = pd.DataFrame([row for rows, _ in measured for row in rows], columns=list(report.COLUMNS))
    shares = pd.DataFrame([row for _, rows in measured for row in rows], columns=list(report.OVERLAP_COLUMNS)).round(4)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / report.CSV_NAME, frame.round(4).to_csv(index=False))
    atomic_write_text(out / report.OVERLAP_NAME, shares.to_csv(index=False))
    report.plot_diagnostics(frame, out / report.PLOT_NAME)
    atomic_write_text(out / report.SUMMARY_NAME, report.summary_markdown(frame.round(4), shares, command, code) + "\n")
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
    options, seeds = parse_options(args.negatives), parse_seeds(args.seeds)
    run(languages, options, seeds, args.out, args.teacher, args.overrides, command)
    names = (report.OVERLAP_NAME, report.PLOT_NAME, report.SUMMARY_NAME)
    print(f"[mdr] pool diagnostics -> {args.out / report.CSV_NAME}, {', '.join(names)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
