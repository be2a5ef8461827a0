"""Seed-aware statistics of a sweep (docs/statistics.md): contrasts of cell means with Satterthwaite t intervals
(seeds x queries ANOVA), TOST, trend and curvature in p, wins / ties / losses, Holm and verdicts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special


@dataclass(frozen=True)
class Cell:
    """One sweep cell: (seeds, queries) per-query scores; ``group``: the cells a pooled contrast estimates the seed
    level over; ``seed_free``: runs the seed does not change (zero-shot), paired with every seed."""

    seeds: tuple[int, ...]
    scores: np.ndarray
    group: str = ""
    seed_free: bool = False

    def __post_init__(self) -> None:
        if self.scores.ndim != 2 or self.scores.shape[0] != len(self.seeds) or self.scores.shape[1] == 0:
            raise ValueError(f"a cell needs a (seeds, queries) table with queries > 0, got {self.scores.shape}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"a cell's seeds must be distinct, got {self.seeds}")


@dataclass(frozen=True)
class Parts:
    """A contrast's value and its variance as (c_i * MS_i, df_i) terms (Satterthwaite's input), at least ``floor``;
    ``seed_level``: ``paired`` (one seed block), ``unpaired`` (several), ``partial`` (a 1-seed block) or ``none``."""

    value: float
    terms: tuple[tuple[float, float], ...]
    seeds: int
    queries: int
    seed_level: str
    floor: float = 0.0
    seed_ids: tuple[int, ...] = ()
    dropped_seeds: bool = False


@dataclass(frozen=True)
class Estimate:
    """A contrast with its t interval, two-sided p-value, standard error and Satterthwaite df (inf: no variance)."""

    value: float
    ci_low: float
    ci_high: float
    p_value: float
    seeds: int
    queries: int
    seed_level: str
    se: float
    df: float
    seed_ids: tuple[int, ...] = ()
    dropped_seeds: bool = False

    @property
    def gives_verdict(self) -> bool:
        """Whether the contrast rests on enough paired seeds for the calibrated tests (:data:`CALIBRATED_SEEDS`)."""
        return self.seed_level == "paired" and self.seeds >= CALIBRATED_SEEDS

    def interval(self, confidence: float) -> tuple[float, float]:
        """The two-sided ``confidence`` interval of this estimate."""
        half = _t_quantile(0.5 + confidence / 2, self.df) * self.se
        return self.value - half, self.value + half


def _t_quantile(level: float, df: float) -> float:
    """Quantile of Student's t (normal for infinite df)."""
    return float(special.stdtrit(df, level)) if math.isfinite(df) else float(special.ndtri(level))


def _t_cdf(x: float, df: float) -> float:
    """Distribution function of Student's t (normal for infinite df)."""
    return float(special.stdtr(df, x)) if math.isfinite(df) else float(special.ndtr(x))


def residual_mean_square(table: np.ndarray) -> float:
    """The seed-by-query residual mean square of a (seeds, queries) table (two-way ANOVA, no replication)."""
    seeds, queries = table.shape
    if seeds < 2 or queries < 2:
        return 0.0
    centred = table - table.mean()
    total = float((centred**2).sum())
    between_seeds = queries * float((centred.mean(axis=1) ** 2).sum())
    between_queries = seeds * float((centred.mean(axis=0) ** 2).sum())
    return max(0.0, total - between_seeds - between_queries) / ((seeds - 1) * (queries - 1))


def effective_df(centred: np.ndarray, df: int) -> float:
    """Satterthwaite's degrees of freedom of a mean square of ``centred`` values with excess kurtosis k (taken as
    0 where negative): ``2 / (2 / df + k / n)``, fewer than ``df`` for sparse, heavy-tailed per-query differences."""
    values = centred.ravel()
    if df < 1 or values.size < 4:
        return float(max(df, 1))
    second = float((values**2).mean())
    if second == 0:
        return float(df)
    excess = max(0.0, float((values**4).mean()) / second**2 - 3.0)
    return 2.0 / (2.0 / df + excess / values.size)


