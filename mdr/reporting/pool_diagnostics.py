"""The CSVs ``python -m mdr.pool_diagnostics`` writes as Markdown and a plot, and as a sweep report's section."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from mdr.reporting.plots import pyplot, save_figure
from mdr.reporting.report import table
from mdr.reporting.statistics import holm

CSV_NAME = "pool_diagnostics.csv"
OVERLAP_NAME = "pool_overlap.csv"
PLOT_NAME = "pool_diagnostics.png"
SUMMARY_NAME = "pool_diagnostics.md"
SWEEP_CSV = Path("pool_diagnostics") / CSV_NAME  # in a sweep's report folder (``--out <report>/pool_diagnostics``)

COLUMNS = tuple(
    "language negatives label queries seeds num_negatives hard_proportion depth pool_size_median queries_empty_pool "
    "sampled in_pool_share positive_rank_median positive_rank1_share positive_beyond_depth_share located_share "
    "same_paragraph_share same_article_share teacher teacher_ratio_median teacher_at_least_positive_share "
    "teacher_above_denoise_share".split()
)
OVERLAP_COLUMNS = ("language", "negatives", "other", "share")

PANELS = (
    ("same_paragraph_share", "sampled negatives from the positive's paragraph"),
    ("teacher_at_least_positive_share", "sampled negatives the teacher scores >= the positive"),
    ("teacher_above_denoise_share", "sampled negatives the teacher scores above 95% of the positive"),
    ("positive_rank1_share", "positive at rank 1 in the miner's ranking"),
)


def _share(value: float) -> str:
    return "–" if pd.isna(value) else f"{value:.3f}"


def _rank(value: float) -> str:
    return "beyond depth" if pd.isna(value) else f"{value:g}"


def diagnostics_table(frame: pd.DataFrame) -> list[str]:
    """One Markdown row per (language, negatives option), in the CSV's order."""
    header = (
        "language | negatives | positive's rank: median / at 1 / beyond depth | same paragraph | same article "
        "| teacher ≥ positive | teacher ratio (median) | teacher > 95% | from pool"
    )
    rows = [
        f"{r.language} | {r.label} | {_rank(r.positive_rank_median)} / {_share(r.positive_rank1_share)} / "
        f"{_share(r.positive_beyond_depth_share)} | {_share(r.same_paragraph_share)} | "
        f"{_share(r.same_article_share)} | {_share(r.teacher_at_least_positive_share)} | "
        f"{_share(r.teacher_ratio_median)} | {_share(r.teacher_above_denoise_share)} | {_share(r.in_pool_share)}"
        for _, r in frame.iterrows()
    ]
    return table(header, "ll" + "r" * 7, rows)


def settings_line(frame: pd.DataFrame) -> str:
    """What the rows measured: queries, seeds, k, p and the teacher (each value once)."""

    def values(column: str) -> str:
        found = dict.fromkeys(frame[column].tolist())
        return ", ".join(f"{value:g}" if isinstance(value, float) else str(value) for value in found)

    return (
        f"Training queries ({values('queries')} per language) and the negatives the training sampler draws for them "
        f"in the first epoch, seeds {values('seeds')}, k = {values('num_negatives')}, p = "
        f"{values('hard_proportion')}; teacher {values('teacher')}."
    )


LEGEND = (
    "Positive's rank: in the miner's own ranking (BM25 or the dense encoder), over the training queries; beyond "
    "depth = not among the top `pool.depth`. Same paragraph / article: share of sampled negatives from the "
    "positive's paragraph / article (docid). Teacher ≥ positive: share of sampled negatives the teacher scores at "
    "least as high as the positive (likely false negatives); teacher > 95%: share that denoising at relative margin "
    ".05 would drop. From pool: share of sampled negatives drawn from the pool (the rest: random fill-ins of short "
    "pools)."
)


def overlap_tables(overlap: pd.DataFrame, labels: dict[str, str]) -> list[str]:
    """Per language: rows = the option whose sampled negatives are counted, columns = the pool they are looked up in."""
    lines: list[str] = []
    for language, block in overlap.groupby("language", sort=False):
        options = list(dict.fromkeys(block.negatives))
        others = list(dict.fromkeys(block.other))
        share = {(row.negatives, row.other): row.share for row in block.itertuples()}
        rows = [
            [labels.get(option, option), *(_share(share.get((option, other), math.nan)) for other in others)]
            for option in options
        ]
        header = " | ".join(["sampled from", *(labels.get(other, other) for other in others)])
        intro = f"**{language}**: share of the row's sampled negatives in the column's pool (same query)"
        lines += [intro, "", *table(header, "l" + "r" * len(others), rows), ""]
    return lines


