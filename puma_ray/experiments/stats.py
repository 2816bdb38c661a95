"""Statistics behind sweep and bench reports: spreads, paired intervals, Pareto fronts, cost fits.

Plain numpy/scipy, no Ray: every function takes arrays or records and is tested on fixed tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

HIGHER_IS_BETTER = ("auc", "uauc", "accuracy")  # the metrics where a larger value is better (error metrics: lower)


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (ddof 1; 0 for one value) and count of the finite values."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if len(x) == 0:
        return float("nan"), float("nan"), 0
    return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0, len(x)


LEVEL = 0.95
"""The confidence level of every interval we report unless a caller asks for another."""


@dataclass(frozen=True)
class PairedDiff:
    """Mean of the per-seed differences a - b with its two-sided Student-t confidence interval."""

    mean: float
    low: float
    high: float
    n: int
    level: float = LEVEL

    @property
    def excludes_zero(self) -> bool:
        return self.n >= 2 and (self.low > 0 or self.high < 0)

    def text(self, digits: int = 4) -> str:
        if self.n < 2:
            return f"{self.mean:+.{digits}f} (one seed: no interval)"
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def paired_interval(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> PairedDiff:
    """Paired difference a_i - b_i (same seed i) with a t-interval over the n seeds.

    Pairs with a non-finite member are dropped. With n < 2 the interval is the point itself.
    """
    from scipy import stats

    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    d = np.asarray([x - y for x, y in zip(a, b) if math.isfinite(x) and math.isfinite(y)], dtype=np.float64)
    n = len(d)
    if n == 0:
        return PairedDiff(float("nan"), float("nan"), float("nan"), 0, level)
    m = float(d.mean())
    if n < 2:
        return PairedDiff(m, m, m, 1, level)
    half = float(stats.t.ppf(0.5 + level / 2, df=n - 1) * d.std(ddof=1) / math.sqrt(n))
    return PairedDiff(m, m - half, m + half, n, level)


def pareto_front(cost: Sequence[float], metric: Sequence[float], mode: str) -> np.ndarray:
    """Boolean mask of the points no other point beats on both cost (lower) and metric (mode min|max).

    A point is dominated when another is at least as good on both and strictly better on one.
    Non-finite points are never on the front.
    """
    c = np.asarray(cost, dtype=np.float64)
    m = np.asarray(metric, dtype=np.float64) * (1.0 if mode == "min" else -1.0)
    ok = np.isfinite(c) & np.isfinite(m)
    front = np.zeros(len(c), dtype=bool)
    for i in np.flatnonzero(ok):
        better_eq = ok & (c <= c[i]) & (m <= m[i])
        strictly = better_eq & ((c < c[i]) | (m < m[i]))
        front[i] = not strictly.any()
    return front


@dataclass(frozen=True)
class LinearCost:
    """cost = fixed + per_unit * units, fitted by least squares on measured points."""

    fixed: float
    per_unit: float
    points: int
    max_rel_residual: float
    """Largest |measured - fitted| / measured over the points (0 for an exact two-point fit)."""

    def __call__(self, units: float) -> float:
        return self.fixed + self.per_unit * units


def fit_linear_cost(units: Sequence[float], cost: Sequence[float]) -> LinearCost:
    """Least-squares fixed + per_unit * units over >= 2 distinct unit counts.

    Both coefficients are kept non-negative (a negative fixed cost or a cost that falls with
    scale is noise, not a model): when the free fit gives one below zero it is refitted with
    that coefficient at 0.
    """
    x, y = np.asarray(units, dtype=np.float64), np.asarray(cost, dtype=np.float64)
    if len(np.unique(x)) < 2:
        raise ValueError("a cost fit needs measurements at two or more different sizes")
    slope, intercept = np.polyfit(x, y, 1)
    if intercept < 0:
        slope, intercept = float((x @ y) / (x @ x)), 0.0
    if slope < 0:
        slope, intercept = 0.0, float(y.mean())
    fitted = intercept + slope * x
    rel = np.abs(y - fitted) / np.maximum(np.abs(y), 1e-12)
    return LinearCost(float(intercept), float(slope), len(x), float(rel.max()))


@dataclass
class AdapterCost:
    """adapter cost = fixed + per_epoch * epochs + per_sample * samples (training rows processed).

    The adapter takes at least `min_steps` steps, so a small selection runs many short epochs whose
    fixed part (a validation pass, a checkpoint) dominates; users trained on alone does not predict it."""

    fixed: float
    per_epoch: float
    per_sample: float
    points: int
    max_rel_residual: float
    floored: bool
    """True when per_sample was raised to the given floor (the fit could not separate it)."""

    def __call__(self, epochs: float, samples: float) -> float:
        return self.fixed + self.per_epoch * epochs + self.per_sample * samples


def fit_adapter_cost(epochs: Sequence[float], samples: Sequence[float], cost: Sequence[float],
                     per_sample_floor: float = 0.0) -> AdapterCost:
    """Non-negative least squares of cost on [1, epochs, samples]; per_sample at least `per_sample_floor`
    (then fixed and per_epoch are refitted on what is left)."""
    from scipy.optimize import nnls

    e, s, y = (np.asarray(v, dtype=np.float64) for v in (epochs, samples, cost))
    if len(y) == 0:
        raise ValueError("an adapter cost fit needs at least one measured run")
    scale = max(float(s.max()), 1.0)  # samples in units of the largest run: a well-conditioned system
    coef, _ = nnls(np.column_stack([np.ones_like(e), e, s / scale]), y)
    per_sample, floored = coef[2] / scale, False
    if per_sample < per_sample_floor:
        per_sample, floored = per_sample_floor, True
        coef[:2], _ = nnls(np.column_stack([np.ones_like(e), e]), y - per_sample * s)
    fit = AdapterCost(float(coef[0]), float(coef[1]), float(per_sample), len(y), 0.0, floored)
    rel = np.abs(y - fit(e, s)) / np.maximum(np.abs(y), 1e-12)
    fit.max_rel_residual = float(rel.max())
    return fit


def per_unit_rate(units: Sequence[float], cost: Sequence[float], startup: Sequence[float]) -> float:
    """Marginal cost per unit: the fitted slope over >= 2 distinct unit counts, else (cost - start-up) / units."""
    u, c, s = (np.asarray(v, dtype=np.float64) for v in (units, cost, startup))
    if len(np.unique(u)) >= 2:
        return fit_linear_cost(u, c).per_unit
    return float(np.mean(np.maximum(c - s, 0.0) / u))
