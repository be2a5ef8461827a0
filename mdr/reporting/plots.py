"""The sweep's plot: MRR@100 against the hard-negative proportion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def plot(cells: pd.DataFrame, path: Path) -> Path:
    """MRR@100 vs hard-negative proportion, one line per (language, variant), 95% bootstrap intervals."""
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
        "mean over seeds; bars: 95% interval of each mean (bootstrap over seeds and queries);\n"
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