def summary_markdown(frame: pd.DataFrame, overlap: pd.DataFrame, command: str, code: str) -> str:
    """The diagnostics folder's Markdown: how it was made, the table, the overlap matrices."""
    lines = ["# Pool diagnostics", "", "```bash", command, "```", "", f"Code: {code}. {settings_line(frame)}", ""]
    lines += [*diagnostics_table(frame), "", LEGEND, "", f"![pool diagnostics]({PLOT_NAME})", ""]
    lines += ["## Overlap between pools", "", *overlap_tables(overlap, dict(zip(frame.negatives, frame.label)))]
    return "\n".join(lines)


TRACKED = {  # pool measures set against each language's delta at p = 1 (:func:`tracking_lines`)
    "teacher_at_least_positive_share": "likely false negatives (teacher >= positive)",
    "same_paragraph_share": "negatives from the positive's paragraph",
    "positive_rank1_share": "positive at BM25 rank 1",
    "positive_beyond_depth_share": "positive beyond BM25's depth",
}


def tracking_lines(frame: pd.DataFrame, tests: pd.DataFrame | None, default_variant: str) -> list[str]:
    """Spearman's correlation of default-miner pool measures with the languages' deltas at p = 1; [] below 4."""
    if tests is None or tests.empty or "delta_mrr@100" not in tests:
        return []
    from scipy import stats

    deltas = tests[(tests.variant == default_variant) & np.isclose(tests.hard_proportion.astype(float), 1.0)]
    deltas = deltas.groupby("language")["delta_mrr@100"].mean()
    pools = frame[frame.negatives == "bm25"].set_index("language")
    languages = sorted(set(deltas.index) & set(pools.index))
    if len(languages) < 4:
        return []
    found = [stats.spearmanr(pools.loc[languages, column].astype(float), deltas.loc[languages]) for column in TRACKED]
    adjusted = holm([float(result[1]) for result in found])
    rows = [f"{name} | {rho:+.2f} | {p:.3f} | {q:.3f}" for name, (rho, p), q in zip(TRACKED.values(), found, adjusted)]
    intro = (
        f"Does a pool measure track the delta at p = 1? Spearman's rank correlation over the {len(languages)} "
        f"languages with both ({', '.join(languages)}), BM25 ranks 1-50 pools:"
    )
    return [intro, "", *table("measure | Spearman ρ | p-value | p (Holm over the measures)", "lrrr", rows), ""]


def report_section(report_dir: Path, tests: pd.DataFrame | None = None, default_variant: str = "") -> list[str]:
    """A sweep report's "Pool diagnostics" section from ``<report_dir>/pool_diagnostics/``; [] when there is none."""
    path = report_dir / SWEEP_CSV
    if not path.is_file():
        return []
    frame = pd.read_csv(path, keep_default_na=False, na_values=["", "nan", "NaN"])
    if missing := [column for column in COLUMNS if column not in frame.columns]:
        raise ValueError(f"{path}: not a pool diagnostics file, it lacks the columns {missing}")
    summary = f"{SWEEP_CSV.parent}/{SUMMARY_NAME}"
    legend = f"{LEGEND} Overlap between pools and the plot: [{summary}]({summary})."
    lines = ["### Pool diagnostics", "", settings_line(frame), "", *diagnostics_table(frame), "", legend, ""]
    return lines + tracking_lines(frame, tests, default_variant)


def plot_diagnostics(frame: pd.DataFrame, path: Path) -> Path:
    """Grouped bars per language, one bar per negatives option (plain labels), one panel per measure."""
    plt = pyplot()
    languages = list(dict.fromkeys(frame.language))
    labels = list(dict.fromkeys(frame.label))
    colours = plt.get_cmap("tab10")
    width = 0.8 / len(labels)
    figure, axes = plt.subplots(2, 2, figsize=(15, 9), sharex=True, squeeze=False)
    for axis, (column, title) in zip(axes.flat, PANELS):
        for index, label in enumerate(labels):
            rows = frame[frame.label == label].set_index("language")
            offset = (index - (len(labels) - 1) / 2) * width
            x = [languages.index(language) + offset for language in rows.index]
            axis.bar(x, rows[column].fillna(0.0), width=width, color=colours(index % 10), label=label)
        axis.set_title(title, fontsize="medium")
        axis.set_xticks(range(len(languages)), languages)
        axis.grid(axis="y", alpha=0.3)
        axis.set_axisbelow(True)
    handles, names = axes[0][0].get_legend_handles_labels()
    columns = min(len(names), 4)
    rows = -(-len(names) // columns)
    figure.legend(handles, names, title="negatives", loc="lower center", ncol=columns, fontsize="small")
    teachers = ", ".join(dict.fromkeys(frame.teacher.astype(str)))
    title = f"Hard-negative pools: the first epoch's sampled negatives of the training queries (teacher: {teachers})"
    figure.suptitle(title, fontsize="medium")
    figure.tight_layout(rect=(0, 0.04 + 0.035 * rows, 1, 0.96))  # the legend below the panels
    return save_figure(figure, path, dpi=110)
