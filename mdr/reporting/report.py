"""The sweep's Markdown: MRR@100 per cell, deltas against p = 0, trends and verdicts, variant effects, and the
comparison of stage schedules."""

from __future__ import annotations

import pandas as pd

from mdr.reporting.analysis import ALPHA, Analysis, same_proportion
from mdr.reporting.collect import DEFAULT_VARIANT, METRIC


def _interval(row: pd.Series, name: str) -> str:
    return f"{row[name]:+.4f} [{row.ci_low:+.4f}, {row.ci_high:+.4f}]"


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
                mark = "*" if not test.empty and test.p_holm.iloc[0] < ALPHA else ""
                texts.append(f"{row['mean']:.4f}{spread}{mark} (n={row.n})")
            low = " (low-resource)" if rows.low_resource.iloc[0] else ""
            lines.append(f"| {language}{low} | {variant} | " + " | ".join(texts) + " |")
        lines.append("")
    lines += [
        "Mean ± std over seeds (n = seeds). `*`: different from p=0 at Holm-adjusted p < 0.05 (two-level "
        "bootstrap over training seeds and test queries; Holm within each model, stage, language and variant).",
        "",
    ]
    if not tests.empty:
        lines += [
            "### MRR@100 against p=0 (95% intervals: two-level bootstrap over seeds and queries)",
            "",
            "| model | stage | language | variant | p=0 from | p | Δ MRR@100 [95% interval] | p-value | p (Holm) "
            "| seeds | queries | note |",
            "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for _, row in tests.iterrows():
            baseline = "same" if row.baseline_variant == row.variant else row.baseline_variant
            lines.append(
                f"| {row.model} | {row.stage} | {row.language} | {row.variant} | {baseline} | "
                f"{row.hard_proportion:g} | {_interval(row, f'delta_{METRIC}')} | {_p(row.p_value)} | "
                f"{_p(row.p_holm)} | {row.seeds} | {row.queries} | {row.note} |"
            )
        lines.append("")
    if not analysis.trends.empty:
        lines += [
            "### Trend (least-squares slope of MRR@100 in p, 95% interval) and verdict",
            "",
            "| model | stage | language | variant | proportions | slope [95% interval] | p-value | verdict |",
            "|---|---|---|---|---|---:|---:|---|",
        ]
        for _, row in analysis.trends.iterrows():
            lines.append(
                f"| {row.model} | {row.stage} | {row.language} | {row.variant} | {row.proportions} | "
                f"{_interval(row, 'slope')} | {_p(row.p_value)} | {row.verdict} |"
            )
        lines += [
            "",
            "Verdict: *help* (*hurt*) when the slope's interval lies above (below) 0 or some proportion differs "
            "from p=0 upward (downward) at Holm-adjusted p < 0.05, and nothing points the other way; *mixed* "
            "when signals disagree; else *no detectable effect* at the seeds run.",
            "",
        ]
    if not analysis.variant_effects.empty:
        lines += [
            f"### Variants against {DEFAULT_VARIANT} at the same p",
            "",
            "| model | stage | language | variant | p | Δ MRR@100 [95% interval] | p-value | p (Holm) | seeds | note |",
            "|---|---|---|---|---:|---:|---:|---:|---:|---|",
        ]
        for _, row in analysis.variant_effects.iterrows():
            lines.append(
                f"| {row.model} | {row.stage} | {row.language} | {row.variant} | {row.hard_proportion:g} | "
                f"{_interval(row, f'delta_{METRIC}')} | {_p(row.p_value)} | {_p(row.p_holm)} | {row.seeds} | "
                f"{row.note} |"
            )
        lines.append("")
    return "\n".join(lines)


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
                mark = "*" if "p_holm" in row and not pd.isna(row.p_holm) and row.p_holm < ALPHA else ""
                texts.append(f"{row['mean']:.4f}{spread}{mark} (n={row.n})")
            low = " (low-resource)" if rows.low_resource.iloc[0] else ""
            lines.append(f"| {language}{low} | " + " | ".join(texts) + " |")
        lines.append("")
    tested = comparison[comparison.schedule != comparison.reference] if "p_value" in comparison else comparison[:0]
    lines += [
        "Mean ± std over seeds (n = seeds). `*`: different from the reference schedule at Holm-adjusted p < 0.05 "
        "(two-level bootstrap over training seeds and test queries; Holm within each model and language).",
        "",
    ]
    if not tested.empty:
        lines += [
            "| model | language | schedule | against | Δ MRR@100 [95% interval] | p-value | p (Holm) | seeds "
            "| queries |",
            "|---|---|---|---|---:|---:|---:|---:|---:|",
        ]
        for _, row in tested.iterrows():
            lines.append(
                f"| {row.model} | {row.language} | {row.schedule} | {row.reference} | "
                f"{_interval(row, f'delta_{METRIC}')} | {_p(row.p_value)} | {_p(row.p_holm)} | {int(row.seeds)} | "
                f"{int(row.queries)} |"
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