CALIBRATED_SEEDS = 3  # the fewest paired seeds the tests are calibrated for (docs/statistics.md#calibration)


def seed_label(seeds: Sequence[int], separator: str = ",", shortest_run: int = 3) -> str:
    """``0-4`` for a run of at least ``shortest_run`` consecutive seeds, else ``0,2,3``."""
    ordered = sorted(seeds)
    if len(ordered) >= shortest_run and ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"{ordered[0]}-{ordered[-1]}"
    return separator.join(str(seed) for seed in ordered)


def paired_on_shared_seeds(cells: Sequence[Cell], weights: Sequence[float]) -> tuple[list[Cell], tuple[int, ...], bool]:
    """The cells restricted to the seeds every weighted cell ran (a seed-free cell repeated at each), those seeds,
    and whether any was dropped; the cells as they are without a shared seed."""
    active = [cell for cell, w in zip(cells, weights) if w != 0]
    seeded = [set(cell.seeds) for cell in active if not cell.seed_free]
    if not seeded:
        return list(cells), tuple(sorted(set().union(*(cell.seeds for cell in active)))), False
    shared = set.intersection(*seeded)
    if not shared or all(set(cell.seeds) == shared for cell in active):
        return list(cells), tuple(sorted(shared)), False
    order = tuple(sorted(shared))
    restricted = []
    for cell in cells:
        rows = [i for i, seed in enumerate(cell.seeds) if seed in shared]
        if cell.seed_free:
            scores = np.repeat(cell.scores.mean(axis=0, keepdims=True), len(order), axis=0)  # (S, Q)
            restricted.append(Cell(order, scores, cell.group, seed_free=True))
        elif rows:
            restricted.append(Cell(tuple(cell.seeds[i] for i in rows), cell.scores[rows], cell.group))
        else:  # a family cell without the shared seeds: kept as given, outside the seed block
            restricted.append(cell)
    return restricted, order, any(set(cell.seeds) != shared for cell in active if not cell.seed_free)


def seed_interaction_mean_square(cells: Sequence[Cell]) -> float:
    """The cell x seed interaction mean square of the seed means of cells with the same seeds: for a contrast ``w``
    with ``sum w = 0``, ``sum w^2 * MS / S`` estimates its seed level with ``(C - 1)(S - 1)`` degrees of freedom."""
    means = np.stack([cell.scores[np.argsort(cell.seeds)].mean(axis=1) for cell in cells])  # (C, S)
    levels, seeds = means.shape
    interaction = means - means.mean(axis=0, keepdims=True) - means.mean(axis=1, keepdims=True) + means.mean()
    return float((interaction**2).sum()) / ((levels - 1) * (seeds - 1))


def _pooled_seed_terms(
    cells: Sequence[Cell], active: Sequence[tuple[Cell, float]], key: tuple[int, ...]
) -> list[tuple[float, float]] | None:
    """One seed-level term per group of the seed block ``key`` (see ``pool`` in :func:`contrast_parts`), or None
    where a group's weights do not sum to zero (its seed effect does not cancel)."""
    terms = []
    seeds = len(key)
    block = [(cell, w) for cell, w in active if tuple(sorted(cell.seeds)) == key]
    members = [cell for cell in cells if tuple(sorted(cell.seeds)) == key]
    for group in dict.fromkeys(cell.group for cell, _ in block):
        weights = [w for cell, w in block if cell.group == group]
        if abs(sum(weights)) > 1e-9 * sum(abs(w) for w in weights):
            return None
        family = [cell for cell in members if cell.group == group]
        squares = sum(w * w for w in weights)
        terms.append((squares * seed_interaction_mean_square(family) / seeds, float((len(family) - 1) * (seeds - 1))))
    return terms


