"""Selection strategies: PUMA and every baseline of the paper's Table 4, in one registry.

A strategy gets `inputs` (lazy per-user facts over the N eligible users, see
`stages/select.py`), the SelectConfig and a numpy Generator, and returns a Selection.
It only asks for what it needs, so `random` never clusters and `kmeans` never scores
losses. Adding one is a function here plus a row in the test table.

inputs.n                  number of eligible users
inputs.variance()         [N] float64 training-label variance per user
inputs.loss()             [N] float64 mean source-model loss per user (train split)
inputs.clusters(space)    [N] int64 K-means cluster, space = "prompts" | "pca" | "ffn"
inputs.reduced()          [N, pca_dim] float32 PCA projection of the prompts
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from puma_ray.select.strata import check_budget, cluster_quotas, farthest_points, stratified_sample, stratum_weights


@dataclass
class Selection:
    """What a strategy chose: positions into the eligible users, plus what it grouped them by."""

    chosen: np.ndarray
    """[B] int64 positions, distinct."""
    cluster: np.ndarray | None = None
    """[N] int64 cluster of every eligible user, or None."""
    stratum: np.ndarray | None = None
    """[N] int64 stratum of every eligible user (within its cluster), -1 where unstratified, or None."""
    value: np.ndarray | None = None
    """[N] float64 what users were stratified by (variance or loss), or None."""


def _stratified(inputs, cfg, rng, values: np.ndarray, weights: np.ndarray) -> Selection:
    chosen, strata = stratified_sample(np.arange(inputs.n), values, cfg.budget, cfg.bins, weights, rng)
    return Selection(chosen, stratum=strata, value=values)


def _per_cluster(inputs, cfg, rng, space: str, minimum: int, pick: Callable) -> Selection:
    """Quota per cluster (minimum first, the rest by size), filled by pick(members, quota) -> (chosen, strata)."""
    clusters = inputs.clusters(space)
    sizes = np.bincount(clusters, minlength=cfg.clusters)
    quotas = cluster_quotas(sizes, cfg.budget, minimum)
    stratum = np.full(inputs.n, -1, dtype=np.int64)
    chosen = []
    for c, q in enumerate(quotas):
        members = np.flatnonzero(clusters == c)
        picked, strata = pick(members, int(q))
        chosen.append(picked)
        if strata is not None:
            stratum[members] = strata
    return Selection(np.concatenate(chosen).astype(np.int64), cluster=clusters, stratum=stratum)


def _uniform(rng):
    return lambda members, q: (rng.choice(members, size=q, replace=False), None)


def _strata_by(values, cfg, rng, weights):
    return lambda members, q: stratified_sample(members, values, q, cfg.bins, weights, rng)


def random_users(inputs, cfg, rng) -> Selection:
    return Selection(rng.choice(inputs.n, size=cfg.budget, replace=False).astype(np.int64))


def variance(inputs, cfg, rng) -> Selection:
    return _stratified(inputs, cfg, rng, inputs.variance(), stratum_weights(cfg.bins, cfg.weights))


def loss(inputs, cfg, rng) -> Selection:
    return _stratified(inputs, cfg, rng, inputs.loss(), stratum_weights(cfg.bins, cfg.weights))


def kmeans(inputs, cfg, rng) -> Selection:
    return _per_cluster(inputs, cfg, rng, "prompts", 0, _uniform(rng))


def kmeans_pca(inputs, cfg, rng) -> Selection:
    return _per_cluster(inputs, cfg, rng, "pca", 0, _uniform(rng))


def kmeans_fps(inputs, cfg, rng) -> Selection:
    reduced = inputs.reduced()
    return _per_cluster(inputs, cfg, rng, "prompts", 0,
                        lambda members, q: (members[farthest_points(reduced[members], q, rng)], None))


def kmeans_loss(inputs, cfg, rng) -> Selection:
    values = inputs.loss()
    sel = _per_cluster(inputs, cfg, rng, "prompts", 0,
                       _strata_by(values, cfg, rng, stratum_weights(cfg.bins, cfg.weights)))
    sel.value = values
    return sel


def puma(inputs, cfg, rng) -> Selection:
    values = inputs.variance()
    sel = _per_cluster(inputs, cfg, rng, "prompts", cfg.resolved_min_per_cluster,
                       _strata_by(values, cfg, rng, stratum_weights(cfg.bins, "normal")))
    sel.value = values
    return sel


def ffn(inputs, cfg, rng) -> Selection:
    values = inputs.variance() if cfg.ffn_strata == "variance" else inputs.loss()
    sel = _per_cluster(inputs, cfg, rng, "ffn", cfg.resolved_min_per_cluster,
                       _strata_by(values, cfg, rng, stratum_weights(cfg.bins, cfg.weights)))
    sel.value = values
    return sel


STRATEGIES: dict[str, Callable] = {
    "puma": puma, "random": random_users, "variance": variance, "loss": loss, "kmeans": kmeans,
    "kmeans-pca": kmeans_pca, "kmeans-fps": kmeans_fps, "kmeans-loss": kmeans_loss, "ffn": ffn,
}


def uses_losses(strategy: str, ffn_strata: str = "variance") -> bool:
    """Whether `strategy` reads the source model's per-user training loss (one pass of the source model)."""
    return strategy in ("loss", "kmeans-loss") or (strategy == "ffn" and ffn_strata == "loss")


def select_users(inputs, cfg) -> Selection:
    """Run cfg.strategy for exactly cfg.budget distinct users (a PumaError when too few are eligible)."""
    check_budget(cfg.budget, inputs.n)
    sel = STRATEGIES[cfg.strategy](inputs, cfg, np.random.default_rng(cfg.seed))
    if not len(np.unique(sel.chosen)) == len(sel.chosen) == cfg.budget:  # a bug in a strategy, never user input
        raise RuntimeError(f"strategy {cfg.strategy} chose {len(np.unique(sel.chosen))} distinct of {len(sel.chosen)} "
                           f"users for a budget of {cfg.budget}")
    return sel
