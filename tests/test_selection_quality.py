"""The selection-quality benchmark's statistics on fixed tables (experiments/selection_stats.py), and every selection
strategy of the registry on a calibrated population (issue 12)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from puma_ray.experiments.selection_stats import (RANDOM, RANDOM_3X, Trial, group_errors, paired_vs_random, plan,
                                     population_facts, selection_profile, summary, trained_and_rest, verdict)

# test RMSE of 5 seeds: puma better than random at B by ~0.02 on every seed, tied with random at 3B
FIXED = {"puma": [1.20, 1.21, 1.19, 1.22, 1.20], RANDOM: [1.22, 1.23, 1.21, 1.245, 1.215],
         RANDOM_3X: [1.205, 1.20, 1.195, 1.22, 1.205]}


def fixed_runs(budget: float = 0.02) -> pd.DataFrame:
    return pd.DataFrame([{"budget": budget, "method": m, "seed": s, "test_rmse": v, "users_trained": 60,
                          "test_closure": 0.5, "groups_covered": 4} for m, vs in FIXED.items()
                         for s, v in enumerate(vs)])


def test_paired_differences_vs_random_on_a_fixed_table():
    p = paired_vs_random(fixed_runs(), "rmse").set_index(["method", "vs"])
    d = np.array(FIXED["puma"]) - np.array(FIXED[RANDOM])  # -0.02, -0.02, -0.02, -0.025, -0.015
    half = 2.7764451 * d.std(ddof=1) / math.sqrt(5)  # t(0.975, 4)
    row = p.loc[("puma", RANDOM)]
    assert row["mean"] == pytest.approx(d.mean()) and row["low"] == pytest.approx(d.mean() - half)
    assert row["high"] == pytest.approx(d.mean() + half) and row["seeds"] == 5 and row["excludes_zero"]
    assert not p.loc[("puma", RANDOM_3X)]["excludes_zero"]
    assert row["better_seeds"] == 5  # puma below random in every seed (lower RMSE is better)
    assert p.loc[("puma", RANDOM_3X)]["better_seeds"] == 3  # -0.005, +0.01, -0.005, a tie, -0.005
    auc = paired_vs_random(fixed_runs().rename(columns={"test_rmse": "test_auc"}), "auc").set_index(["method", "vs"])
    assert auc.loc[("puma", RANDOM)]["better_seeds"] == 0  # the same numbers as AUC: higher is better
    assert ("random", RANDOM_3X) in p.index and (RANDOM, RANDOM) not in p.index
    lines = verdict(paired_vs_random(fixed_runs(), "rmse"), "puma", "rmse")
    assert lines == [lines[0]] and "puma beats random at B" in lines[0] and "within noise of random at 3B" in lines[0]


def test_pairs_use_only_seeds_both_methods_ran_and_a_loss_reads_as_one():
    runs = fixed_runs()
    runs.loc[(runs["method"] == "puma"), "test_rmse"] += 0.05  # now worse than random on every seed
    runs = runs[~((runs["method"] == RANDOM) & (runs["seed"] == 4))]  # a seed random did not finish
    p = paired_vs_random(runs, "rmse").set_index(["method", "vs"])
    assert p.loc[("puma", RANDOM)]["seeds"] == 4 and p.loc[("puma", RANDOM_3X)]["seeds"] == 5
    assert p.loc[("puma", RANDOM)]["better_seeds"] == 0
    assert "puma loses to random at B" in verdict(paired_vs_random(runs, "rmse"), "puma", "rmse")[0]
    one = paired_vs_random(fixed_runs()[lambda r: r["seed"] == 0], "rmse")
    assert verdict(one, "puma", "rmse") == ["budget 0.02: puma vs random: one paired seed, no interval and no verdict"]


def test_several_strategies_against_one_random_are_also_judged_with_a_bonferroni_interval():
    runs = fixed_runs()
    # a second strategy, "loss", better than random by a small margin on every seed: its 95% interval excludes
    # zero, the interval at 1 - 0.05/2 (two strategies compared against the same random runs) does not
    loss = [v - w for v, w in zip(FIXED[RANDOM], [0.004, 0.0005, 0.0075, 0.002, 0.006])]
    runs = pd.concat([runs, pd.DataFrame([{**runs.iloc[0].to_dict(), "method": "loss", "seed": s, "test_rmse": v}
                                          for s, v in enumerate(loss)])], ignore_index=True)
    p = paired_vs_random(runs, "rmse").set_index(["method", "vs"])
    d = np.array(loss) - np.array(FIXED[RANDOM])  # -0.004, -0.0005, -0.0075, -0.002, -0.006
    half = 3.4954059 * d.std(ddof=1) / math.sqrt(5)  # t(1 - 0.025/2, 4) = t(0.9875, 4)
    row = p.loc[("loss", RANDOM)]
    assert row["compared"] == 2 and row["excludes_zero"] and not row["adj_excludes_zero"]
    assert row["adj_text"] == f"{d.mean():+.4f} [{d.mean() - half:+.4f}, {d.mean() + half:+.4f}]"
    assert p.loc[("puma", RANDOM)]["adj_excludes_zero"]  # 0.02 better on every seed survives the correction
    assert p.loc[("loss", RANDOM_3X)]["compared"] == 1 and p.loc[(RANDOM, RANDOM_3X)]["compared"] == 1
    line = verdict(paired_vs_random(runs, "rmse"), "loss", "rmse")[0]
    assert "loss beats random at B" in line and "with 2 strategies compared" in line and "interval" in line
    assert line.endswith("includes zero")
    single = verdict(paired_vs_random(fixed_runs(), "rmse"), "puma", "rmse")[0]
    assert "Bonferroni" not in single  # one strategy against random: one comparison, nothing to correct


def test_summary_is_mean_and_sample_std_per_budget_and_method():
    t = summary(pd.concat([fixed_runs(0.01), fixed_runs(0.02)]), "rmse").set_index(["budget", "method"])
    assert len(t) == 6
    assert t.loc[(0.02, "puma"), "rmse_mean"] == pytest.approx(np.mean(FIXED["puma"]))
    assert t.loc[(0.02, "puma"), "rmse_std"] == pytest.approx(np.std(FIXED["puma"], ddof=1))
    assert t.loc[(0.01, RANDOM), "seeds"] == 5


def test_group_errors_are_exact_rmse_over_each_groups_rows():
    per_user = pd.DataFrame({"user_id": ["a", "b", "c", "d"], "n": [1, 3, 2, 0], "rmse": [1.0, 2.0, 0.5, 9.0]})
    groups = pd.DataFrame({"user_id": ["a", "b", "c", "d", "e"], "group": [0, 0, 1, 1, 1]})
    g = group_errors(per_user, groups).set_index("group")
    assert g.loc[0, "rmse"] == pytest.approx(math.sqrt((1 * 1.0 + 3 * 4.0) / 4)) and g.loc[0, "rows"] == 4
    assert g.loc[1, "rmse"] == pytest.approx(0.5) and g.loc[1, "users"] == 1  # d has no rows in the split


def test_trained_on_users_and_the_rest_are_exact_rmse_over_their_rows():
    per_user = pd.DataFrame({"user_id": ["a", "b", "c", "d"], "n": [1, 3, 2, 0], "rmse": [1.0, 2.0, 0.5, 9.0]})
    got = trained_and_rest(per_user, ["b", "d", "zz"])  # d has no rows; zz is not in the table
    assert got == {"trained_rmse": pytest.approx(2.0), "rest_rmse": pytest.approx(math.sqrt((1.0 + 2 * 0.25) / 3))}
    assert trained_and_rest(per_user, ["a"], "floor_")["floor_trained_rmse"] == pytest.approx(1.0)
    assert math.isnan(trained_and_rest(per_user, ["a", "b", "c", "d"])["rest_rmse"])  # nobody left


def test_selection_profile_counts_groups_reached_and_the_smallest_share():
    groups = pd.DataFrame({"user_id": list("abcdef"), "group": [0, 0, 0, 1, 1, 2]})
    var = pd.Series([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], index=list("abcdef"))
    p = selection_profile(["a", "b", "d"], groups, var)
    assert p == {"groups_covered": 2, "groups": 3, "min_group_share": 0.0,
                 "selected_label_var": pytest.approx((0.1 + 0.2 + 0.4) / 3)}
    assert selection_profile(["a", "d", "f"], groups, var)["min_group_share"] == pytest.approx(1 / 3)


def test_the_plan_runs_whole_paired_sets_first_and_always_includes_random():
    trials = plan([0.01, 0.05], ["puma"], [0, 1])
    assert [(t.seed, t.budget, t.method) for t in trials[:6]] == [
        (0, 0.01, "puma"), (0, 0.01, RANDOM), (0, 0.01, RANDOM_3X), (0, 0.05, "puma"), (0, 0.05, RANDOM),
        (0, 0.05, RANDOM_3X)]
    assert len(trials) == 12 and len({t.path() for t in trials}) == 12
    three = [t for t in trials if t.method == RANDOM_3X][0]
    assert three.strategy == RANDOM and three.fraction == pytest.approx(0.03)
    with pytest.raises(ValueError, match="--budgets"):
        plan([0.4], ["puma"], [0])
    assert Trial(0.02, "kmeans-fps", 3).path() == "b0.02/seed3/kmeans-fps"


@pytest.mark.ray
def test_every_strategy_selects_on_a_calibrated_population(ray_local, synthetic_dataset, tmp_path):
    """A population calibrated on a dataset, its own tiny model and source prompts; every registered strategy
    selects exactly B distinct users of it, and the benchmark's profile reads their taste groups."""
    import pyarrow.parquet as pq

    from puma_ray.config import DataConfig, ModelsConfig, PromptsConfig, SelectConfig
    from puma_ray.select.strategies import STRATEGIES
    from puma_ray.stages.data import run_data
    from puma_ray.stages.models import run_models
    from puma_ray.stages.prompts import run_prompts
    from puma_ray.stages.select import run_select

    data = tmp_path / "calibrated"
    run_data(DataConfig(source="synthetic", calibrate_from=str(synthetic_dataset), users=200, out=str(data), seed=2))
    run_models(ModelsConfig(family="llama", data=str(data), out=str(tmp_path / "llama"), pretrain_steps=20))
    run_prompts(PromptsConfig(data=str(data), model=str(tmp_path / "llama"), out=str(tmp_path / "src"), workers=1,
                              epochs=1))
    groups, var = population_facts(str(data))
    assert len(groups) == len(var) == 200 and (var >= 0).all()
    for strategy in STRATEGIES:
        run_select(SelectConfig(data=str(data), prompts=str(tmp_path / "src"), out=str(tmp_path / strategy),
                                strategy=strategy, budget=20, clusters=3, min_per_cluster=2, kmeans_passes=1, seed=1))
        chosen = pq.read_table(tmp_path / strategy / "selected.parquet").column("user_id").to_pylist()
        assert len(chosen) == len(set(chosen)) == 20 and set(chosen) <= set(groups["user_id"]), strategy
        profile = selection_profile(chosen, groups, var)
        assert 1 <= profile["groups_covered"] <= profile["groups"] == groups["group"].nunique(), strategy