def contrast_parts(cells: Sequence[Cell], weights: Sequence[float], pool: bool = False) -> Parts:
    """``sum_j weights[j] * mean(cells[j])`` and its variance terms (cells on one query order); ``pool``: each
    group's seed level from all its cells given (:func:`seed_interaction_mean_square`) where its weights sum to 0."""
    if len(cells) != len(weights) or not cells:
        raise ValueError(f"{len(cells)} cells for {len(weights)} weights")
    query_counts = {cell.scores.shape[1] for cell in cells}
    if len(query_counts) != 1:
        raise ValueError(f"cells are not on one query order: {sorted(query_counts)} queries")
    queries = query_counts.pop()
    cells, seed_ids, dropped = paired_on_shared_seeds(cells, weights)
    active = [(cell, float(w)) for cell, w in zip(cells, weights) if w != 0]
    if not active:
        return Parts(0.0, (), min(len(c.seeds) for c in cells), queries, "none")
    blocks: dict[tuple[int, ...], np.ndarray] = {}
    for cell, w in active:  # cells with the same seeds: one per-seed contrast table (S, Q)
        key = tuple(sorted(cell.seeds))
        table = w * cell.scores[np.argsort(cell.seeds)]  # (S, Q), rows in seed order
        blocks[key] = blocks[key] + table if key in blocks else table
    value = float(sum(table.mean() for table in blocks.values()))
    per_query = np.sum([table.mean(axis=0) for table in blocks.values()], axis=0)  # (Q,)
    query_df = effective_df(per_query - per_query.mean(), queries - 1)
    query_term = (float(per_query.var(ddof=1)) / queries if queries > 1 else 0.0, query_df)
    seed_terms: list[tuple[float, float]] = []
    residual_terms: list[tuple[float, float]] = []
    for key, table in blocks.items():
        seeds = table.shape[0]
        if seeds < 2:
            continue  # nothing estimates this block's seed variance: its residual stays in the query term
        pooled = _pooled_seed_terms(cells, active, key) if pool else None
        if pooled is not None:
            seed_terms += pooled
        else:
            seed_terms.append((float(table.mean(axis=1).var(ddof=1)) / seeds, float(seeds - 1)))
        residuals = table - table.mean(axis=1, keepdims=True) - table.mean(axis=0, keepdims=True) + table.mean()
        residual_df = effective_df(residuals, (seeds - 1) * (queries - 1))
        residual_terms.append((-residual_mean_square(table) / (seeds * queries), residual_df))
    terms = [query_term, *seed_terms, *residual_terms]
    # the query term and the seed terms each estimate a part of Var(theta_hat): the larger floors the total
    floor = max(query_term[0], sum(v for v, _ in seed_terms))
    estimated = [table.shape[0] >= 2 for table in blocks.values()]  # the seed level of each block
    level = "unpaired" if all(estimated) else "partial" if any(estimated) else "none"
    level = "paired" if estimated == [True] else level
    seeds = min(table.shape[0] for table in blocks.values())
    return Parts(value, tuple(terms), seeds, queries, level, floor, seed_ids, dropped)


def combine(parts: Sequence[Parts], coefficients: Sequence[float]) -> Parts:
    """``sum_i coefficients[i] * parts[i]`` for contrasts on independent query sets and seeds."""
    if len(parts) != len(coefficients) or not parts:
        raise ValueError(f"{len(parts)} parts for {len(coefficients)} coefficients")
    levels = {part.seed_level for part in parts}
    level = "unpaired" if levels <= {"paired", "unpaired"} else ("none" if levels == {"none"} else "partial")
    return Parts(
        value=float(sum(a * part.value for part, a in zip(parts, coefficients))),
        terms=tuple((a * a * v, df) for part, a in zip(parts, coefficients) for v, df in part.terms),
        seeds=min(part.seeds for part in parts),
        queries=min(part.queries for part in parts),
        seed_level=level,
        floor=float(sum(a * a * _variance(part) for part, a in zip(parts, coefficients))),
        seed_ids=tuple(sorted(set.intersection(*(set(part.seed_ids) for part in parts)))),
        dropped_seeds=any(part.dropped_seeds for part in parts),
    )


def _variance(parts: Parts) -> float:
    """The variance of a contrast: its terms' sum, at least its floor."""
    return max(0.0, parts.floor, sum(v for v, _ in parts.terms))


