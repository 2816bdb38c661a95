"""Selection-quality statistics (the paper's Table 4; benchmarks/selection_quality.py): per method the test
metric over seeds, paired differences against random at the same budget and at 3x, and the diagnostics that
explain them (error per taste group, groups a selection covers, the label variance of the users it picks).

Plain pandas/numpy on tables, no Ray: every function is tested on fixed tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from puma_ray.data.calibrate import read_rows, user_groups
from puma_ray.data.schema import read_manifest
from puma_ray.select.inputs import label_variance
from puma_ray.experiments.stats import HIGHER_IS_BETTER, LEVEL, mean_std, paired_interval

RANDOM, RANDOM_3X = "random", "random (3B)"


@dataclass(frozen=True)
class Trial:
    """One migration trial of the benchmark: strategy at a budget fraction with a seed."""

    budget: float
    """Budget as a fraction of the population's users."""
    method: str
    """A registry strategy name, or RANDOM_3X (random at three times the budget)."""
    seed: int

    @property
    def strategy(self) -> str:
        return RANDOM if self.method == RANDOM_3X else self.method

    @property
    def fraction(self) -> float:
        return 3 * self.budget if self.method == RANDOM_3X else self.budget

    def path(self) -> str:
        """Its directory under the benchmark's trials/ folder."""
        name = "random-3x" if self.method == RANDOM_3X else self.method
        return f"b{self.budget:g}/seed{self.seed}/{name}"


def plan(budgets: list[float], strategies: list[str], seeds: list[int]) -> list[Trial]:
    """Every trial, seed by seed and within a seed budget by budget (a run stopped early holds whole paired sets,
    every budget at its first seeds): the strategies, then random at 3B; random is always one of them, since
    every comparison is against it."""
    if any(not 0 < b < 1 / 3 for b in budgets):
        raise ValueError(f"--budgets {budgets}: each must be a fraction in (0, 1/3) (random runs at 3x)")
    methods = list(dict.fromkeys([*strategies, RANDOM])) + [RANDOM_3X]
    return [Trial(b, m, s) for s in seeds for b in budgets for m in methods]


def population_facts(data: str, seed: int = 0) -> tuple[pd.DataFrame | None, pd.Series]:
    """The population's taste groups (user_id, group) and each user's label variance over their train rows (the
    select stage's own, which PUMA's strata are cut on). Groups: the generator's (latents/) for a synthetic
    population; for a real rating dataset, the calibration's clustering of its users' train labels; None for a
    dataset of another task (clicks), whose users the clustering of rating vectors does not describe."""
    files = sorted((Path(data) / "latents").glob("users-*.parquet"))
    if files:
        groups = pd.concat([pd.read_parquet(f, columns=["user_id", "group"]) for f in files], ignore_index=True)
    elif read_manifest(data)["task"] == "rating":
        groups = user_groups(read_rows(Path(data), split="train"), seed).reset_index()
    else:
        groups = None
    return groups, label_variance(data)


def group_errors(per_user: pd.DataFrame, groups: pd.DataFrame) -> pd.DataFrame:
    """Exact RMSE per taste group from an evaluation's per-user table (user_id, n, rmse) and the population's
    groups (user_id, group): group, users, rows, rmse (users without rows in the split are left out)."""
    t = per_user[per_user["n"] > 0].merge(groups[["user_id", "group"]], on="user_id", how="inner")
    t = t.assign(sq=t["rmse"] ** 2 * t["n"])
    g = t.groupby("group").agg(users=("user_id", "size"), rows=("n", "sum"), sq=("sq", "sum")).reset_index()
    return g.assign(rmse=np.sqrt(g["sq"] / g["rows"])).drop(columns=["sq"])


def trained_and_rest(per_user: pd.DataFrame, selected: list[str], prefix: str = "") -> dict[str, float]:
    """Exact RMSE of the users the adapter was trained on and of all the others, from an evaluation's per-user
    table: does the adapter carry over to users it never saw? Keys {prefix}trained_rmse, {prefix}rest_rmse."""
    sides = pd.DataFrame({"user_id": per_user["user_id"],
                          "group": np.where(per_user["user_id"].isin(selected), "trained", "rest")})
    g = group_errors(per_user, sides).set_index("group")["rmse"]
    return {f"{prefix}{side}_rmse": float(g.get(side, np.nan)) for side in ("trained", "rest")}


