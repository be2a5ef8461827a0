"""Aggregate a multirun folder into results.csv, results.md and mrr_vs_proportion.png.

    python -m mdr.reporting.aggregate outputs/hardneg_sweep/multiruns/<time>
    python -m mdr.reporting.aggregate outputs/hardneg_sweep          # the latest multirun under it

Every job folder with ``metrics.json`` is a result; one with ``failed.json`` is listed as failed with its
error; one with neither (killed, still running, never started) is listed as missing. The comparison is
per (model, stage, language): each hard-negative proportion against proportion 0 (standard sampling),
MRR@100 mean +- std over seeds, and a paired randomisation test over queries on the per-query MRR@100
averaged over seeds, with Holm's correction within each (model, stage, language).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pandas as pd

from mdr.reporting.significance import holm, paired_randomization_test
from mdr.utils.io import atomic_write_text

KEYS = ["model", "stage", "language", "hard_proportion", "seed"]
METRIC_COLUMNS = ["mrr@100", "recall@100", "ndcg@10"]


def resolve_sweep_dir(path: str | Path) -> Path:
    """``path`` itself if it holds job folders, else its latest ``multiruns/<time>`` folder."""
    root = Path(path)
    if any(root.glob("*/.hydra")):
        return root
    candidates = sorted((root / "multiruns").glob("*")) if (root / "multiruns").is_dir() else []
    if not candidates:
        raise FileNotFoundError(f"{root}: no job folders (*/.hydra) and no multiruns/ inside")
    return candidates[-1]


def collect(sweep_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(completed runs, failed or missing jobs) under ``sweep_dir``."""
    rows: list[dict[str, Any]] = []
    problems: list[dict[str, Any]] = []
    for job in sorted(p.parent for p in sweep_dir.glob("*/.hydra")):
        overrides = (job / ".hydra" / "overrides.yaml").read_text() if (job / ".hydra/overrides.yaml").is_file() else ""
        cell = " ".join(line.removeprefix("- ").strip() for line in overrides.splitlines() if line.strip())
        if (job / "metrics.json").is_file():
            metrics = json.loads((job / "metrics.json").read_text())
            rows.append(
                {
                    **{k: metrics.get(k) for k in KEYS},
                    **metrics["metrics"],
                    "low_resource": metrics.get("low_resource"),
                    "num_queries": metrics["num_queries"],
                    "job": job.name,
                    "per_query_file": str(job / metrics["per_query_file"]),
                }
            )
        elif (job / "failed.json").is_file():
            error = json.loads((job / "failed.json").read_text())["error"]
            problems.append({"job": job.name, "status": "failed", "error": error, "overrides": cell})
        else:
            problems.append({"job": job.name, "status": "missing", "error": "", "overrides": cell})
    return pd.DataFrame(rows), pd.DataFrame(problems, columns=["job", "status", "error", "overrides"])


def _per_query_mrr(files: list[str]) -> pd.Series:
    """Per-query MRR@100 averaged over the given runs (seeds)."""
    frames = [pd.read_csv(f, sep="\t", dtype={"query_id": str}).set_index("query_id")["mrr@100"] for f in files]
    return pd.concat(frames, axis=1).mean(axis=1)


def significance(results: pd.DataFrame, trials: int = 10_000) -> pd.DataFrame:
    """Each proportion vs proportion 0 per (model, stage, language): delta MRR@100, p-value, Holm p-value."""
    out: list[dict[str, Any]] = []
    for (model, stage, language), group in results.groupby(["model", "stage", "language"]):
        baseline = group[group.hard_proportion == 0.0]
        if baseline.empty:
            continue
        base = _per_query_mrr(baseline.per_query_file.tolist())
        tests = []
        for proportion, cell in group[group.hard_proportion != 0.0].groupby("hard_proportion"):
            other = _per_query_mrr(cell.per_query_file.tolist())
            common = base.index.intersection(other.index)
            p_value = paired_randomization_test(other[common], base[common], trials)
            tests.append(
                {
                    "model": model,
                    "stage": stage,
                    "language": language,
                    "hard_proportion": proportion,
                    "delta_mrr@100": float(other[common].mean() - base[common].mean()),
                    "queries": len(common),
                    "p_value": p_value,
                }
            )
        for test, adjusted in zip(tests, holm([t["p_value"] for t in tests]) if tests else []):
            out.append({**test, "p_holm": adjusted})
    return pd.DataFrame(out)