def estimate(parts: Parts, confidence: float = 0.95) -> Estimate:
    """The t interval and two-sided p-value of a contrast, Satterthwaite degrees of freedom (of the terms)."""
    variance = _variance(parts)
    if variance <= 0.0:  # no spread at all: the value is known exactly
        low = high = parts.value
        se, df, p_value = 0.0, math.inf, 1.0 if parts.value == 0 else 0.0
    else:
        df = variance**2 / sum(v * v / df for v, df in parts.terms if v != 0)
        se = math.sqrt(variance)
        half = _t_quantile(0.5 + confidence / 2, df) * se
        low, high = parts.value - half, parts.value + half
        p_value = min(1.0, 2 * _t_cdf(-abs(parts.value) / se, df))
    shared = {name: getattr(parts, name) for name in ("seeds", "queries", "seed_level", "seed_ids", "dropped_seeds")}
    return Estimate(value=parts.value, ci_low=low, ci_high=high, p_value=p_value, se=se, df=df, **shared)


def contrast(cells: Sequence[Cell], weights: Sequence[float], confidence: float = 0.95, pool: bool = False) -> Estimate:
    """:func:`contrast_parts` with its Satterthwaite t interval and p-value (:func:`estimate`)."""
    return estimate(contrast_parts(cells, weights, pool), confidence)


def tost(value: Estimate, margin: float) -> float:
    """Two one-sided tests of ``|theta| >= margin``: p < alpha claims ``|theta| < margin``."""
    if margin <= 0:
        raise ValueError(f"an equivalence margin must be > 0, got {margin}")
    if value.se == 0:
        return 0.0 if abs(value.value) < margin else 1.0
    below = _t_cdf((value.value - margin) / value.se, value.df)  # H0: theta >= +margin
    above = _t_cdf(-(value.value + margin) / value.se, value.df)  # H0: theta <= -margin
    return max(below, above)


def slope_weights(proportions: Sequence[float]) -> np.ndarray:
    """Weights that turn cell means into the least-squares slope in p over every level given."""
    x = np.asarray(proportions, dtype=np.float64)
    centred = x - x.mean()
    spread = float((centred**2).sum())
    if len(x) < 2 or spread == 0:
        raise ValueError(f"a slope needs two distinct proportions, got {list(proportions)}")
    return centred / spread


def curvature_weights(proportions: Sequence[float]) -> np.ndarray:
    """Weights that turn cell means into the quadratic coefficient of a least-squares fit a + b p + c p^2."""
    x = np.asarray(proportions, dtype=np.float64)
    if len(np.unique(x)) <= 2:
        raise ValueError(f"a degree-2 fit needs 3 distinct proportions, got {list(proportions)}")
    weights = np.linalg.pinv(np.vander(x, 3, increasing=True))[2]  # (levels,) the p^2 row of (1, p, p^2)
    return np.where(np.abs(weights) < 1e-12 * np.abs(weights).max(), 0.0, weights)


def step_weights(levels: int) -> list[np.ndarray]:
    """Weights of the differences between adjacent levels (level k+1 minus level k)."""
    return list(np.diff(np.eye(levels), axis=0))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given)."""
    order = np.argsort(p_values, kind="stable")
    adjusted = np.empty(len(p_values))
    running = 0.0
    for position, index in enumerate(order):
        running = adjusted[index] = max(running, min(1.0, (len(p_values) - position) * p_values[index]))
    return adjusted.tolist()


def monotone(steps: Sequence[Estimate], alpha: float = 0.05) -> int:
    """+1 (-1) when every adjacent step rises (falls) at Holm-adjusted p < ``alpha``, else 0."""
    if not steps:
        return 0
    adjusted = holm([step.p_value for step in steps])
    signs = {int(np.sign(step.value)) for step in steps}
    return signs.pop() if max(adjusted) < alpha and len(signs) == 1 else 0


def win_tie_loss(treated: Cell, baseline: Cell, tolerance: float = 1e-9) -> tuple[int, int, int]:
    """Queries where the treated cell's seed-averaged score is above / within ``tolerance`` of / below baseline's."""
    difference = treated.scores.mean(axis=0) - baseline.scores.mean(axis=0)  # (Q,)
    wins = int((difference > tolerance).sum())
    losses = int((difference < -tolerance).sum())
    return wins, difference.size - wins - losses, losses


def _p(value: float) -> str:
    return "p<0.001" if value < 0.001 else f"p={value:.3f}"


def _seeds_text(seeds: int) -> str:
    alone = " (training-seed variance not estimated: intervals from queries only)"
    return f"at {seeds} seed{'s' if seeds != 1 else ''}" + (alone if seeds == 1 else "")


@dataclass(frozen=True)
class Decision:
    """A trend's verdict: ``kind`` (hurts, helps, curved, equivalent, inconclusive, no verdict) and its ``text``."""

    kind: str
    text: str


