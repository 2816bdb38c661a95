"""The chain and aggregation benchmark's statistics on fixed tables (experiments/claims.py; issue 12)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from puma_ray.experiments.claims import claim_lines, paired_routes, route_summary

# test RMSE of 5 seeds on target C: aggregation better than A -> C on every seed, the chain tied with A -> C
FIXED = {"A->C": [1.10, 1.12, 1.11, 1.13, 1.10], "A->B->C": [1.11, 1.11, 1.12, 1.12, 1.11],
         "A+B->C": [1.08, 1.10, 1.085, 1.11, 1.08], "A->B": [1.30, 1.31, 1.29, 1.30, 1.32]}
TARGET = {"A->C": "C", "A->B->C": "C", "A+B->C": "C", "A->B": "B"}


def fixed_runs() -> pd.DataFrame:
    return pd.DataFrame([{"route": r, "target": TARGET[r], "hops": r.count("->"), "seed": s, "test_rmse": v,
                          "test_closure": 0.8 + 0.01 * s - (0.1 if r == "A->B->C" else 0.0)}
                         for r, vs in FIXED.items() for s, v in enumerate(vs)])


def test_route_summary_is_mean_and_sample_std_per_route_in_order():
    t = route_summary(fixed_runs(), "rmse").set_index("route")
    assert list(t.index) == list(FIXED)
    assert t.loc["A+B->C", "rmse_mean"] == pytest.approx(np.mean(FIXED["A+B->C"]))
    assert t.loc["A+B->C", "rmse_std"] == pytest.approx(np.std(FIXED["A+B->C"], ddof=1))
    assert t.loc["A->B->C", "hops"] == 2 and t.loc["A->B", "target"] == "B" and t.loc["A->C", "seeds"] == 5
    assert t.loc["A->B->C", "closure_mean"] == pytest.approx(0.72)


def test_paired_routes_are_route_minus_other_by_seed_with_a_t_interval_and_read_in_words():
    p = paired_routes(fixed_runs(), [("A+B->C", "A->C"), ("A->B->C", "A->C"), ("X->C", "A->C")], "test_rmse")
    assert list(p["route"]) == ["A+B->C", "A->B->C"]  # a route that never ran is left out
    d = np.array(FIXED["A+B->C"]) - np.array(FIXED["A->C"])
    half = 2.7764451 * d.std(ddof=1) / math.sqrt(5)  # t(0.975, 4)
    agg = p.iloc[0]
    assert agg["mean"] == pytest.approx(d.mean()) and agg["low"] == pytest.approx(d.mean() - half)
    assert agg["high"] == pytest.approx(d.mean() + half) and agg["excludes_zero"] and agg["seeds"] == 5
    lines = claim_lines(p, "rmse")
    assert lines[0].startswith("test rmse: A+B->C is better than A->C")
    assert "A->B->C is not distinguishable from A->C" in lines[1]
    closure = paired_routes(fixed_runs(), [("A->B->C", "A->B")], "test_closure")
    assert closure.iloc[0]["mean"] == pytest.approx(-0.1)
    assert claim_lines(closure, "rmse") == [
        "gap closure: A->B->C is worse than A->B (-0.1000 [-0.1000, -0.1000], 5 seeds)"]


def test_only_seeds_both_routes_ran_are_paired_and_one_seed_gives_no_verdict():
    runs = fixed_runs()
    runs = runs[~((runs["route"] == "A+B->C") & (runs["seed"] > 0))]
    p = paired_routes(runs, [("A+B->C", "A->C")], "test_rmse")
    assert p.iloc[0]["seeds"] == 1 and not p.iloc[0]["excludes_zero"]
    assert "one paired seed: no verdict on A->C" in claim_lines(p, "rmse")[0]
    auc = paired_routes(fixed_runs(), [("A+B->C", "A->C")], "test_rmse").assign(column="test_auc")
    assert "is worse than" in claim_lines(auc, "auc")[0]  # lower AUC is worse
