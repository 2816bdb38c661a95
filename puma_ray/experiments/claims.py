"""Statistics of the paper's chain (Fig. 5) and aggregation (Fig. 6) claims (benchmarks/chain_aggregation.py):
per route (e.g. "llama->qwen2->gemma3") the test metric and gap closure over seeds, and paired differences
between named routes.

Plain pandas on tables with one row per route x seed (columns route, seed, test_<metric>, test_closure), no Ray:
every function is tested on fixed tables.
"""

from __future__ import annotations

import pandas as pd
from puma_ray.experiments.stats import HIGHER_IS_BETTER, mean_std, paired_interval


def route_summary(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per route, in first-seen order: its target, hops, mean ± std of the test metric and of closure, seeds."""
    rows = []
    for route, g in runs.groupby("route", sort=False):
        m, s, n = mean_std(g[f"test_{metric}"])
        c, cs, _ = mean_std(g["test_closure"])
        rows.append({"route": route, "target": g["target"].iloc[0], "hops": int(g["hops"].iloc[0]), "seeds": n,
                     f"{metric}_mean": m, f"{metric}_std": s, "closure_mean": c, "closure_std": cs})
    return pd.DataFrame(rows)


def paired_routes(runs: pd.DataFrame, pairs: list[tuple[str, str]], column: str) -> pd.DataFrame:
    """For every (route, vs) pair: `column` of route minus that of vs, paired by seed (seeds both ran), with
    the 95% t-interval."""
    by = runs.pivot_table(index="seed", columns="route", values=column)
    out = []
    for route, vs in pairs:
        if route not in by or vs not in by:
            continue
        both = by[[route, vs]].dropna()
        d = paired_interval(both[route].to_list(), both[vs].to_list())
        out.append({"route": route, "vs": vs, "column": column, "mean": d.mean, "low": d.low, "high": d.high,
                    "seeds": d.n, "excludes_zero": d.excludes_zero, "text": d.text()})
    return pd.DataFrame(out)


def compared(d: dict, higher_is_better: bool) -> str:
    """For a paired_routes record: 'better than' / 'worse than' when its interval excludes zero, else 'not
    distinguishable from'; 'one paired seed: no verdict on' with fewer than two seeds."""
    if d["seeds"] < 2:
        return "one paired seed: no verdict on"
    if d["low"] <= 0 <= d["high"]:
        return "not distinguishable from"
    return "better than" if (d["low"] > 0) == higher_is_better else "worse than"


def claim_lines(paired: pd.DataFrame, metric: str) -> list[str]:
    """Each paired comparison in words: 'ROUTE is better than / worse than / not distinguishable from VS
    (difference [95% interval], n seeds)'. Closure is higher-is-better; the metric as its task says."""
    lines = []
    for r in paired.to_dict("records"):
        higher = r["column"] == "test_closure" or metric in HIGHER_IS_BETTER
        what = "gap closure" if r["column"] == "test_closure" else r["column"].replace("_", " ")
        lines.append(f"{what}: {r['route']} is {compared(r, higher)} {r['vs']} ({r['text']}, {r['seeds']} seeds)")
    return lines
