"""Sweep/bench statistics and search spaces on fixed tables (no Ray)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from puma_ray.errors import ConfigError
from puma_ray.experiments.space import parse_space
from puma_ray.experiments.stats import fit_linear_cost, mean_std, paired_interval, pareto_front


def test_paired_interval_matches_a_hand_computed_t_interval():
    a, b = [1.20, 1.22, 1.19, 1.21], [1.25, 1.24, 1.26, 1.23]
    d = np.array(a) - np.array(b)  # -0.05 -0.02 -0.07 -0.02
    half = 3.182446305284263 * d.std(ddof=1) / 2  # t(0.975, df=3) x s / sqrt(4)
    got = paired_interval(a, b)
    assert got.n == 4 and got.mean == pytest.approx(d.mean())
    assert (got.low, got.high) == pytest.approx((d.mean() - half, d.mean() + half))
    assert got.excludes_zero and got.high < 0


def test_paired_interval_spanning_zero_and_degenerate_cases():
    wide = paired_interval([1.0, 2.0, 3.0], [2.0, 1.0, 3.0])
    assert wide.low < 0 < wide.high and not wide.excludes_zero
    one = paired_interval([1.0], [0.5])
    assert one.n == 1 and one.low == one.high == 0.5 and not one.excludes_zero and "one seed" in one.text()
    assert paired_interval([1.0, float("nan")], [0.0, 1.0]).n == 1  # a failed run drops its pair
    with pytest.raises(ValueError, match="length"):
        paired_interval([1.0], [1.0, 2.0])


def test_mean_std_ignores_missing_values():
    assert mean_std([1.0, 3.0, float("nan"), None]) == (2.0, pytest.approx(math.sqrt(2)), 2)
    assert mean_std([5.0]) == (5.0, 0.0, 1)
    assert math.isnan(mean_std([])[0])


def test_pareto_front_for_an_error_and_a_score():
    cost = [1, 2, 3, 4, 2, 5]
    rmse = [1.30, 1.25, 1.26, 1.20, 1.25, float("nan")]
    # point 2 is beaten by point 1 (cheaper, better); points 1 and 4 tie exactly: both stay
    assert pareto_front(cost, rmse, "min").tolist() == [True, True, False, True, True, False]
    auc = [0.60, 0.65, 0.64, 0.70, 0.65, 0.9]
    assert pareto_front(cost, auc, "max").tolist() == [True, True, False, True, True, True]  # dearest, best


def test_linear_cost_fit_recovers_fixed_and_per_user_cost():
    users = [300, 300, 1200, 1200]
    cost = [40 + 0.05 * u + e for u, e in zip(users, [0.5, -0.5, 0.3, -0.3])]
    fit = fit_linear_cost(users, cost)
    assert fit.fixed == pytest.approx(40, abs=0.6) and fit.per_unit == pytest.approx(0.05, abs=1e-3)
    assert fit(1_000_000) == pytest.approx(40 + 50_000, rel=0.02) and fit.max_rel_residual < 0.02
    flat = fit_linear_cost([100, 200], [60.0, 50.0])  # cost falling with scale is noise: per-user clipped to 0
    assert flat.per_unit == 0 and flat.fixed == pytest.approx(55)
    through0 = fit_linear_cost([100, 200], [5.0, 30.0])  # a negative fixed part is refitted through 0
    assert through0.fixed == 0 and through0.per_unit > 0
    with pytest.raises(ValueError, match="two or more"):
        fit_linear_cost([100, 100], [1.0, 2.0])


def test_search_space_grid_size_and_value_checks():
    space = parse_space({"params": {"strategy": {"grid": ["puma", "random"]}, "budget": {"grid": [0.1, 200]},
                                    "lr": {"loguniform": [1e-4, 1e-2]}, "epochs": {"choice": [2, 4]},
                                    "rank": {"randint": [8, 65]}, "seed": 3}, "num_samples": 2})
    assert space.grid_size() == 8 and space.max_epochs(4) == 4
    assert space.params["budget"].args == (0.1, 200) and space.params["seed"].args == (3,)


@pytest.mark.parametrize("raw, message", [
    ({"params": {"colour": 1}}, "unknown parameter 'colour'"),
    ({"params": {"budget": 1}, "colour": 1}, "unknown key 'colour'"),
    ({"params": {"strategy": {"grid": ["puma", "nearest"]}}}, "strategy.grid\\[1\\]"),
    ({"params": {"budget": 0}}, "budget 0 must be"),
    ({"params": {"budget": 2.5}}, "whole number"),
    ({"params": {"lr": {"loguniform": [0, 1]}}}, "low > 0"),
    ({"params": {"lr": {"uniform": [2, 1]}}}, "low < high"),
    ({"params": {"width": {"gird": [1, 2]}}}, "expected a value or one of"),
    ({"params": {"epochs": "four"}}, "epochs"),
    ({"params": {}}, "'params' must map"),
    ({"params": {"seed": 0}, "scheduler": "hyperband"}, "fifo or asha"),
])
def test_search_space_errors_name_the_key(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse_space(raw, where="s.yaml")
