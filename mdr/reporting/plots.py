"""The sweep's plots: MRR@100 against the hard-negative proportion, and the paired deltas against p = 0."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def plot(cells: pd.DataFrame, path: Path) -> Path:
    """MRR@100 vs hard-negative proportion, one line per (language, variant), 95% intervals of each mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = list(cells.groupby(["model", "stage"], sort=False))
    figure, axes = plt.subplots(1, len(blocks), figsize=(5.5 * len(blocks), 4), squeeze=False)
    for axis, ((model, stage), block) in zip(axes[0], blocks):
        lines = list(block.groupby(["language", "variant"], sort=False))
        several_variants = block.variant.nunique() > 1
        for index, ((language, variant), rows) in enumerate(lines):
            rows = rows.sort_values("hard_proportion")
            dodge = 0.008 * (index - (len(lines) - 1) / 2)  # keep overlapping intervals apart
            errors = np.vstack([rows["mean"] - rows.ci_low, rows.ci_high - rows["mean"]]).clip(min=0)
            label = f"{language} {variant}" if several_variants else language
            axis.errorbar(rows.hard_proportion + dodge, rows["mean"], yerr=errors, marker="o", capsize=3, label=label)
        axis.set(title=f"{model} / {stage}", xlabel="proportion of mined hard negatives", ylabel="MRR@100")
        axis.grid(alpha=0.3)
        axis.legend(title="language", fontsize="small")
    figure.suptitle(
        "mean over seeds; bars: 95% interval of each mean (t over seeds and queries, Satterthwaite df);\n"
        "differences against p=0 are paired by query and seed, hence tighter: see results.md",
        fontsize="small",
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    figure.savefig(tmp, dpi=120)
    plt.close(figure)
    tmp.replace(path)
    return path


def plot_deltas(tests: pd.DataFrame, path: Path, margin: float | None = None) -> Path | None:
    """Paired deltas of MRR@100 against p = 0 with their 95% intervals, per language (one panel per model and
    stage, one line per language and variant); None when there is no delta to draw.

    Args:
        tests: the analysis's deltas (:attr:`mdr.reporting.analysis.Analysis.tests`).
        path: the PNG to write.
        margin: the equivalence margin, drawn as a band around 0 (None: no band).
    """
    if tests.empty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = list(tests.groupby(["model", "stage"], sort=False))
    figure, axes = plt.subplots(1, len(blocks), figsize=(5.5 * len(blocks), 4), squeeze=False)
    for axis, ((model, stage), block) in zip(axes[0], blocks):
        lines = list(block.groupby(["language", "variant"], sort=False))
        several_variants = block.variant.nunique() > 1
        if margin:
            axis.axhspan(-margin, margin, color="0.9", label=f"±{margin:g} (TOST margin)")
        axis.axhline(0.0, color="0.4", linewidth=0.8)
        for index, ((language, variant), rows) in enumerate(lines):
            rows = rows.sort_values("hard_proportion")
            dodge = 0.008 * (index - (len(lines) - 1) / 2)  # keep overlapping intervals apart
            delta = rows["delta_mrr@100"].to_numpy()
            errors = np.vstack([delta - rows.ci_low, rows.ci_high - delta]).clip(min=0)  # (2, levels)
            label = f"{language} {variant}" if several_variants else language
            x = np.concatenate([[0.0], rows.hard_proportion.to_numpy() + dodge])  # p = 0 is 0 by definition
            axis.errorbar(
                x,
                np.concatenate([[0.0], delta]),
                yerr=np.hstack([np.zeros((2, 1)), errors]),
                marker="o",
                capsize=3,
                label=label,
            )
        axis.set(
            title=f"{model} / {stage}",
            xlabel="proportion of mined hard negatives",
            ylabel="Δ MRR@100 against p=0",
        )
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    seeds = sorted({int(s) for s in tests.seeds})
    figure.suptitle(
        "paired deltas against p=0 (same seeds and queries), 95% intervals; "
        f"seeds per delta: {', '.join(map(str, seeds))}",
        fontsize="small",
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    figure.savefig(tmp, dpi=120)
    plt.close(figure)
    tmp.replace(path)
    return path