@pytest.mark.ray
def test_a_real_rating_sample_is_diagnosed_by_clustered_groups_and_a_click_sample_by_none(
        ray_local, synthetic_dataset, tmp_path):
    """Without the generator's groups (latents/), a rating dataset's users get the calibration's clustering of
    their train labels, one group each; a click dataset gets no groups, and a selection's profile is then its
    label variance alone."""
    import shutil

    from puma_ray.config import DataConfig
    from puma_ray.stages.data import run_data

    real = tmp_path / "real"
    shutil.copytree(synthetic_dataset, real, ignore=shutil.ignore_patterns("latents"))
    groups, var = population_facts(str(real))
    assert groups is not None and groups["user_id"].is_unique and set(groups["user_id"]) == set(var.index)
    assert 2 <= groups["group"].nunique() <= 12
    clicks = tmp_path / "clicks"
    run_data(DataConfig(source="synthetic", task="click", out=str(clicks), users=40, items=30, seed=1))
    shutil.rmtree(clicks / "latents", ignore_errors=True)
    none, click_var = population_facts(str(clicks))
    assert none is None and len(click_var) == 40
    chosen = list(click_var.index[:5])
    assert selection_profile(chosen, None, click_var) == {"selected_label_var": float(click_var[chosen].mean())}


@pytest.mark.ray
def test_a_real_population_can_be_a_seeded_sample_of_its_users(ray_local, tmp_path):
    """benchmarks/selection_quality.py --population real --users N: N of the real users with every row of each
    (their splits unchanged), the same N again reused, and --users beyond the dataset's users refused by name."""
    import importlib.util

    from conftest import REPO, shared

    spec = importlib.util.spec_from_file_location("selection_quality", REPO / "benchmarks" / "selection_quality.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    real = shared("ml-100k")
    data = Path(bench.population(tmp_path, str(real), 100, 0, "movielens", calibrated=False))
    full = pd.read_parquet(tmp_path / "data" / "real" / "interactions", columns=["user_id", "item_id", "split"])
    part = pd.read_parquet(data / "interactions", columns=["user_id", "item_id", "split"])
    assert data == tmp_path / "data" / "subset" and part["user_id"].nunique() == 100
    kept = full[full["user_id"].isin(set(part["user_id"]))]
    assert len(kept) == len(part) and kept.merge(part).shape[0] == len(part)  # every row, its split unchanged
    assert bench.population(tmp_path, str(real), 100, 0, "movielens", calibrated=False) == str(data)
    have = json.loads((tmp_path / "data" / "real" / "manifest.json").read_text())["users"]
    with pytest.raises(SystemExit, match=f"--users 5000: .* has {have} users"):
        bench.population(tmp_path, str(real), 5000, 0, "movielens", calibrated=False)
    with pytest.raises(SystemExit, match="its subset has another --users"):
        bench.population(tmp_path, str(real), 200, 0, "movielens", calibrated=False)
    assert bench.population(tmp_path, str(real), None, 0, "movielens", calibrated=False) == str(
        (tmp_path / "data" / "real").resolve())
