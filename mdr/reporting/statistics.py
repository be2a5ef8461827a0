"""Seed-aware statistics for a sweep: contrasts of cell means with Satterthwaite t tests, equivalence (TOST),
trend and curvature in p, language x p interactions, per-query wins / ties / losses, Holm, verdicts.

A sweep cell (model, stage, language, variant, proportion p) holds one run per training seed, each scored on
the same test queries: a (seeds x queries) table of per-query scores. Every estimate is a linear contrast of
cell means, ``theta = sum_j w_j * mean(cell_j)`` (a delta against p = 0: w = (+1, -1); the least-squares slope
in p; the quadratic term; a delta of deltas between two languages). Cells with the same seeds form one *seed
block* and are paired by seed: the block's per-seed contrast table ``D[s, q] = sum_j w_j * y_j[s, q]``. Seeds
and queries are crossed random factors::

    D[s, q] = theta + g[q] + v[s] + r[s, q]     (query effect g, seed effect v, seed x query residual r)

so, for one block of S seeds and Q queries, ``Var(theta_hat) = sg^2 / Q + sv^2 / S + sr^2 / (S Q)``. The
two-way ANOVA of D estimates it without bias from three mean squares,
``(MS_seed + MS_query - MS_residual) / (S Q)``, and Satterthwaite's formula gives the degrees of freedom of
that combination (``V^2 / sum_i (c_i MS_i)^2 / df_i``). The seed-mean spread ``MS_seed / Q`` holds both the
seed variance (S - 1 degrees of freedom) and the seed x query noise, which 635 queries estimate to within a few
per cent; a t(S - 1) on the whole spread (the previous procedure) is conservative, Satterthwaite's df is not.
A language's contrasts (deltas against p = 0, slope, quadratic term, steps) pool the seed level over all of its
levels (``pool``): the cell x seed interaction of the seed means, ``(C - 1)(S - 1)`` degrees of freedom instead
of ``S - 1``, which keeps the Satterthwaite df honest at 3 seeds (a plug-in df from 2 df is liberal). Where the
unbiased total comes out below one of its parts (a negative variance component) it is floored there, with the df
of every term. Several seed blocks (cells run with different seeds) add one seed term and one residual term
each; the query term is shared (the same queries in every cell). Contrasts over different query sets (two
languages whose queries cannot be matched) add their variance terms as independent parts.

Calibration on simulated nulls with realistic variance components: ``benchmarks/calibration.py`` and
docs/statistics.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special


@dataclass(frozen=True)
class Cell:
    """One sweep cell: per-query scores of each seed's run, columns in a query order shared by all cells.

    Attributes:
        seeds: the training seed of each row of ``scores`` (distinct).
        scores: (seeds, queries) per-query metric.
        group: cells of one group (one language's proportions) share a seed-level spread when a contrast pools
            it (:func:`contrast_parts`).
        seed_free: runs the seed does not change (nothing trained: zero-shot); paired with every seed of the
            cells it is compared with.
    """

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
    """A contrast's value and its variance as a sum of scaled mean squares (Satterthwaite's input).

    Attributes:
        value: the contrast on the observed data.
        terms: (variance contribution c_i * MS_i, degrees of freedom of MS_i) per term; contributions of
            residual mean squares are negative.
        seeds: seeds behind the seed level (paired: the shared seeds; else the fewest of any block).
        queries: queries behind the query level (independent query sets: the fewest).
        seed_level: ``paired`` (one seed block), ``unpaired`` (several), ``partial`` (a block of one seed:
            its seed variance is not estimated) or ``none`` (one seed everywhere: queries only).
        seed_ids: the seeds the contrast was computed on (paired: those every weighted cell ran).
        dropped_seeds: whether a weighted cell ran seeds the others did not (left out to pair by seed).
        floor: a lower bound of the variance where the terms' sum comes out below it (a negative variance
            component); the degrees of freedom still come from every term.
    """

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
    """A contrast with its t interval and two-sided p-value.

    Attributes:
        value: the contrast on the observed data.
        ci_low / ci_high: the ``confidence`` interval, value -/+ t(df) * se.
        p_value: two-sided, for value = 0.
        seeds / queries / seed_level: as in :class:`Parts`.
        se: standard error.
        df: Satterthwaite degrees of freedom (inf when the variance is zero).
        seed_ids / dropped_seeds: as in :class:`Parts`.
    """

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
    """Degrees of freedom of a mean square of ``centred`` values, for their kurtosis: ``2 / (2 / df + k / n)``.

    Satterthwaite's df of a mean square is ``2 E[MS]^2 / Var(MS)``; for n values with excess kurtosis k,
    ``Var(s^2) = sigma^4 (2 / df + k / n)``, so normal theory's ``df`` overstates the precision of a variance
    of sparse, heavy-tailed per-query differences (most queries keep their rank, a few move far). Negative k
    (lighter tails than normal) is taken as 0.
    """
    values = centred.ravel()
    if df < 1 or values.size < 4:
        return float(max(df, 1))
    second = float((values**2).mean())
    if second == 0:
        return float(df)
    excess = max(0.0, float((values**4).mean()) / second**2 - 3.0)
    return 2.0 / (2.0 / df + excess / values.size)


CALIBRATED_SEEDS = 3
"""The fewest paired seeds the tests are calibrated for (docs/statistics.md#calibration: 3 and 5); a contrast on
fewer shows its estimate and gives no verdict."""


def seed_label(seeds: Sequence[int]) -> str:
    """``0-4`` for a run of consecutive seeds, else ``0,2,3``."""
    ordered = sorted(seeds)
    if len(ordered) > 2 and ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"{ordered[0]}-{ordered[-1]}"
    return ",".join(str(seed) for seed in ordered)


def paired_on_shared_seeds(cells: Sequence[Cell], weights: Sequence[float]) -> tuple[list[Cell], tuple[int, ...], bool]:
    """The cells restricted to the seeds every weighted cell ran, the shared seeds, and whether any was dropped.

    A contrast between cells of different seed sets (a 2-seed arm against a 5-seed reference) is then a paired
    per-seed contrast on the shared seeds, not a difference of means over different seeds. Zero-weight cells (the
    pooled family) keep the shared seeds too; a seed-free cell (zero-shot) is the same run at every shared seed.
    Without a shared seed the cells are returned as they are.
    """
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
    dropped = any(set(cell.seeds) != shared for cell in active if not cell.seed_free)
    return restricted, order, dropped


def seed_interaction_mean_square(cells: Sequence[Cell]) -> float:
    """The cell x seed interaction mean square of the cells' seed means (cells with the same seeds).

    For a contrast ``w`` over these cells with ``sum w = 0``, ``sum w^2 * MS / S`` estimates the seed level of
    ``Var(theta_hat)`` (the seed variance plus the seed x query noise in the seed means) where the seed-level
    covariance of the cells is compound symmetric (equal variances, equal correlations), with ``(C - 1)(S - 1)``
    degrees of freedom instead of the ``S - 1`` of the contrast's own seed means; for a contrast with equal
    ``|w|`` on every cell it is unbiased under unequal variances too (independent cells).
    """
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
    """``sum_j weights[j] * mean(cells[j])`` and its variance terms (module docstring).

    Args:
        cells: cells on a common query order (same number of columns).
        weights: the contrast, one weight per cell.
        pool: estimate each group's part of the seed level from every cell of the group given (zero weights
            included) with the contrast's seeds, by :func:`seed_interaction_mean_square`, where the contrast's
            weights within each group sum to zero; one term per group, ``(C_g - 1)(S - 1)`` degrees of freedom
            instead of ``S - 1`` for the whole contrast. Groups are taken as independent at the seed level, which
            is conservative for contrasts whose group coefficients sum to zero (a delta of deltas) when a seed's
            runs in two groups correlate positively. Else each seed block's own per-seed contrast.

    Raises:
        ValueError: on mismatched cells and weights or query counts.
    """
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
    # Each of the query term and the summed seed terms estimates a part of Var(theta_hat): the larger is a floor
    # for an unbiased total that sampling noise pushed below it (a negative variance component). The terms stay:
    # the seed mean square's few degrees of freedom still bound how well the variance is known (dropping the
    # seed terms there, as before, gave df near Q and 9-11% type-I error within that branch).
    floor = max(query_term[0], sum(v for v, _ in seed_terms))
    sizes = [table.shape[0] for table in blocks.values()]
    if len(blocks) == 1 and sizes[0] >= 2:
        level, seeds_behind = "paired", sizes[0]
    elif all(size >= 2 for size in sizes):
        level, seeds_behind = "unpaired", min(sizes)
    else:
        level = "partial" if any(size >= 2 for size in sizes) else "none"
        seeds_behind = min(sizes)
    return Parts(value, tuple(terms), seeds_behind, queries, level, floor, seed_ids, dropped)


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
    """The t interval and two-sided p-value of a contrast, Satterthwaite degrees of freedom (of the terms,
    for the variance at its floor too)."""
    variance = _variance(parts)
    if variance <= 0.0:  # no spread at all: the value is known exactly
        exact = 1.0 if parts.value == 0 else 0.0
        return Estimate(
            parts.value,
            parts.value,
            parts.value,
            exact,
            parts.seeds,
            parts.queries,
            parts.seed_level,
            0.0,
            math.inf,
            parts.seed_ids,
            parts.dropped_seeds,
        )
    df = variance**2 / sum(v * v / df for v, df in parts.terms if v != 0)
    se = math.sqrt(variance)
    half = _t_quantile(0.5 + confidence / 2, df) * se
    p_value = 2 * _t_cdf(-abs(parts.value) / se, df)
    return Estimate(
        value=parts.value,
        ci_low=parts.value - half,
        ci_high=parts.value + half,
        p_value=min(1.0, p_value),
        seeds=parts.seeds,
        queries=parts.queries,
        seed_level=parts.seed_level,
        se=se,
        df=df,
        seed_ids=parts.seed_ids,
        dropped_seeds=parts.dropped_seeds,
    )


def contrast(cells: Sequence[Cell], weights: Sequence[float], confidence: float = 0.95, pool: bool = False) -> Estimate:
    """``sum_j weights[j] * mean(cells[j])`` with its Satterthwaite t interval and p-value (``pool``: as in
    :func:`contrast_parts`)."""
    return estimate(contrast_parts(cells, weights, pool), confidence)


def tost(value: Estimate, margin: float) -> float:
    """Two one-sided tests of ``|theta| >= margin``: p < alpha claims ``|theta| < margin`` (the 1 - 2 alpha
    interval lies inside (-margin, +margin))."""
    if margin <= 0:
        raise ValueError(f"an equivalence margin must be > 0, got {margin}")
    if value.se == 0:
        return 0.0 if abs(value.value) < margin else 1.0
    below = _t_cdf((value.value - margin) / value.se, value.df)  # H0: theta >= +margin
    above = _t_cdf(-(value.value + margin) / value.se, value.df)  # H0: theta <= -margin
    return max(below, above)


def _polynomial_row(proportions: Sequence[float], degree: int, row: int) -> np.ndarray:
    x = np.asarray(proportions, dtype=np.float64)
    if len(np.unique(x)) <= degree:
        raise ValueError(f"a degree-{degree} fit needs {degree + 1} distinct proportions, got {list(proportions)}")
    design = np.vander(x, degree + 1, increasing=True)  # (levels, degree + 1): 1, p, p^2
    weights = np.linalg.pinv(design)[row]  # (levels,)
    return np.where(np.abs(weights) < 1e-12 * np.abs(weights).max(), 0.0, weights)


def slope_weights(proportions: Sequence[float]) -> np.ndarray:
    """Weights that turn cell means into the least-squares slope of the mean in p, over every level given.

    With three equally spaced levels this is the end-to-end difference (the middle level has weight 0): only
    :func:`curvature_weights` uses the middle level then.
    """
    x = np.asarray(proportions, dtype=np.float64)
    centred = x - x.mean()
    spread = float((centred**2).sum())
    if len(x) < 2 or spread == 0:
        raise ValueError(f"a slope needs two distinct proportions, got {list(proportions)}")
    return centred / spread


def curvature_weights(proportions: Sequence[float]) -> np.ndarray:
    """Weights that turn cell means into the quadratic coefficient of a least-squares fit a + b p + c p^2."""
    return _polynomial_row(proportions, 2, 2)


def step_weights(levels: int) -> list[np.ndarray]:
    """Weights of the differences between adjacent levels (level k+1 minus level k)."""
    steps = []
    for k in range(levels - 1):
        w = np.zeros(levels)
        w[k], w[k + 1] = -1.0, 1.0
        steps.append(w)
    return steps


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given)."""
    order = np.argsort(p_values, kind="stable")
    adjusted = np.empty(len(p_values))
    running = 0.0
    for position, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - position) * p_values[index]))
        adjusted[index] = running
    return adjusted.tolist()