def markdown_table(results: pd.DataFrame, tests: pd.DataFrame) -> str:
    """Language x proportion MRR@100 (mean +- std over seeds, n seeds), one table per (model, stage)."""
    lines: list[str] = []
    for (model, stage), block in results.groupby(["model", "stage"]):
        proportions = sorted(block.hard_proportion.unique())
        lines += [
            f"### MRR@100, model={model}, stage={stage}",
            "",
            "| language | " + " | ".join(f"p={p:g}" for p in proportions) + " |",
            "|---|" + "---:|" * len(proportions),
        ]
        for language, rows in block.groupby("language"):
            cells = []
            for proportion in proportions:
                values = rows[rows.hard_proportion == proportion]["mrr@100"]
                if values.empty:
                    cells.append("–")
                    continue
                std = values.std(ddof=1) if len(values) > 1 else float("nan")
                mark = ""
                if not tests.empty and proportion != 0:
                    hit = tests[
                        (tests.model == model)
                        & (tests.stage == stage)
                        & (tests.language == language)
                        & (tests.hard_proportion == proportion)
                    ]
                    if not hit.empty and hit.p_holm.iloc[0] < 0.05:
                        mark = "*"
                spread = f" ± {std:.4f}" if len(values) > 1 else ""
                cells.append(f"{values.mean():.4f}{spread}{mark} (n={len(values)})")
            low = rows.low_resource.iloc[0]
            lines.append(f"| {language}{' (low-resource)' if low else ''} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append(
        "`*`: different from p=0 (standard random negatives) at Holm-adjusted p < 0.05, paired "
        "randomisation test over queries on per-query MRR@100 averaged over seeds."
    )
    return "\n".join(lines)


def plot(results: pd.DataFrame, path: Path) -> Path:
    """MRR@100 vs hard-negative proportion, one line per language (error bars: std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = list(results.groupby(["model", "stage"]))
    figure, axes = plt.subplots(1, len(blocks), figsize=(5.5 * len(blocks), 4), squeeze=False)
    for axis, ((model, stage), block) in zip(axes[0], blocks):
        for language, rows in block.groupby("language"):
            summary = rows.groupby("hard_proportion")["mrr@100"].agg(["mean", "std"]).fillna(0.0)
            axis.errorbar(summary.index, summary["mean"], yerr=summary["std"], marker="o", capsize=3, label=language)
        axis.set(title=f"{model} / {stage}", xlabel="proportion of mined hard negatives", ylabel="MRR@100")
        axis.grid(alpha=0.3)
        axis.legend(title="language")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    figure.savefig(tmp, dpi=120)
    plt.close(figure)
    tmp.replace(path)
    return path


def aggregate(sweep_dir: str | Path, trials: int = 10_000) -> dict[str, Any]:
    """Write results.csv, significance.csv, results.md and mrr_vs_proportion.png into the sweep folder."""
    root = resolve_sweep_dir(sweep_dir)
    results, problems = collect(root)
    summary: dict[str, Any] = {
        "sweep_dir": str(root),
        "completed": len(results),
        "failed": int((problems.status == "failed").sum()),
        "missing": int((problems.status == "missing").sum()),
    }
    sections = [
        f"# Results: {root}",
        "",
        f"{summary['completed']} completed, {summary['failed']} failed, {summary['missing']} missing.",
        "",
    ]
    if not results.empty:
        results = results.sort_values(KEYS).reset_index(drop=True)
        tests = significance(results, trials)
        atomic_write_text(root / "results.csv", results.drop(columns=["per_query_file"]).to_csv(index=False))
        atomic_write_text(root / "significance.csv", tests.to_csv(index=False))
        sections += [markdown_table(results, tests), ""]
        if not tests.empty:
            sections += ["### Paired tests against p=0", "", tests.to_markdown(index=False, floatfmt=".4f"), ""]
        summary["plot"] = str(plot(results, root / "mrr_vs_proportion.png"))
    if not problems.empty:
        sections += ["### Failed and missing jobs", "", problems.to_markdown(index=False), ""]
    atomic_write_text(root / "results.md", "\n".join(sections))
    summary["table"] = str(root / "results.md")
    return summary


def main(argv: list[str] | None = None) -> int:
    """CLI: aggregate, print the Markdown table; exit 1 if any job failed or is missing."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir")
    parser.add_argument("--trials", type=int, default=10_000, help="randomisation test permutations")
    args = parser.parse_args(argv)
    summary = aggregate(args.sweep_dir, args.trials)
    print(Path(summary["table"]).read_text())
    return 1 if summary["failed"] or summary["missing"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
