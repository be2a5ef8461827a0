"""The sweep's plots: MRR@100 against the hard-negative proportion, and the answer figure (deltas against p = 0)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mdr.reporting.collect import DEFAULT_VARIANT
from mdr.utils.io import atomic_write_with
from mdr.utils.run_record import language_config

HIGHLIGHT = "#c0392b"  # a language whose trend the tests call hurt or helped, or a significant delta
PROPORTION = "proportion p of mined hard negatives"


def language_name(code: str) -> str:
    """``Thai`` for ``th`` (conf/language/th.yaml's name); a code without a config stays as it is."""
    config = language_config(str(code))
    return str(config["name"]).capitalize() if config else str(code)


def negatives_name(variant: str) -> str:
    """A report variant in words: ``mask=on,denoise=off,miner=bm25:11-60`` -> ``BM25 ranks 11-60``."""
    parts = dict(part.split("=", 1) for part in str(variant).split(",") if "=" in part)
    miner = parts.get("miner", "bm25:1-50")
    found = re.fullmatch(r"(\w+)(?:/(\w+))?(?:\[(\w+)\])?(?:\(([^)]*)\))?:(\d+)-(\w+)", miner)
    if found:
        source, backend, tokenizer, encoder, first, last = found.groups()
        name = {"bm25": "BM25", "dense": encoder or "dense", "shipped": "shipped"}.get(source, source)
        extras = [x for x in (backend, tokenizer and tokenizer.replace("_", " ")) if x]
        name += f" ({', '.join(extras)})" if extras else ""
        name += f" ranks {first}-{last}"
    else:
        name = miner
    name += f", margin {parts['margin']}" if "margin" in parts else ""
    flags = {
        ("denoise", "on"): ", denoised",
        ("mask", "off"): ", no false-negative mask",
        ("p_stages", "all"): ", p in every stage",
    }
    return name + "".join(text for (key, value), text in flags.items() if parts.get(key) == value)


def plot(cells: pd.DataFrame, path: Path) -> Path | None:
    """MRR@100 vs p per (language, variant) with 95% intervals, a panel per (model, stage) that trained (else None)."""
    plt = pyplot()
    groups = cells.groupby(["model", "stage"], sort=False)
    blocks = [(key, block) for key, block in groups if block.hard_proportion.notna().any()]
    if not blocks:
        return None
    figure, axes = plt.subplots(1, len(blocks), figsize=(7 * len(blocks), 4.2), squeeze=False, constrained_layout=True)
    for axis, ((model, stage), block) in zip(axes[0], blocks):
        lines = list(block.groupby(["language", "variant"], sort=False))
        several_variants = block.variant.nunique() > 1
        for index, ((language, variant), rows) in enumerate(lines):
            rows = rows.sort_values("hard_proportion")
            dodge = 0.008 * (index - (len(lines) - 1) / 2)  # keep overlapping intervals apart
            errors = np.vstack([rows["mean"] - rows.ci_low, rows.ci_high - rows["mean"]]).clip(min=0)
            label = language_name(language)
            label += f": {negatives_name(variant)}" if several_variants and not variant.startswith("mask=n/a") else ""
            axis.errorbar(rows.hard_proportion + dodge, rows["mean"], yerr=errors, marker="o", capsize=3, label=label)
        axis.set(title=f"{model} / {stage}", xlabel=PROPORTION, ylabel="MRR@100")
        axis.grid(alpha=0.3)
        axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    caption = (
        "mean over seeds; bars: 95% interval of each mean (t over seeds and queries, Satterthwaite df); "
        "differences against p = 0 are paired by query and seed, hence tighter: answer.png, results.md"
    )
    figure.supxlabel(caption, fontsize="small", wrap=True)
    return save_figure(figure, path, dpi=120, bbox_inches="tight")


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, path: Path, **options: Any) -> Path:
    """Write ``figure`` to ``path`` as PNG atomically (``options``: ``savefig``'s) and close it."""
    try:
        return atomic_write_with(path, lambda handle: figure.savefig(handle, format="png", **options))
    finally:
        pyplot().close(figure)


def _dose_panel(axis: Any, block: pd.DataFrame, hurt_or_helped: set[str], margin: float | None) -> str:
    """Δ against p = 0 over p per language (default negatives), marked languages in colour; returns caption text."""
    rows = block[block.variant == DEFAULT_VARIANT]
    counts = rows.groupby("language").hard_proportion.nunique()
    languages = [language for language in dict.fromkeys(rows.language) if counts[language] >= 2]
    if margin:
        axis.axhspan(-margin, margin, color="0.92", label=f"±{margin:g} (equivalence margin)")
    axis.axhline(0.0, color="0.4", linewidth=0.8)
    seeds: dict[str, str] = {}
    grey = iter(["0.35", "0.55", "0.7", "0.45", "0.6", "0.8"])
    for index, language in enumerate(languages):
        points = rows[rows.language == language].sort_values("hard_proportion")
        delta = points["delta_mrr@100"].to_numpy()
        errors = np.vstack([delta - points.ci_low, points.ci_high - delta]).clip(min=0)  # (2, levels)
        marked = language in hurt_or_helped
        x = np.concatenate([[0.0], points.hard_proportion.to_numpy() + 0.01 * (index - (len(languages) - 1) / 2)])
        look = {"color": HIGHLIGHT, "linewidth": 2.2, "zorder": 3} if marked else {"color": next(grey, "0.5")}
        look = {"linewidth": 1.2, "zorder": 2, **look}
        y, yerr = np.concatenate([[0.0], delta]), np.hstack([np.zeros((2, 1)), errors])
        axis.errorbar(x, y, yerr=yerr, marker="o", capsize=3, label=language_name(language), **look)
        seeds[language] = f"{language_name(language)} {int(points.seeds.min())}"
    axis.set(title="Dose-response: BM25 ranks 1-50", xlabel=PROPORTION, ylabel="Δ MRR@100 against p = 0")
    axis.grid(alpha=0.3)
    axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    return "dose-response seeds per point: " + ", ".join(seeds.values()) if seeds else ""


