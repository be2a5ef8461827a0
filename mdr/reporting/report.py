"""The sweep's Markdown: cell means, deltas against p = 0, trends and verdicts, contrasts, variants and schedules."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pandas as pd

from mdr.reporting.analysis import ALPHA, EQUIVALENCE_MARGIN, SECOND_METRIC, Analysis, resource_class, same_proportion
from mdr.reporting.collect import DEFAULT_VARIANT, METRIC


def table(header: str, align: str, rows: Iterable[str | Sequence[object]]) -> list[str]:
    """A Markdown table of ``rows`` (text or cells) under ``header``; ``align``: ``l`` or ``r`` per column."""
    rule = "|" + "".join("---:|" if side == "r" else "---|" for side in align)
    texts = (row if isinstance(row, str) else " | ".join(str(cell) for cell in row) for row in rows)
    return [f"| {header} |", rule, *(f"| {text} |" for text in texts)]


def _interval(row: pd.Series, name: str, low: str = "ci_low", high: str = "ci_high") -> str:
    return f"{row[name]:+.4f} [{row[low]:+.4f}, {row[high]:+.4f}]"


def _p(value: float) -> str:
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _second(row: pd.Series, name: str) -> str:
    """``<name>_ndcg@10`` with its interval, or – where per-query files lack nDCG@10."""
    value, low, high = f"{name}_{SECOND_METRIC}", f"{SECOND_METRIC}_ci_low", f"{SECOND_METRIC}_ci_high"
    return "–" if row.get(value) is None or pd.isna(row[value]) else _interval(row, value, low, high)


def _wtl(row: pd.Series) -> str:
    return f"{int(row.wins)}/{int(row.ties)}/{int(row.losses)}"


def _mean(row: pd.Series, marked: bool, second: str = "") -> str:
    """``mean ± std*`` (``*``: ``marked``) with ``second`` and ``(n=...)``."""
    spread = f" ± {row['std']:.4f}" if row.n > 1 else ""
    return f"{row['mean']:.4f}{spread}{'*' if marked else ''}{second} (n={row.n})"


def _low(rows: pd.DataFrame) -> str:
    return " (low-resource)" if resource_class(rows.low_resource) else ""


def _cell_tables(cells: pd.DataFrame, tests: pd.DataFrame) -> list[str]:
    """Per (model, stage): mean ± std / nDCG@10 per (language, variant) and p, ``*`` where the delta is significant."""
    lines: list[str] = []
    for (model, stage), block in cells.groupby(["model", "stage"], sort=False):
        proportions = sorted(block.hard_proportion.unique())
        rows = []
        for (language, variant), runs in block.groupby(["language", "variant"], sort=False):
            texts = []
            keys = (tests.model == model) & (tests.stage == stage) & (tests.language == language)
            for proportion in proportions:
                hit = runs[same_proportion(runs.hard_proportion, proportion)]
                test = tests[keys & (tests.variant == variant) & same_proportion(tests.hard_proportion, proportion)]
                calibrated = not test.empty and bool(test.gives_verdict.iloc[0])  # below 3 paired seeds: no claim
                second = None if hit.empty else hit.iloc[0].get(f"mean_{SECOND_METRIC}")
                second_text = "" if second is None or pd.isna(second) else f" / {second:.4f}"
                marked = calibrated and test.p_holm.iloc[0] < ALPHA
                texts.append("–" if hit.empty else _mean(hit.iloc[0], marked, second_text))
            rows.append([f"{language}{_low(runs)}", variant, *texts])
        header = " | ".join(["language", "variant", *(f"p={p:g}" if not pd.isna(p) else "p=n/a" for p in proportions)])
        lines += _section(f"### MRR@100, model={model}, stage={stage}", header, "ll" + "r" * len(proportions), rows)
    return lines


def cell_means_markdown(analysis: Analysis) -> str:
    """The tables of cell means with their note: results.md's first section, what a finished multirun prints."""
    note = (
        "MRR@100 mean ± std over seeds / nDCG@10 mean (n = seeds). `*`: different from p=0 at Holm-adjusted "
        "p < 0.05 (t test on the seeds x queries ANOVA with Satterthwaite degrees of freedom, paired by seed and "
        "query; Holm within each model, stage, language and variant; docs/statistics.md); not marked where the "
        "contrast rests on fewer than 3 paired seeds (the seeds both cells ran), below the range the tests are "
        "calibrated for."
    )
    return "\n".join([*_cell_tables(analysis.cells, analysis.tests), note])


