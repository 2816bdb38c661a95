"""`bench`'s report: tables, paired differences, plots and report.md."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from puma_ray.config import BenchConfig
from puma_ray.core import baselines as trivial
from puma_ray.runtime.runs import write_markdown
from puma_ray.experiments.bench_cost import AdapterWork, projection
from puma_ray.experiments.bench_methods import (FLOOR, RECYCLED, RETRAINED, SOURCE, cold_metric, coldstart_name, methods_of,
                                         recycled_init_name, warm_name)
from puma_ray.experiments.stats import (AdapterCost, mean_std, paired_interval)
from puma_ray.experiments.trial import closure

def summary_table(runs: pd.DataFrame, metric: str, split: str) -> pd.DataFrame:
    """Per size and method: mean ± std (over seeds) of the metric, closure and cost."""
    rows = []
    for (size, method), g in runs.groupby(["size", "method"], sort=False):
        mm, ms, n = mean_std(g[f"{split}_{metric}"])
        cm, cs, cn = mean_std(g.get(f"{split}_closure", pd.Series(dtype=float)).fillna(np.nan))
        dm, ds, _ = mean_std(g["cost_device_s"])
        rows.append({"size": size, "method": method, "users_trained": int(g["users_trained"].iloc[0]), "seeds": n,
                     f"{metric}_mean": mm, f"{metric}_std": ms, "closure_mean": cm, "closure_std": cs,
                     "closure_seeds": cn, "device_s_mean": dm, "device_s_std": ds, "paid": bool(g["paid"].iloc[0])})
    return pd.DataFrame(rows)


def paired_rows(runs: pd.DataFrame, cfg: BenchConfig, metric: str) -> list[dict]:
    """PUMA (or the first strategy) minus random at B and at 3B, per size, paired by seed."""
    col = f"{cfg.split}_{metric}"
    first = methods_of(cfg)[0][0]
    out = []
    for size, g in runs.groupby("size", sort=False):
        by = g.pivot_table(index="seed", columns="method", values=col)
        pairs = [(first, f"random ({cfg.budget})"), (first, f"random ({3 * cfg.budget})"),
                 (recycled_init_name(cfg), first), (warm_name(cfg), RETRAINED), (coldstart_name(cfg), first)]
        diffs = [(a, b, by[a].to_list(), by[b].to_list()) for a, b in pairs if a != b and a in by and b in by]
        cold, name = g[g["method"] == coldstart_name(cfg)].sort_values("seed"), cold_metric(metric)
        for other, label in (("migrated", "their migrated prompts"), ("floor", "the floor's random init")):
            if len(cold) and f"cold_{other}_{cfg.split}_{name}" in cold:  # the cold users alone, paired by seed
                diffs.append((f"cold users only ({name}): coldstart prompts", label,
                              cold[f"cold_{cfg.split}_{name}"].to_list(),
                              cold[f"cold_{other}_{cfg.split}_{name}"].to_list()))
        for a, b, xs, ys in diffs:
            d = paired_interval(xs, ys)
            out.append({"size": size, "a": a, "b": b, "mean": d.mean, "low": d.low, "high": d.high,
                        "seeds": d.n, "excludes_zero": d.excludes_zero, "text": d.text()})
    return out


def gap_notes(runs: pd.DataFrame, metric: str, split: str) -> list[str]:
    """One line per size and seed where full retraining did not beat the floor (closure undefined there)."""
    notes = []
    for (size, seed), g in runs.groupby(["size", "seed"], sort=False):
        v = g.set_index("method")[f"{split}_{metric}"]
        if FLOOR in v and RETRAINED in v and not math.isfinite(closure(v[FLOOR], v[RETRAINED], v[RETRAINED], metric)):
            notes.append(f"{size} users, seed {seed}: full retraining ({v[RETRAINED]:.4f}) did not beat the floor "
                         f"({v[FLOOR]:.4f}), so there is no gap to close and closure is shown as -; more users or "
                         "epochs would be needed for a meaningful closure there.")
    return notes


def method_color(method: str) -> str:
    """One colour per kind of method: already paid, floor, full retraining, recycling, PUMA, random, other
    strategies."""
    fixed = {SOURCE: "#8c8c8c", FLOOR: "#c8c8c8", RETRAINED: "#c44e52", RECYCLED: "#8172b3"}
    if method in fixed:
        return fixed[method]
    return {"puma": "#4c72b0", "random": "#dd8452"}.get(method.split(" ")[0], "#55a868")


def plot_metrics(table: pd.DataFrame, metric: str, path: Path) -> None:
    from matplotlib.figure import Figure

    sizes = list(dict.fromkeys(table["size"]))
    fig = Figure(figsize=(6 * len(sizes), 4.5))
    axes = fig.subplots(1, len(sizes), squeeze=False)[0]
    for ax, size in zip(axes, sizes):
        t = table[table["size"] == size]
        x = np.arange(len(t))
        ax.bar(x, t[f"{metric}_mean"], yerr=t[f"{metric}_std"].fillna(0.0), capsize=4,
               color=[method_color(m) for m in t["method"]])
        lo, hi = np.nanmin(t[f"{metric}_mean"]), np.nanmax(t[f"{metric}_mean"] + t[f"{metric}_std"].fillna(0.0))
        ax.set_ylim(lo - 0.15 * (hi - lo + 1e-9), hi + 0.05 * (hi - lo + 1e-9))
        ax.set_xticks(x, t["method"], rotation=30, ha="right", fontsize=8)
        ax.set(title=f"{size} users: test {metric}, mean ± std over {int(t['seeds'].max())} seed(s)", ylabel=metric)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


COLD_SOURCES = (("", "coldstart prompts"), ("migrated_", "their own migrated prompts"),
                ("floor_", "floor (random init)"), ("retrained_", "full retraining"))
"""Cold-start users' prompt sources in the cold-start row's columns (cold_<source><split>_<metric>)."""


def plot_cold(runs: pd.DataFrame, cfg: BenchConfig, metric: str, path: Path) -> bool:
    """The cold-start users alone, per size: their metric under each prompt source (bar = mean over seeds, dots =
    seeds, a line joins one seed's values). False (nothing drawn) without a cold-start row."""
    from matplotlib.figure import Figure

    name = cold_metric(metric)
    cold = runs[runs["method"] == coldstart_name(cfg)] if cfg.coldstart_fraction else runs.iloc[:0]
    if cold.empty:
        return False
    sizes = list(dict.fromkeys(cold["size"]))
    fig = Figure(figsize=(6 * len(sizes), 4.5))
    for ax, size in zip(fig.subplots(1, len(sizes), squeeze=False)[0], sizes):
        c = cold[cold["size"] == size]
        values = np.array([c[f"cold_{k}{cfg.split}_{name}"].to_numpy() for k, _ in COLD_SOURCES])  # [source, seed]
        x = np.arange(len(COLD_SOURCES))
        ax.bar(x, values.mean(axis=1), color=["#8172b2", "#4c72b0", "#999999", "#c44e52"], alpha=0.8)
        ax.plot(x, values, color="black", alpha=0.35, marker="o", ms=3)
        lo, hi = values.min(), values.max()
        ax.set_ylim(lo - 0.3 * (hi - lo + 1e-9), hi + 0.1 * (hi - lo + 1e-9))
        ax.set_xticks(x, [label for _, label in COLD_SOURCES], rotation=20, ha="right", fontsize=8)
        ax.set(title=f"{size} users: the {int(c['cold_users'].iloc[0])} cold-start users' test {name}, "
                     f"{len(c)} seed(s)", ylabel=name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def plot_cost(runs: pd.DataFrame, fits: dict, cfg: BenchConfig, work: AdapterWork, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 5))
    ax = fig.subplots()
    strategy = methods_of(cfg)[0][1]["strategy"]
    grid = np.unique(np.geomspace(max(10, runs["size"].min() / 2), max(cfg.project_users), 60).astype(int))
    full = runs[runs["method"] == RETRAINED]
    ax.scatter(full["size"], full["cost_device_s"], color="#c44e52", label="full retraining (measured)")
    ax.plot(grid, [fits["prompts"](u) for u in grid], color="#c44e52", lw=1, label="full retraining (fit / projected)")
    ours = runs[runs["method"] == methods_of(cfg)[0][0]]
    ax.scatter(ours["size"], ours["cost_device_s"], color="#4c72b0", label=f"{strategy} at B={cfg.budget} (measured)")
    ax.plot(grid, [projection(fits, strategy, int(u), min(cfg.project_budget, int(u)), work)["device_s"] for u in grid],
            color="#4c72b0", lw=1, ls="--", label=f"{strategy}, budget min({cfg.project_budget}, users) (projected)")
    ax.axvspan(runs["size"].max() * 1.05, max(cfg.project_users), color="0.93", label="projected region")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set(xlabel="users", ylabel="device-seconds", title="cost: measured points, fitted fixed + per-user cost")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _fmt(v, spec: str = ".4f") -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def _pm(mean, std, seeds: int, spec: str) -> str:
    """'mean ± std' over several seeds, the mean alone for one."""
    return _fmt(mean, spec) + (f" ± {_fmt(std, spec)}" if seeds > 1 and _fmt(mean, spec) != "-" else "")


def _closure(r: pd.Series) -> str:
    """Closure over the seeds where it is defined (retraining beat the floor), saying so when that is not all."""
    text = _pm(r["closure_mean"], r["closure_std"], r["closure_seeds"], ".2f")
    if 0 < r["closure_seeds"] < r["seeds"]:
        text += f" ({r['closure_seeds']} of {r['seeds']} seeds)"
    return text


def write_report(out: Path, cfg: BenchConfig, table: pd.DataFrame, paired: list[dict], fits: dict,
                 projected: list[dict], metric: str, data_note: str, notes: list[str], cold_png: bool = False,
                 baselines: dict | None = None) -> Path:
    baselines = baselines or {}
    lines = [f"# Bench: {cfg.source_model} -> {cfg.target_model}", "", data_note, "",
             f"Seeds {', '.join(map(str, cfg.seeds))}; every figure is test-split {metric} (best epochs chosen on "
             "valid). A *baseline* row is a table of means fitted on the train split and scored on the same rows "
             "(no model, no cost): a method that does not beat the per-user and item means learned no "
             "personalization. Cost = measured device-seconds (select + adapter + migrate for a migration; the whole "
             "`prompts` run for floor and retraining; the `recycle` stage for recycling, which takes the floor's head); "
             "the source prompts are already paid."
             + (" A *recycled init* row is the same trial with its adapter first fitted to the recycled prompts "
                "(`adapter --init recycled`; its cost includes the recycle stage)." if cfg.recycled_init else "")
             + (f" A *tuning* row is that strategy's migrated prompts trained {cfg.warm_epochs} more epoch(s) on the "
                "target (`prompts --init-from`, every user; cost = migration + tuning)." if cfg.warm_epochs else "")
             + (f" A *cold-start* row is that strategy's migration with {100 * cfg.coldstart_fraction:g}% of the "
                "users (drawn per seed from those it did not select) treated as having no source prompt: `coldstart` "
                "gives them their nearest migrated users' prompts (cost = migration + coldstart)."
                if cfg.coldstart_fraction else ""), "",
             f"| users | method | trained on | test {metric} | closure | device-s | cost vs full retraining |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for size, t in table.groupby("size", sort=False):
        full = t.loc[t["method"] == RETRAINED, "device_s_mean"].iloc[0]
        for row in trivial.baseline_rows(baselines.get(size, {}), (metric,)):
            lines.append(f"| {size} | {row[0]} | 0 | {row[1]} | - | - | - |")
        for _, r in t.iterrows():
            ratio = "- (already paid)" if r["paid"] else f"{r['device_s_mean'] / full:.2f}x"
            lines.append(f"| {size} | {r['method']} | {r['users_trained']} | "
                         f"{_pm(r[f'{metric}_mean'], r[f'{metric}_std'], r['seeds'], '.4f')} | "
                         f"{_closure(r)} | "
                         f"{_pm(r['device_s_mean'], r['device_s_std'], r['seeds'], '.1f')} | {ratio} |")
    lines += [""] + [f"Note: {n}" for n in notes]
    lines += ["", f"## Paired differences (test {metric}, same seed; 95% t-interval)", "",
              "| users | difference | mean [95% interval] | seeds | interval excludes 0 |", "|---:|---|---|---:|---|"]
    lines += [f"| {p['size']} | {p['a']} - {p['b']} | {p['text']} | {p['seeds']} | {p['excludes_zero']} |" for p in paired]
    lines += ["", "## Cost at scale: measured, fitted, projected", "",
              "| component | unit | fixed device-s | per unit device-s | points | max rel. residual |", "|---|---|---:|---:|---:|---:|"]
    for key, f in fits.items():
        if isinstance(f, AdapterCost):
            per = f"{f.per_epoch:.2f} per epoch + {f.per_sample:.6f} per sample" + (" (floor)" if f.floored else "")
            lines.append(f"| {key} | epochs, training samples | {f.fixed:.2f} | {per} | {f.points} | "
                         f"{f.max_rel_residual:.2f} |")
        else:
            lines.append(f"| {key} | users | {f.fixed:.2f} | {f.per_unit:.5f} | {f.points} | {f.max_rel_residual:.2f} |")
    lines += ["", "| users (projected) | budget | method | projected device-s | full retraining device-s | ratio |",
              "|---:|---:|---|---:|---:|---:|"]
    lines += [f"| {p['users']:,} | {p['budget']:,} | {p['strategy']} | {p['device_s']:.0f} | "
              f"{p['retraining_device_s']:.0f} | **{p['ratio']:.3f}** (1/{1 / p['ratio']:.0f}) |" for p in projected]
    lines += ["", "Projected figures extend the fitted lines far beyond the measured sizes: estimates of how the "
              "measured fixed and per-user costs add up at scale, not measurements. With one size, a component's "
              "fixed part is its measured start-up (the part of its cost record not spent on users) and the rest "
              "is counted per user. The adapter's cost is fitted on its epochs and training samples (it takes at "
              "least min_steps steps, so small selections run many short epochs); at the projected budget it runs "
              "the epochs and samples `puma-ray adapter` would choose there"
              + (f" ({projected[-1]['adapter_epochs']} epochs, {projected[-1]['adapter_samples']:,.0f} samples at "
                 f"budget {projected[-1]['budget']:,})" if projected else "")
              + ". Per sample it costs at least what a full-retraining sample costs in the same run (the same frozen "
              "target forward and backward): where the fit gives less, that floor is used (marked `floor`).", "",
              "![metrics](metrics.png)", "", "![cost](cost.png)"] + (["", "![cold-start users](coldstart.png)"]
                                                                    if cold_png else [])
    return write_markdown(out / "report.md", lines)