def decide(
    slope: Estimate,
    curvature: Estimate | None,
    deltas: Sequence[tuple[float, Estimate]],
    steps: Sequence[Estimate] = (),
    margin: float = 0.01,
    alpha: float = 0.05,
) -> Decision:
    """The verdict of a trend (docs/statistics.md#the-verdict): hurt / help / curved where the slope / quadratic term
    (Holm over the two) is significant, no effect larger than ``margin`` where every delta passes TOST, else
    inconclusive; no verdict below :data:`CALIBRATED_SEEDS` paired seeds. ``curvature``: None below three levels."""
    seeds = min([slope.seeds, *(d.seeds for _, d in deltas)])
    if not all(e.gives_verdict for e in [slope, *(d for _, d in deltas)]):
        shared = sorted(set(slope.seed_ids).intersection(*(d.seed_ids for _, d in deltas)))
        on = f"paired on seed{'s' if len(shared) != 1 else ''} {seed_label(shared)}" if shared else "no seed shared"
        why = f"below the {CALIBRATED_SEEDS} paired seeds the tests are calibrated for"
        return Decision("no verdict", f"no verdict: {on}, {why} (slope {slope.value:+.4f} per unit p, estimate only)")
    adjusted = holm([slope.p_value] + ([curvature.p_value] if curvature is not None else []))
    claims: list[str] = []
    kind = ""
    if adjusted[0] < alpha:
        kind = "hurts" if slope.value < 0 else "helps"
        text = (
            f"{kind[:-1]} (slope {'<' if slope.value < 0 else '>'} 0: {slope.value:+.4f} per unit p, {_p(adjusted[0])}"
        )
        if len(steps) >= 2 and monotone(steps, alpha) == int(np.sign(slope.value)):  # one step: nothing to add
            text += ", monotone: every step " + ("down" if slope.value < 0 else "up")
        claims.append(text + ")")
        delta_adjusted = holm([d.p_value for _, d in deltas]) if deltas else []
        against = [
            f"{'better' if d.value > 0 else 'worse'} at p={p:g} ({d.value:+.4f}, {_p(q)})"
            for (p, d), q in zip(deltas, delta_adjusted)
            if q < alpha and np.sign(d.value) != np.sign(slope.value)
        ]
        if against:
            claims.append("but " + ", ".join(against))
    if curvature is not None and adjusted[1] < alpha:
        curved = f"curved (quadratic term {curvature.value:+.4f}, {_p(adjusted[1])})"
        claims.append(curved if kind else f"{curved} response to hard negatives, no linear trend")
        kind = kind or "curved"
    if claims:
        subject = "hard negatives " if kind != "curved" else ""
        return Decision(kind, subject + "; ".join(claims) + f" {_seeds_text(seeds)}")
    tests = [tost(d, margin) for _, d in deltas] or [tost(slope, margin)]
    if max(tests) < alpha:
        text = f"no effect larger than {margin:g} (TOST, {_p(max(tests))}) {_seeds_text(seeds)}"
        return Decision("equivalent", text)
    bounds = [d.interval(1 - 2 * alpha) for _, d in deltas] or [slope.interval(1 - 2 * alpha)]
    largest = max(max(abs(low), abs(high)) for low, high in bounds)
    text = f"no trend (slope {_p(adjusted[0])}), effects up to {largest:.3f} not excluded"
    return Decision("inconclusive", f"inconclusive {_seeds_text(seeds)}: {text}")
