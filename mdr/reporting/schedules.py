"""The comparison of stage schedules: MRR@100 per (model, evaluation language, schedule), each schedule against
``target_only`` (else the first schedule), with the tests of :mod:`mdr.reporting.analysis`."""

from __future__ import annotations

from typing import Any

import pandas as pd

from mdr.reporting.analysis import EQUIVALENCE_MARGIN, _CellTables, _comparison, resource_class, sort_results
from mdr.reporting.integrity import METRIC
from mdr.reporting.statistics import holm

REFERENCE_SCHEDULE = "target_only"


def _schedule_order(stage: str) -> tuple[bool, bool, str]:
    return (stage != "zero_shot", stage != REFERENCE_SCHEDULE, stage)


def compare_schedules(results: pd.DataFrame, *, equivalence_margin: float = EQUIVALENCE_MARGIN) -> pd.DataFrame:
    """MRR@100 per (model, evaluation language, schedule), each schedule against the reference schedule.

    The reference is ``target_only`` where the sweep ran it, else the first schedule; a schedule that ran with
    several proportions or variants gets one column per (p, variant). Differences use the Satterthwaite t test
    of :mod:`mdr.reporting.statistics` (paired by seed and query), with TOST against ``equivalence_margin``,
    wins / ties / losses and nDCG@10; Holm within each (model, language).
    """
    results = sort_results(results)
    tables = _CellTables(results)
    rows: list[dict[str, Any]] = []
    for (model, language), block in results.groupby(["model", "language"], sort=False):
        conditions = sorted(
            block.groupby(["stage", "hard_proportion", "variant"], sort=False, dropna=False),
            key=lambda item: _schedule_order(str(item[0][0])),
        )
        names = [str(key[0]) for key, _ in conditions]
        labelled = []
        for (stage, proportion, variant), runs in conditions:
            label = stage if names.count(stage) == 1 else f"{stage} (p={proportion:g}, {variant})"
            labelled.append((label, stage, runs))
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
                compared = _comparison(tables, runs, reference[2], equivalence_margin)
                compared.pop("_estimate")
                row.update(compared)
                family.append(row)
            rows.append(row)
        for row, adjusted in zip(family, holm([r["p_value"] for r in family])):
            row["p_holm"] = adjusted
    return pd.DataFrame(rows)
