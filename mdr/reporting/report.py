"""The sweep's Markdown: MRR@100 per cell, deltas against p = 0, trends and verdicts, variant effects, and the
comparison of stage schedules."""

from __future__ import annotations

import pandas as pd

from mdr.reporting.analysis import ALPHA, EQUIVALENCE_MARGIN, SECOND_METRIC, Analysis, resource_class, same_proportion
from mdr.reporting.collect import DEFAULT_VARIANT
from mdr.reporting.integrity import METRIC


def _interval(row: pd.Series, name: str, low: str = "ci_low", high: str = "ci_high") -> str:
    return f"{row[name]:+.4f} [{row[low]:+.4f}, {row[high]:+.4f}]"


def _p(value: float) -> str:
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def markdown_report(analysis: Analysis) -> str:
    """Tables: MRR@100 per cell, deltas against p = 0, trends and verdicts, variant effects."""
    cells, tests = analysis.cells, analysis.tests
    lines: list[str] = []
    for (model, stage), block in cells.groupby(["model", "stage"], sort=False):
        proportions = sorted(block.hard_proportion.unique())
        lines += [
            f"### MRR@100, model={model}, stage={stage}",
            "",
            "| language | variant | "
            + " | ".join(f"p={p:g}" if not pd.isna(p) else "p=n/a" for p in proportions)
            + " |",
            "|---|---|" + "---:|" * len(proportions),
        ]
        for (language, variant), rows in block.groupby(["language", "variant"], sort=False):
            texts = []
            for proportion in proportions:
                hit = rows[same_proportion(rows.hard_proportion, proportion)]
                if hit.empty:
                    texts.append("–")
                    continue
                row = hit.iloc[0]
                spread = f" ± {row['std']:.4f}" if row.n > 1 else ""
                test = tests[
                    (tests.model == model)
                    & (tests.stage == stage)
                    & (tests.language == language)
                    & (tests.variant == variant)
                    & same_proportion(tests.hard_proportion, proportion)
                ]
                calibrated = not test.empty and bool(test.gives_verdict.iloc[0])
                mark = "*" if calibrated and test.p_holm.iloc[0] < ALPHA else ""  # below 3 paired seeds: no claim
                second = row.get(f"mean_{SECOND_METRIC}")
                second_text = "" if second is None or pd.isna(second) else f" / {second:.4f}"
                texts.append(f"{row['mean']:.4f}{spread}{mark}{second_text} (n={row.n})")
            low = " (low-resource)" if resource_class(rows.low_resource) else ""
            lines.append(f"| {language}{low} | {variant} | " + " | ".join(texts) + " |")
        lines.append("")
    lines += [
        "MRR@100 mean ± std over seeds / nDCG@10 mean (n = seeds). `*`: different from p=0 at Holm-adjusted "
        "p < 0.05 (t test on the seeds x queries ANOVA with Satterthwaite degrees of freedom, paired by seed and "
        "query; Holm within each model, stage, language and variant; docs/statistics.md); not marked where the "
        "contrast rests on fewer than 3 paired seeds (the seeds both cells ran), below the range the tests are "
        "calibrated for.",
        "",
    ]
    if not tests.empty:
        margin = _margin(analysis)
        lines += [
            "### MRR@100 and nDCG@10 against p=0 (95% intervals)",
            "",
            "| model | stage | language | variant | p=0 from | p | Δ MRR@100 [95% interval] | p-value | p (Holm) "
            f"| TOST ±{margin:g} | Δ nDCG@10 [95% interval] | wins/ties/losses | seeds | df | note |",
            "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for _, row in tests.iterrows():
            baseline = "same" if row.baseline_variant == row.variant else row.baseline_variant
            lines.append(
                f"| {row.model} | {row.stage} | {row.language} | {row.variant} | {baseline} | "
                f"{row.hard_proportion:g} | {_interval(row, f'delta_{METRIC}')} | {_p(row.p_value)} | "
                f"{_p(row.p_holm)} | {_p(row.p_tost)} | {_second(row, 'delta')} | {_wtl(row)} | {row.seeds} | "
                f"{row.df:.1f} | {row.note} |"
            )
        lines += [
            "",
            f"TOST: p < 0.05 says the delta lies within ±{margin:g} (its 90% interval does). wins/ties/losses: "
            "queries whose seed-averaged MRR@100 is above / equal to / below p=0's.",
            "",
        ]
    if not analysis.trends.empty:
        lines += [
            "### Trend over every p (least-squares slope and quadratic term, 95% intervals) and verdict",
            "",
            "| model | stage | language | variant | proportions | slope MRR@100 [95% interval] | p-value "
            "| quadratic term [95% interval] | p-value | slope nDCG@10 [95% interval] | verdict |",
            "|---|---|---|---|---|---:|---:|---:|---:|---:|---|",
        ]
        for _, row in analysis.trends.iterrows():
            curved = (
                "–" if pd.isna(row.curvature) else _interval(row, "curvature", "curvature_ci_low", "curvature_ci_high")
            )
            curved_p = "–" if pd.isna(row.curvature_p_value) else _p(row.curvature_p_value)
            lines.append(
                f"| {row.model} | {row.stage} | {row.language} | {row.variant} | {row.proportions} | "
                f"{_interval(row, 'slope')} | {_p(row.p_value)} | {curved} | {curved_p} | {_second(row, 'slope')} "
                f"| {row.verdict} |"
            )
        lines += [
            "",
            "Verdict (MRR@100): *hurt* / *help* when the slope differs from 0, *curved* when the quadratic term "
            "does (Holm over the two: a wrong claim of an effect in at most 5% of sweeps without one); "
            "*monotone* only when every step between adjacent p levels moves that way (Holm over the steps); "
            f"*no effect larger than {_margin(analysis):g}* when every delta against p=0 passes TOST; else "
            "*inconclusive*, with the largest effect the 90% intervals leave open. With three equally spaced "
            "levels the slope is the p=1 delta: only the quadratic term uses the middle level.",
            "",
        ]
    if not analysis.interactions.empty:
        lines += [
            "### Language x p: difference of two languages' deltas (or slopes), 95% intervals",
            "",
            "| model | stage | variant | language − other | contrast | difference MRR@100 [95% interval] | p-value "
            "| p (Holm) | seeds | queries |",
            "|---|---|---|---|---|---:|---:|---:|---:|---|",
        ]
        for _, row in analysis.interactions.iterrows():
            lines.append(
                f"| {row.model} | {row.stage} | {row.variant} | {row.language} − {row.other_language} | "
                f"{row.contrast} | {_interval(row, f'difference_{METRIC}')} | {_p(row.p_value)} | "
                f"{_p(row.p_holm)} | {row.seeds} | {row.queries} ({row.query_pairing}) |"
            )
        lines += ["", "Holm within each pair of languages.", ""]
    if not analysis.resource_contrasts.empty:
        lines += [
            "### Low- vs high-resource languages: difference of mean slopes (MRR@100, 95% interval)",
            "",
            "| model | stage | variant | low-resource | high-resource | proportions | difference [95% interval] "
            "| p-value | seeds | queries |",
            "|---|---|---|---|---|---|---:|---:|---:|---|",
        ]
        for _, row in analysis.resource_contrasts.iterrows():
            lines.append(
                f"| {row.model} | {row.stage} | {row.variant} | {row.low_resource} | {row.high_resource} | "
                f"{row.proportions} | {_interval(row, f'slope_difference_{METRIC}')} | {_p(row.p_value)} | "
                f"{row.seeds} | {row.queries} ({row.query_pairing}) |"
            )
        lines.append("")
    if not analysis.variant_effects.empty:
        lines += [
            f"### Variants against {DEFAULT_VARIANT} at the same p",
            "",
            "| model | stage | language | variant | p | Δ MRR@100 [95% interval] | p-value | p (Holm) | TOST "
            "| Δ nDCG@10 [95% interval] | wins/ties/losses | seeds | note |",
            "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for _, row in analysis.variant_effects.iterrows():
            lines.append(
                f"| {row.model} | {row.stage} | {row.language} | {row.variant} | {row.hard_proportion:g} | "
                f"{_interval(row, f'delta_{METRIC}')} | {_p(row.p_value)} | {_p(row.p_holm)} | {_p(row.p_tost)} | "
                f"{_second(row, 'delta')} | {_wtl(row)} | {row.seeds} | {row.note} |"
            )
        lines.append("")
    return "\n".join(lines)


def _margin(analysis: Analysis) -> float:
    margins = analysis.trends.equivalence_margin if "equivalence_margin" in analysis.trends else []
    return float(margins.iloc[0]) if len(margins) else EQUIVALENCE_MARGIN


def _second(row: pd.Series, name: str) -> str:
    """``<name>_ndcg@10`` with its interval, or – where per-query files lack nDCG@10."""
    value = row.get(f"{name}_{SECOND_METRIC}")
    if value is None or pd.isna(value):
        return "–"
    return f"{value:+.4f} [{row[f'{SECOND_METRIC}_ci_low']:+.4f}, {row[f'{SECOND_METRIC}_ci_high']:+.4f}]"


def _wtl(row: pd.Series) -> str:
    return f"{int(row.wins)}/{int(row.ties)}/{int(row.losses)}"


def schedules_markdown(comparison: pd.DataFrame) -> str:
    """The schedule comparison: mean ± std per language and schedule, then each difference from the reference."""
    lines: list[str] = []
    for model, block in comparison.groupby("model", sort=False):
        schedules = list(dict.fromkeys(block.schedule))
        lines += [
            f"### MRR@100 by stage schedule, model={model}",
            "",
            "| language | " + " | ".join(schedules) + " |",
            "|---|" + "---:|" * len(schedules),
        ]
        for language, rows in block.groupby("language", sort=False):
            texts = []
            for schedule in schedules:
                hit = rows[rows.schedule == schedule]
                if hit.empty:
                    texts.append("–")
                    continue
                row = hit.iloc[0]
                spread = f" ± {row['std']:.4f}" if row.n > 1 else ""
                tested = "p_holm" in row and not pd.isna(row.p_holm) and bool(row.get("gives_verdict", True))
                mark = "*" if tested and row.p_holm < ALPHA else ""  # below 3 paired seeds: estimate only
                texts.append(f"{row['mean']:.4f}{spread}{mark} (n={row.n})")
            low = " (low-resource)" if resource_class(rows.low_resource) else ""
            lines.append(f"| {language}{low} | " + " | ".join(texts) + " |")
        lines.append("")
    tested = comparison[comparison.schedule != comparison.reference] if "p_value" in comparison else comparison[:0]
    lines += [
        "Mean ± std over seeds (n = seeds). `*`: different from the reference schedule at Holm-adjusted p < 0.05 "
        "(t test on the seeds x queries ANOVA with Satterthwaite degrees of freedom, paired by seed and query; "
        "Holm within each model and language); not marked below 3 paired seeds.",
        "",
    ]
    if not tested.empty:
        lines += [
            "| model | language | schedule | against | Δ MRR@100 [95% interval] | p-value | p (Holm) "
            "| Δ nDCG@10 [95% interval] | wins/ties/losses | seeds | queries |",
            "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for _, row in tested.iterrows():
            lines.append(
                f"| {row.model} | {row.language} | {row.schedule} | {row.reference} | "
                f"{_interval(row, f'delta_{METRIC}')} | {_p(row.p_value)} | {_p(row.p_holm)} | "
                f"{_second(row, 'delta')} | {_wtl(row)} | {int(row.seeds)} | {int(row.queries)} |"
            )
        lines.append("")
    return "\n".join(lines)


def headline(report: str) -> str:
    """The table(s) of cell means that open :func:`markdown_report`'s text, with their note: what a finished
    multirun prints."""
    lines = report.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("Mean ± std"):
            return "\n".join(lines[: index + 1])
        if line.startswith("### ") and index and not line.startswith("### MRR@100, model="):
            return "\n".join(lines[:index]).rstrip()
    return report.rstrip()


_LABELS = {"mrr": "MRR", "recall": "Recall", "ndcg": "nDCG"}


def means_markdown(means: pd.DataFrame, depth: int) -> str:
    """Cell means of runs evaluated at a depth below 100 (:func:`mdr.reporting.collect.cell_means`): their
    measures are MRR@depth and Recall@depth, kept apart from the MRR@100 analysis."""
    cut = min(int(depth), 100)
    measures = [name for name in (f"mrr@{cut}", f"recall@{cut}", "ndcg@10") if f"mean_{name}" in means]
    shown = ", ".join(_LABELS[name.split("@")[0]] + "@" + name.split("@")[1] for name in measures)
    lines = [
        f"Evaluated at depth {depth}: {shown} (mean ± std over seeds), not compared with the MRR@100 runs.",
        "",
        "| model | stage | language | variant | p | " + " | ".join(measures) + " | n |",
        "|---|---|---|---|---:|" + "---:|" * len(measures) + "---:|",
    ]
    for _, row in means.iterrows():
        values = []
        for name in measures:
            spread = f" ± {row[f'std_{name}']:.4f}" if row.n > 1 else ""
            values.append(f"{row[f'mean_{name}']:.4f}{spread}")
        proportion = "n/a" if pd.isna(row.hard_proportion) else f"{row.hard_proportion:g}"
        lines.append(
            f"| {row.model} | {row.stage} | {row.language} | {row.variant} | {proportion} | "
            + " | ".join(values)
            + f" | {row.n} |"
        )
    return "\n".join(lines)
