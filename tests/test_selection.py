"""Selection math and every strategy of the registry on synthetic per-user facts (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest

from puma_ray.config import SelectConfig
from puma_ray.errors import PumaError
from puma_ray.select.strata import (apportion, cluster_quotas, farthest_points, strata_of, stratified_sample,
                                    stratum_weights)
from puma_ray.select.strategies import STRATEGIES, select_users


class FakeInputs:
    """Per-user facts of N synthetic users: 4 blobs of prompts, variance and loss from the data."""

    def __init__(self, n: int = 600, k: int = 4, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.n = n
        self.blob = rng.integers(0, k, size=n)
        self.x = (rng.normal(size=(n, 8)) + 6 * np.eye(8)[self.blob]).astype(np.float32)
        self._var = rng.gamma(2.0, 0.5, size=n)
        self._loss = self._var + rng.normal(0, 0.1, size=n)
        self.asked: list[str] = []

    def variance(self):
        self.asked.append("variance")
        return self._var

    def loss(self):
        self.asked.append("loss")
        return self._loss

    def clusters(self, space):
        self.asked.append(f"clusters:{space}")
        return self.blob.copy()

    def reduced(self):
        self.asked.append("reduced")
        return self.x


def cfg(**kw) -> SelectConfig:
    return SelectConfig(data="d", prompts="p", out="o", **{"clusters": 4, "budget": 100, **kw})


def test_registry_matches_the_config_choices():
    import typing

    choices = typing.get_args(typing.get_type_hints(SelectConfig)["strategy"])
    assert set(choices) == set(STRATEGIES)


@pytest.mark.parametrize("strategy,needs", [
    ("random", set()), ("variance", {"variance"}), ("loss", {"loss"}), ("kmeans", {"clusters:prompts"}),
    ("kmeans-pca", {"clusters:pca"}), ("kmeans-fps", {"clusters:prompts", "reduced"}),
    ("kmeans-loss", {"clusters:prompts", "loss"}), ("puma", {"clusters:prompts", "variance"}),
    ("ffn", {"clusters:ffn", "variance"}),
])
def test_every_strategy_returns_exactly_b_distinct_users_deterministically(strategy, needs):
    a, b = FakeInputs(), FakeInputs()
    sel_a = select_users(a, cfg(strategy=strategy, seed=5))
    sel_b = select_users(b, cfg(strategy=strategy, seed=5))
    assert len(sel_a.chosen) == 100 and len(np.unique(sel_a.chosen)) == 100
    assert sel_a.chosen.min() >= 0 and sel_a.chosen.max() < a.n
    np.testing.assert_array_equal(np.sort(sel_a.chosen), np.sort(sel_b.chosen))
    assert set(a.asked) == needs, "a strategy asked for facts it does not use (or missed one)"
    other = select_users(FakeInputs(), cfg(strategy=strategy, seed=6))
    if strategy != "kmeans-fps":  # FPS is nearly deterministic by design
        assert set(other.chosen) != set(sel_a.chosen)


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_budget_above_eligible_users_is_a_clear_error(strategy):
    with pytest.raises(PumaError, match="--budget 601 exceeds the 600 eligible users"):
        select_users(FakeInputs(), cfg(strategy=strategy, budget=601))


def test_budget_equal_to_eligible_takes_everyone():
    sel = select_users(FakeInputs(n=50), cfg(strategy="puma", budget=50, min_per_cluster=3))
    assert sorted(sel.chosen) == list(range(50))


def test_puma_weights_are_the_papers_gaussian():
    x = np.linspace(-2, 2, 5)
    np.testing.assert_allclose(stratum_weights(5, "normal"), np.exp(-x ** 2 / 2) + 0.1)
    with pytest.raises(PumaError, match="unknown stratum weights"):
        stratum_weights(5, "cubic")


def test_puma_strata_proportions_match_the_weights_within_rounding():
    inputs = FakeInputs(n=4000)
    c = cfg(strategy="puma", budget=1000, bins=5, min_per_cluster=0)
    sel = select_users(inputs, c)
    w = stratum_weights(5, "normal")
    sizes = np.bincount(inputs.blob, minlength=4)
    quotas = cluster_quotas(sizes, 1000, 0)
    for cl in range(4):
        picked = sel.chosen[inputs.blob[sel.chosen] == cl]
        counts = np.bincount(sel.stratum[picked], minlength=5)
        assert counts.sum() == quotas[cl]
        np.testing.assert_allclose(counts, quotas[cl] * w / w.sum(), atol=1.0)


def test_puma_minimum_per_cluster_unless_smaller():
    inputs = FakeInputs(n=300)
    inputs.blob = np.r_[np.zeros(280, int), np.ones(15, int), np.full(5, 2)]  # clusters of 280, 15, 5, 0
    sel = select_users(inputs, cfg(strategy="puma", budget=60, min_per_cluster=10))
    got = np.bincount(inputs.blob[sel.chosen], minlength=4)
    assert got[1] >= 10 and got[2] == 5 and got[3] == 0 and got.sum() == 60
    with pytest.raises(PumaError, match="--min-per-cluster"):
        select_users(inputs, cfg(strategy="puma", budget=20, min_per_cluster=10))


@pytest.mark.parametrize("total,weights,caps,expect", [
    (10, [1, 1], [100, 100], [5, 5]),
    (10, [1, 4], [100, 100], [2, 8]),
    (10, [1, 3], [100, 4], [6, 4]),       # a capped entry's share goes to the other
    (7, [1, 1, 1], [1, 1, 1], [1, 1, 1]),  # never more than there is
    (3, [0, 0], [5, 5], [2, 1]),           # zero weights fall back to room
    (5, [1, 1, 1], [0, 5, 5], [0, 3, 2]),
])
def test_apportion_is_exact_and_capped(total, weights, caps, expect):
    got = apportion(total, np.array(weights, float), np.array(caps))
    assert got.tolist() == expect


def test_strata_are_equal_count_quantiles_with_ties():
    s = strata_of(np.array([5.0, 1.0, 1.0, 1.0, 3.0, 9.0, 2.0, 7.0, 4.0, 6.0]), 5)
    assert np.bincount(s).tolist() == [2, 2, 2, 2, 2]
    assert s[5] == 4 and s[1] == 0


def test_stratified_sample_stays_inside_members():
    rng = np.random.default_rng(0)
    members = np.array([3, 9, 11, 40, 41, 42, 77, 78])
    chosen, strata = stratified_sample(members, np.arange(100.0), 5, 4, np.ones(4), rng)
    assert set(chosen) <= set(members) and len(set(chosen)) == 5 and len(strata) == len(members)


def test_farthest_points_spreads_out():
    pts = np.array([[0, 0], [0.1, 0], [10, 0], [0, 10], [10, 10], [0.2, 0.1]], dtype=np.float32)
    got = farthest_points(pts, 4, np.random.default_rng(1))
    assert len(set(got)) == 4
    corners = {2, 3, 4}
    assert corners <= set(got.tolist())
    assert len(farthest_points(pts, 0, np.random.default_rng(1))) == 0  # a cluster with a zero quota