def markdown_report(analysis: Analysis) -> str:
    """Tables: MRR@100 per cell, deltas against p = 0, trends and verdicts, language contrasts, variant effects."""
    lines = [cell_means_markdown(analysis), ""]
    margins = analysis.trends.get("equivalence_margin", [])
    margin = float(margins.iloc[0]) if len(margins) else EQUIVALENCE_MARGIN
    lines += _section(
        "### MRR@100 and nDCG@10 against p=0 (95% intervals)",
        "model | stage | language | variant | p=0 from | p | Δ MRR@100 [95% interval] | p-value | p (Holm) | "
        f"TOST ±{margin:g} | Δ nDCG@10 [95% interval] | wins/ties/losses | seeds | df | note",
        "lllll" + "r" * 9 + "l",
        [
            f"{r.model} | {r.stage} | {r.language} | {r.variant} | "
            f"{'same' if r.baseline_variant == r.variant else r.baseline_variant} | {r.hard_proportion:g} | "
            f"{_interval(r, f'delta_{METRIC}')} | {_p(r.p_value)} | {_p(r.p_holm)} | {_p(r.p_tost)} | "
            f"{_second(r, 'delta')} | {_wtl(r)} | {r.seeds} | {r.df:.1f} | {r.note}"
            for _, r in analysis.tests.iterrows()
        ],
        f"TOST: p < 0.05 says the delta lies within ±{margin:g} (its 90% interval does). wins/ties/losses: "
        "queries whose seed-averaged MRR@100 is above / equal to / below p=0's.",
    )
    lines += _section(
        "### Trend over every p (least-squares slope and quadratic term, 95% intervals) and verdict",
        "model | stage | language | variant | proportions | slope MRR@100 [95% interval] | p-value "
        "| quadratic term [95% interval] | p-value | slope nDCG@10 [95% interval] | verdict",
        "lllll" + "r" * 5 + "l",
        [
            f"{r.model} | {r.stage} | {r.language} | {r.variant} | {r.proportions} | {_interval(r, 'slope')} | "
            f"{_p(r.p_value)} | "
            + ("–" if pd.isna(r.curvature) else _interval(r, "curvature", "curvature_ci_low", "curvature_ci_high"))
            + f" | {'–' if pd.isna(r.curvature_p_value) else _p(r.curvature_p_value)} | {_second(r, 'slope')} | "
            f"{r.verdict}"
            for _, r in analysis.trends.iterrows()
        ],
        "Verdict (MRR@100): *hurt* / *help* when the slope differs from 0, *curved* when the quadratic term "
        "does (Holm over the two: a wrong claim of an effect in at most 5% of sweeps without one); "
        "*monotone* only when every step between adjacent p levels moves that way (Holm over the steps); "
        f"*no effect larger than {margin:g}* when every delta against p=0 passes TOST; else "
        "*inconclusive*, with the largest effect the 90% intervals leave open. With three equally spaced "
        "levels the slope is the p=1 delta: only the quadratic term uses the middle level.",
    )
    lines += _section(
        "### Language x p: difference of two languages' deltas (or slopes), 95% intervals",
        "model | stage | variant | language − other | contrast | difference MRR@100 [95% interval] | p-value "
        "| p (Holm) | seeds | queries",
        "lllll" + "r" * 4 + "l",
        [
            f"{r.model} | {r.stage} | {r.variant} | {r.language} − {r.other_language} | {r.contrast} | "
            f"{_interval(r, f'difference_{METRIC}')} | {_p(r.p_value)} | {_p(r.p_holm)} | {r.seeds} | "
            f"{r.queries} ({r.query_pairing})"
            for _, r in analysis.interactions.iterrows()
        ],
        "Holm within each pair of languages.",
    )
    lines += _section(
        "### Low- vs high-resource languages: difference of mean slopes (MRR@100, 95% interval)",
        "model | stage | variant | low-resource | high-resource | proportions | difference [95% interval] "
        "| p-value | seeds | queries",
        "l" * 6 + "r" * 3 + "l",
        [
            f"{r.model} | {r.stage} | {r.variant} | {r.low_resource} | {r.high_resource} | {r.proportions} | "
            f"{_interval(r, f'slope_difference_{METRIC}')} | {_p(r.p_value)} | {r.seeds} | "
            f"{r.queries} ({r.query_pairing})"
            for _, r in analysis.resource_contrasts.iterrows()
        ],
    )
    lines += _section(
        f"### Variants against {DEFAULT_VARIANT} at the same p",
        "model | stage | language | variant | p | Δ MRR@100 [95% interval] | p-value | p (Holm) | TOST "
        "| Δ nDCG@10 [95% interval] | wins/ties/losses | seeds | note",
        "llll" + "r" * 8 + "l",
        [
            f"{r.model} | {r.stage} | {r.language} | {r.variant} | {r.hard_proportion:g} | "
            f"{_interval(r, f'delta_{METRIC}')} | {_p(r.p_value)} | {_p(r.p_holm)} | {_p(r.p_tost)} | "
            f"{_second(r, 'delta')} | {_wtl(r)} | {r.seeds} | {r.note}"
            for _, r in analysis.variant_effects.iterrows()
        ],
    )
    return "\n".join(lines)