def monotone(steps: Sequence[Estimate], alpha: float = 0.05) -> int:
    """+1 (-1) when every adjacent step rises (falls) at Holm-adjusted p < ``alpha``, else 0."""
    if not steps:
        return 0
    adjusted = holm([step.p_value for step in steps])
    signs = {int(np.sign(step.value)) for step in steps}
    if max(adjusted) < alpha and len(signs) == 1:
        return signs.pop()
    return 0


def win_tie_loss(treated: Cell, baseline: Cell, tolerance: float = 1e-9) -> tuple[int, int, int]:
    """Queries where the treated cell's seed-averaged score is above / within ``tolerance`` of / below the
    baseline's."""
    difference = treated.scores.mean(axis=0) - baseline.scores.mean(axis=0)  # (Q,)
    wins = int((difference > tolerance).sum())
    losses = int((difference < -tolerance).sum())
    return wins, difference.size - wins - losses, losses


def _p(value: float) -> str:
    """``p<0.001`` or ``p=0.012``."""
    return "p<0.001" if value < 0.001 else f"p={value:.3f}"


def _seeds_text(seeds: int) -> str:
    text = f"at {seeds} seed{'s' if seeds != 1 else ''}"
    if seeds == 1:
        text += " (training-seed variance not estimated: intervals from queries only)"
    return text


