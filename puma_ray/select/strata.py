"""Selection math for `puma-ray select`: strata, budget apportioning, sampling; numpy only.

Users are positions 0..N-1 of one "eligible users" table kept by the caller (user ids
are never assumed contiguous or numeric). Every function that draws takes a
numpy Generator; the same seed gives the same selection.

Shapes: values [N] float64; clusters [N] int64; vectors [n, f] float32.
"""

from __future__ import annotations

import numpy as np

from puma_ray.errors import PumaError

WEIGHT_KINDS = ("normal", "linear", "uniform")


def stratum_weights(bins: int, kind: str) -> np.ndarray:
    """Sampling weight of each stratum, lowest values first.

    normal: PUMA's exp(-x^2/2) + 0.1 over x = linspace(-2, 2, bins) (medium strata heavier);
    linear: 1..bins (higher strata heavier); uniform: all equal.
    """
    if kind == "normal":
        x = np.linspace(-2.0, 2.0, bins)
        return np.exp(-x ** 2 / 2) + 0.1
    if kind == "linear":
        return np.arange(1, bins + 1, dtype=np.float64)
    if kind == "uniform":
        return np.ones(bins)
    raise PumaError(f"unknown stratum weights {kind!r} (choose from {', '.join(WEIGHT_KINDS)})")


def strata_of(values: np.ndarray, bins: int) -> np.ndarray:
    """[n] values -> [n] stratum 0..bins-1 by rank (equal-count quantile bins; ties broken by position)."""
    n = len(values)
    order = np.argsort(values, kind="stable")
    strata = np.empty(n, dtype=np.int64)
    strata[order] = (np.arange(n) * bins) // max(n, 1)
    return strata


def apportion(total: int, weights: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """Integers summing to min(total, caps.sum()), proportional to weights, none above its cap.

    Largest-remainder rounding; what a capped entry cannot take goes to the others in
    proportion to their weights, so the total is exact.
    """
    caps = np.asarray(caps, dtype=np.int64)
    weights = np.where(caps > 0, np.asarray(weights, dtype=np.float64), 0.0)
    out = np.zeros(len(caps), dtype=np.int64)
    left = min(int(total), int(caps.sum()))
    while left > 0:
        open_ = (out < caps) & (weights > 0)
        if not open_.any():  # zero weight everywhere that has room: fall back to room alone
            weights, open_ = (caps - out).astype(np.float64), out < caps
        share = np.where(open_, weights, 0.0)
        ideal = left * share / share.sum()
        take = np.minimum(np.floor(ideal).astype(np.int64), caps - out)
        rest = left - int(take.sum())
        if rest > 0:
            frac = np.where(open_ & (out + take < caps), ideal - np.floor(ideal), -1.0)
            for i in np.argsort(-frac, kind="stable")[:rest]:
                if frac[i] >= 0:
                    take[i] += 1
        out += take
        left -= int(take.sum())
    return out


def cluster_quotas(sizes: np.ndarray, budget: int, minimum: int) -> np.ndarray:
    """Users to take per cluster: min(minimum, size) first, the rest in proportion to size."""
    sizes = np.asarray(sizes, dtype=np.int64)
    base = np.minimum(sizes, minimum)
    if base.sum() > budget:
        raise PumaError(f"--budget {budget} is below --min-per-cluster {minimum} x {len(sizes)} clusters "
                        f"({int(base.sum())} users); lower --min-per-cluster or --clusters")
    return base + apportion(budget - int(base.sum()), sizes.astype(np.float64), sizes - base)


def check_budget(budget: int, eligible: int) -> None:
    if budget > eligible:
        raise PumaError(f"--budget {budget} exceeds the {eligible} eligible users (users with a finite source "
                        "prompt and at least one training interaction)")


def stratified_sample(members: np.ndarray, values: np.ndarray, n: int, bins: int, weights: np.ndarray,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n of `members` drawn across value strata with the given weights -> (chosen, stratum of each member)."""
    strata = strata_of(values[members], bins)
    quota = apportion(n, weights, np.bincount(strata, minlength=bins))
    chosen = [rng.choice(members[strata == s], size=q, replace=False) for s, q in enumerate(quota) if q]
    return (np.concatenate(chosen) if chosen else np.empty(0, np.int64)), strata


def farthest_points(vectors: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy farthest point sampling: n row indices of vectors [m, f], first one drawn at random."""
    m = len(vectors)
    if n <= 0:
        return np.empty(0, dtype=np.int64)
    if n >= m:
        return np.arange(m)
    chosen = [int(rng.integers(m))]
    dist = np.linalg.norm(vectors - vectors[chosen[0]], axis=1)
    for _ in range(n - 1):
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(vectors - vectors[nxt], axis=1))
    return np.asarray(chosen, dtype=np.int64)