def selection_profile(selected: list[str], groups: pd.DataFrame | None, label_var: pd.Series) -> dict:
    """What a selection holds: how many taste groups it reaches (of how many), the smallest group's share of it,
    and the mean label variance of its users (label_var: per user_id); only the last without groups."""
    variance = {"selected_label_var": float(label_var.reindex(selected).mean())}
    if groups is None:
        return variance
    g = groups.set_index("user_id")["group"]
    picked = g.reindex(selected).dropna()
    counts = picked.value_counts()
    return {"groups_covered": int(len(counts)), "groups": int(g.nunique()),
            "min_group_share": float(counts.reindex(g.unique(), fill_value=0).min() / max(1, len(picked))),
            **variance}


def summary(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per budget and method: users trained on, mean ± std of the test metric and closure, groups covered."""
    rows = []
    for (budget, method), g in runs.groupby(["budget", "method"], sort=False):
        m, s, n = mean_std(g[f"test_{metric}"])
        c, cs, _ = mean_std(g["test_closure"]) if "test_closure" in g else (float("nan"),) * 3
        rows.append({"budget": budget, "method": method, "users": int(g["users_trained"].iloc[0]), "seeds": n,
                     f"{metric}_mean": m, f"{metric}_std": s, "closure_mean": c, "closure_std": cs,
                     "groups_covered": float(g["groups_covered"].mean()) if "groups_covered" in g else float("nan")})
    return pd.DataFrame(rows)


def paired_vs_random(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per budget, every method minus random at B and minus random at 3B, paired by seed (only seeds both ran),
    with the 95% t-interval and the number of those seeds where the method was strictly better; for RMSE a
    negative difference means the method is better. When k > 1 strategies are compared with the same random
    runs at a budget, each row vs random at B also carries the Bonferroni interval (level 1 - (1 - LEVEL)/k,
    LEVEL = 0.95): `compared` = k, `adj_text`, `adj_excludes_zero` (rows with k = 1 repeat the 95% interval)."""
    col, out = f"test_{metric}", []
    sign = 1.0 if metric in HIGHER_IS_BETTER else -1.0
    for budget, g in runs.groupby("budget", sort=False):
        by = g.pivot_table(index="seed", columns="method", values=col)
        strategies = [m for m in by.columns if m not in (RANDOM, RANDOM_3X)]
        for method in strategies + [RANDOM]:
            for other in (RANDOM, RANDOM_3X):
                if method == other or other not in by:
                    continue
                both = by[[method, other]].dropna()
                a, b = both[method].to_list(), both[other].to_list()
                d = paired_interval(a, b)
                k = len(strategies) if other == RANDOM else 1
                adj = paired_interval(a, b, level=1 - (1 - LEVEL) / k) if k > 1 else d
                better = int((sign * (both[method] - both[other]) > 0).sum())
                out.append({"budget": budget, "method": method, "vs": other, "mean": d.mean, "low": d.low,
                            "high": d.high, "seeds": d.n, "better_seeds": better, "excludes_zero": d.excludes_zero,
                            "text": d.text(), "compared": k, "adj_text": adj.text(),
                            "adj_excludes_zero": adj.excludes_zero})
    return pd.DataFrame(out)


def verdict(paired: pd.DataFrame, method: str, metric: str) -> list[str]:
    """The issue's two claims for `method`, budget by budget, in words: beats random at B (interval excludes
    zero on the better side) and within noise of random at 3B (interval includes zero)."""
    better = (lambda d: d.low > 0) if metric in HIGHER_IS_BETTER else (lambda d: d.high < 0)
    lines = []
    for budget, g in paired[paired["method"] == method].groupby("budget", sort=False):
        at = {r.vs: r for r in g.itertuples()}
        b, b3 = at.get(RANDOM), at.get(RANDOM_3X)
        if b is None or b3 is None:
            continue
        if min(b.seeds, b3.seeds) < 2:
            lines.append(f"budget {budget:g}: {method} vs random: one paired seed, no interval and no verdict")
            continue
        wins = ("beats" if better(b) else "loses to") if b.excludes_zero else "is not distinguishable from"
        ties = ("better than" if better(b3) else "worse than") if b3.excludes_zero else "within noise of"
        line = (f"budget {budget:g}: {method} {wins} random at B ({b.text}, {b.seeds} seeds, better in "
                f"{b.better_seeds}) and is {ties} random at 3B ({b3.text}, better in {b3.better_seeds})")
        if b.compared > 1:
            kept = "still excludes" if b.adj_excludes_zero else "includes"
            line += (f"; with {b.compared} strategies compared against the same random runs, the Bonferroni "
                     f"interval ({b.adj_text}) {kept} zero")
        lines.append(line)
    return lines