@dataclass(frozen=True)
class Decision:
    """What a trend's tests show.

    Attributes:
        kind: ``hurts``, ``helps``, ``curved``, ``equivalent`` or ``inconclusive``.
        text: the verdict line.
    """

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
    """The verdict of a trend: a kind and one line that says only what the tests show, and at how many seeds.

    The verdict's family is {slope, curvature} (curvature only with three or more levels), Holm-adjusted, so a
    wrong claim of an effect has probability at most alpha (about 4.9% with two tests). Then:

    - slope significant: ``hard negatives hurt (slope < 0 ..., p=...)`` or ``help (slope > 0 ..., p=...)``; ``monotone``
      only when every adjacent step moves that way (Holm over the steps; three or more levels, as with two the
      one step is the slope); a delta against p = 0 significant the
      other way (Holm over the proportions) is named;
    - curvature significant: ``curved (quadratic term ..., p=...)`` after the slope's claim, or alone (kind
      ``curved``) ``curved (...) response to hard negatives, no linear trend``;
    - neither, and every delta against p = 0 within +-``margin`` by TOST (intersection-union: each at alpha):
      ``no effect larger than <margin> (TOST, p=...)``;
    - else ``inconclusive``, with the largest effect the 1 - 2 alpha intervals do not exclude;
    - before all of these: ``no verdict`` where a contrast rests on fewer than :data:`CALIBRATED_SEEDS` paired seeds
      (the estimate is shown, no test is claimed).

    Args:
        slope: least-squares slope of the metric in p, over every level.
        curvature: quadratic term (None with fewer than three levels).
        deltas: (proportion, delta against p = 0) per proportion > 0.
        steps: differences between adjacent levels, in order of p.
        margin: equivalence margin (metric units).
        alpha: level of every test.
    """
    seeds = min([slope.seeds, *(d.seeds for _, d in deltas)])
    if not all(e.gives_verdict for e in [slope, *(d for _, d in deltas)]):
        shared = sorted(set(slope.seed_ids).intersection(*(d.seed_ids for _, d in deltas)))
        on = f"paired on seed{'s' if len(shared) != 1 else ''} {seed_label(shared)}" if shared else "no seed shared"
        return Decision(
            "no verdict",
            f"no verdict: {on}, below the {CALIBRATED_SEEDS} paired seeds the tests are calibrated for "
            f"(slope {slope.value:+.4f} per unit p, estimate only)",
        )
    family = [slope.p_value] + ([curvature.p_value] if curvature is not None else [])
    adjusted = holm(family)
    claims: list[str] = []
    kind = ""
    if adjusted[0] < alpha:
        kind = "hurts" if slope.value < 0 else "helps"
        sign = "<" if slope.value < 0 else ">"
        text = f"{kind[:-1]} (slope {sign} 0: {slope.value:+.4f} per unit p, {_p(adjusted[0])}"
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
    text = (
        f"inconclusive {_seeds_text(seeds)}: no trend (slope {_p(adjusted[0])}), "
        f"effects up to {largest:.3f} not excluded"
    )
    return Decision("inconclusive", text)