def _bars(axis: Any, labels: list[str], rows: pd.DataFrame, title: str, margin: float | None) -> None:
    """Horizontal Δ with its 95% interval per row, significant ones (calibrated, interval off 0) in colour."""
    y = np.arange(len(rows))[::-1]
    delta = rows["delta_mrr@100"].to_numpy()
    errors = np.vstack([delta - rows.ci_low, rows.ci_high - delta]).clip(min=0)
    clear = rows.gives_verdict.astype(bool).to_numpy() & ((rows.ci_high < 0) | (rows.ci_low > 0)).to_numpy()
    if margin:
        axis.axvspan(-margin, margin, color="0.92")
    axis.axvline(0.0, color="0.4", linewidth=0.8)
    for position, value, error, strong in zip(y, delta, errors.T, clear):
        axis.errorbar(
            [value], [position], xerr=error.reshape(2, 1), fmt="o", capsize=3, color=HIGHLIGHT if strong else "0.4"
        )
    axis.set_yticks(y, labels, fontsize="small")
    axis.set(title=title, xlabel="Δ MRR@100 against p = 0 (95% interval)")
    axis.grid(alpha=0.3, axis="x")


def _seed_text(row: pd.Series) -> str:
    return f"n={int(row.seeds)}" + ("" if row.gives_verdict else ", no verdict")


def plot_answer(tests: pd.DataFrame, trends: pd.DataFrame, path: Path, margin: float | None = None) -> Path | None:
    """answer.png: per (model, stage), the deltas against p = 0 (``tests``) as dose-response per language (coloured
    where ``trends`` call it hurt or helped), map (each language at its highest p) and kinds of hard negatives;
    ``margin`` as a band around 0. None without deltas."""
    if tests.empty:
        return None
    plt = pyplot()
    blocks = list(tests.groupby(["model", "stage"], sort=False))
    rows_of_panels = []
    for (model, stage), block in blocks:
        default = block[block.variant == DEFAULT_VARIANT]
        dose = (default.groupby("language").hard_proportion.nunique() >= 2).any()
        panels = [name for name, shown in (("dose", dose), ("map", default.language.nunique() >= 2)) if shown]
        rows_of_panels.append(panels + (["kinds"] if (block.variant != DEFAULT_VARIANT).any() or not panels else []))
    columns = max(len(panels) for panels in rows_of_panels)
    figure, axes = plt.subplots(
        len(blocks), columns, figsize=(6.2 * columns, 4.6 * len(blocks)), squeeze=False, constrained_layout=True
    )
    captions = []
    for row_axes, ((model, stage), block), panels in zip(axes, blocks, rows_of_panels):
        marked = trends[(trends.model == model) & (trends.stage == stage) & (trends.variant == DEFAULT_VARIANT)]
        hurt_or_helped = set(marked[marked.verdict_kind.isin(["hurts", "helps"])].language)
        for axis in row_axes[len(panels) :]:
            axis.set_visible(False)
        for axis, panel in zip(row_axes, panels):
            if panel == "dose":
                captions.append(_dose_panel(axis, block, hurt_or_helped, margin))
                continue
            top = block.groupby(["language", "variant"]).hard_proportion.transform("max")
            at_top = block[np.isclose(block.hard_proportion, top)]
            if panel == "map":
                rows = at_top[at_top.variant == DEFAULT_VARIANT].sort_values("delta_mrr@100", ascending=False)
                labels = [
                    f"{language_name(r.language)} (p={r.hard_proportion:g}, {_seed_text(r)})"
                    for _, r in rows.iterrows()
                ]
                _bars(axis, labels, rows, "Every language, BM25 ranks 1-50", margin)
            else:
                others = at_top[at_top.variant != DEFAULT_VARIANT]
                languages = list(dict.fromkeys(others.language if not others.empty else at_top.language))
                rows = at_top[at_top.language.isin(languages)].copy()
                rows["_order"] = rows.language.map({language: i for i, language in enumerate(languages)})
                rows = rows.sort_values(["_order", "delta_mrr@100"], ascending=[True, False])
                labels = [
                    f"{language_name(r.language)}: {negatives_name(r.variant)} ({_seed_text(r)})"
                    for _, r in rows.iterrows()
                ]
                _bars(axis, labels, rows, "Kinds of hard negatives, p = 1 against p = 0", margin)
        row_axes[0].annotate(
            f"{model}, {stage}", (0, 1.08), xycoords="axes fraction", fontsize="small", fontweight="bold"
        )
    captions.append(
        "Paired deltas against p = 0 (same seeds and queries); bars: 95% intervals; n: seeds both cells ran; "
        "coloured: the tests call it (3+ paired seeds); grey band: equivalence margin"
    )
    figure.supxlabel("\n".join(filter(None, captions)), fontsize="small", wrap=True)
    return save_figure(figure, path, dpi=120, bbox_inches="tight")
