"""The comparison of stage schedules: MRR@100 per (model, evaluation language, schedule), each schedule against
``target_only`` (else the first schedule) with the tests of :mod:`mdr.reporting.analysis`, Holm within each
(model, language); a schedule run at several p or variants gets one column per (p, variant)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from mdr.reporting.analysis import EQUIVALENCE_MARGIN, CellTables, comparison, resource_class, sort_results, with_holm
from mdr.reporting.integrity import METRIC

REFERENCE_SCHEDULE = "target_only"


def compare_schedules(results: pd.DataFrame, *, equivalence_margin: float = EQUIVALENCE_MARGIN) -> pd.DataFrame:
    """One row per (model, evaluation language, schedule): its mean and, but for the reference, its comparison."""
    results = sort_results(results)
    tables = CellTables(results)
    rows: list[dict[str, Any]] = []
    for (model, language), block in results.groupby(["model", "language"], sort=False):
        conditions = sorted(
            block.groupby(["stage", "hard_proportion", "variant"], sort=False, dropna=False),
            key=lambda item: (item[0][0] != "zero_shot", item[0][0] != REFERENCE_SCHEDULE, str(item[0][0])),
        )
        names = [str(key[0]) for key, _ in conditions]
        labelled = [
            (stage if names.count(stage) == 1 else f"{stage} (p={proportion:g}, {variant})", stage, runs)
            for (stage, proportion, variant), runs in conditions
        ]
        reference = next((item for item in labelled if item[1] == REFERENCE_SCHEDULE), labelled[0])
        family: list[dict[str, Any]] = []
        for label, stage, runs in labelled:
            values = runs[METRIC]
            row: dict[str, Any] = {
                "model": model,
                "language": language,
                "schedule": label,
                "stage": stage,
                "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if len(values) > 1 else float("nan"),
                "n": len(values),
                "low_resource": resource_class(runs.low_resource),
                "reference": reference[0],
            }
            if label != reference[0]:
                row.update(comparison(tables, runs, reference[2], equivalence_margin))
                del row["_estimate"]
                family.append(row)
            rows.append(row)
        with_holm(family)
    return pd.DataFrame(rows)