def _section(title: str, header: str, align: str, rows: list[str], note: str = "") -> list[str]:
    """A titled table with an optional note below; nothing without rows."""
    return [title, "", *table(header, align, rows), "", *([note, ""] if note else [])] if rows else []


def schedules_markdown(comparison: pd.DataFrame) -> str:
    """The schedule comparison: mean ± std per language and schedule, then each difference from the reference."""
    lines: list[str] = []
    for model, block in comparison.groupby("model", sort=False):
        schedules = list(dict.fromkeys(block.schedule))
        rows = []
        for language, runs in block.groupby("language", sort=False):
            texts = []
            for schedule in schedules:
                hit = runs[runs.schedule == schedule]
                row = hit.iloc[0] if not hit.empty else None
                tested = row is not None and "p_holm" in row and not pd.isna(row.p_holm)
                tested = tested and bool(row.get("gives_verdict", True))  # below 3 paired seeds: estimate only
                texts.append("–" if row is None else _mean(row, tested and row.p_holm < ALPHA))
            rows.append([f"{language}{_low(runs)}", *texts])
        header = " | ".join(["language", *schedules])
        lines += _section(f"### MRR@100 by stage schedule, model={model}", header, "l" + "r" * len(schedules), rows)
    lines += [
        "Mean ± std over seeds (n = seeds). `*`: different from the reference schedule at Holm-adjusted p < 0.05 "
        "(t test on the seeds x queries ANOVA with Satterthwaite degrees of freedom, paired by seed and query; "
        "Holm within each model and language); not marked below 3 paired seeds.",
        "",
    ]
    tested = comparison[comparison.schedule != comparison.reference] if "p_value" in comparison else comparison[:0]
    rows = [
        f"{r.model} | {r.language} | {r.schedule} | {r.reference} | {_interval(r, f'delta_{METRIC}')} | "
        f"{_p(r.p_value)} | {_p(r.p_holm)} | {_second(r, 'delta')} | {_wtl(r)} | {int(r.seeds)} | {int(r.queries)}"
        for _, r in tested.iterrows()
    ]
    header = (
        "model | language | schedule | against | Δ MRR@100 [95% interval] | p-value | p (Holm) "
        "| Δ nDCG@10 [95% interval] | wins/ties/losses | seeds | queries"
    )
    return "\n".join(lines + ([*table(header, "llll" + "r" * 7, rows), ""] if rows else []))


def means_markdown(means: pd.DataFrame, depth: int) -> str:
    """Cell means of runs evaluated at a depth below 100 (:func:`mdr.reporting.collect.cell_means`)."""
    measures = [column.removeprefix("mean_") for column in means.columns if column.startswith("mean_")]
    shown = ", ".join(
        name.replace("mrr", "MRR").replace("recall", "Recall").replace("ndcg", "nDCG") for name in measures
    )
    rows = []
    for _, row in means.iterrows():
        values = [
            f"{row[f'mean_{name}']:.4f}" + (f" ± {row[f'std_{name}']:.4f}" if row.n > 1 else "") for name in measures
        ]
        proportion = "n/a" if pd.isna(row.hard_proportion) else f"{row.hard_proportion:g}"
        rows.append([row.model, row.stage, row.language, row.variant, proportion, *values, row.n])
    header = " | ".join(["model", "stage", "language", "variant", "p", *measures, "n"])
    intro = f"Evaluated at depth {depth}: {shown} (mean ± std over seeds), not compared with the MRR@100 runs."
    return "\n".join([intro, "", *table(header, "llll" + "r" * (len(measures) + 2), rows)])
