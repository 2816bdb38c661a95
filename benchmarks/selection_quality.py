# .venv/bin/python benchmarks/selection_quality.py --out /tmp/puma-selection [--users 10000] \
#     [--budgets 0.01 0.02 0.05] [--strategies all] [--seeds 0 1 2 3 4]
# .venv/bin/python benchmarks/selection_quality.py --out /tmp/puma-selection-ml100k --population real \
#     --budgets 0.05 0.1 [--source amazon --real ../shared/data/amazon-2018-all-beauty-5core]
#     [--source mind --real ../shared/data/mind-small-sample --users 1500]
"""The paper's Table 4 on calibrated users, or on a real sample's own users: which selection strategy trains the
best adapter at a budget (a measurement, not a test; issue 12).

Workspace (reused when complete, under --out):
  data/real        `puma-ray data --source SOURCE` of --real (configs/data-SOURCE.yaml's preprocessing); with
                   --population real (and no --users), the population itself
  data/subset      --population real --users N: a seeded sample of N of its users, every row of each kept with its
                   split (data/subset.py, as `bench` takes its sizes): the population
  data/calibrated  `puma-ray data --source synthetic --calibrate-from data/real --users N`
                   (configs/data-calibrated-SOURCE.yaml's preprocessing): the population (--population calibrated)
  llama, qwen2     tiny models of the two families on its catalogue (`puma-ray models`)
  source           source prompts on llama (seed 0; every trial migrates them)
  ref/seed<s>      floor (`prompts --freeze-prompts`) and full retraining on qwen2, per --reference-seeds
Trials (experiments/trial.py, reused when finished): for every budget B (a fraction of the users), seed and
strategy: select -> adapter -> migrate -> evaluate of every user; plus random at 3B. One seed gives every
strategy the same adapter initialisation and data order (paired).

Every figure is on `test`, which chooses nothing (prompts and adapters choose their best epoch on `valid`); the
metric is the task's (RMSE for ratings, AUC for clicks). Taste groups for the diagnostics: the generator's for a
calibrated population, the calibration's clustering of train labels for a real rating sample, none for clicks.
Outputs: runs.csv (a row per trial), groups.csv (test RMSE per taste group per trial), report.md (the
table, paired differences vs random with 95% t-intervals, per-group diagnostics), budget_curve.png,
group_error.png, selected_variance.png; the last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from puma_ray.config import BenchConfig, DataConfig, ModelsConfig, load_config  # noqa: E402
from puma_ray.core import baselines as trivial  # noqa: E402
from puma_ray.core.tasks import TASKS  # noqa: E402
from puma_ray.runtime.ray_utils import init_ray  # noqa: E402
from puma_ray.runtime.runs import log, setup_logging  # noqa: E402
from puma_ray.data.subset import subset_dataset  # noqa: E402
from puma_ray.errors import PumaError  # noqa: E402
from puma_ray.stages.data import run_data  # noqa: E402
from puma_ray.stages.models import run_models  # noqa: E402
from puma_ray.select.strategies import STRATEGIES  # noqa: E402
from puma_ray.experiments.bench import trained  # noqa: E402
from puma_ray.experiments.selection_stats import (RANDOM, RANDOM_3X, Trial, group_errors, paired_vs_random, plan,  # noqa: E402
                                     population_facts, selection_profile, summary, trained_and_rest, verdict)
from puma_ray.experiments.stats import HIGHER_IS_BETTER, LEVEL  # noqa: E402
from puma_ray.experiments.trial import RESULT, TrialSetup, run_trial, shared_losses  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = ("llama", "qwen2")
SIZES = {"llama": {}, "qwen2": {"hidden": 128}}
"""Model sizes per family beyond the family's defaults (the target is the stronger model)."""
PLANTED = {"planted_group_shares": [0.45, 0.25, 0.15, 0.10, 0.05], "planted_taste_share": 0.6,
           "planted_quality_share": 0.25}
"""--planted: the positive control's structure (DataConfig planted_* keys)."""
CALIBRATED_USERS = 10000
"""--population calibrated's default --users."""
ALSO = {"auc": "uauc"}
"""A second metric reported beside the task's (clicks: uAUC, the mean AUC of the users whose test rows hold both
classes), with its own table and paired differences; choices and closure stay on the task's metric."""


def population(out: Path, real_input: str, users: int | None, seed: int, source: str = "movielens",
               calibrated: bool = True, planted: dict | None = None) -> str:
    """OUT/data/real (`source`'s shipped preprocessing, configs/data-SOURCE.yaml, of real_input) and, when
    `calibrated`, OUT/data/calibrated (N users calibrated on it, configs/data-calibrated-SOURCE.yaml), or else, when
    `users` is given, OUT/data/subset (a seeded sample of N of the real users, every row of each kept with its
    split); each reused when complete. Returns the population's absolute path."""
    real, calibrated_dir = out / "data" / "real", out / "data" / "calibrated"
    if not (real / "manifest.json").is_file():
        run_data(load_config(DataConfig, str(ROOT / "configs" / f"data-{source}.yaml"),
                             {"input": real_input, "out": str(real)}))
    elif json.loads((real / "manifest.json").read_text())["source"] != source:
        raise SystemExit(f"--out {out}: its real dataset is of another --source; choose a new --out")
    if not calibrated:
        return str(real_subset(out, real, users, seed).resolve()) if users else str(real.resolve())
    config = ROOT / "configs" / f"data-calibrated-{source}.yaml"
    if not config.is_file():
        raise SystemExit(f"--source {source}: no shipped calibration config ({config.name}); use --population real")
    users = users or CALIBRATED_USERS
    if not (calibrated_dir / "manifest.json").is_file():
        run_data(load_config(DataConfig, str(config), {"calibrate_from": str(real), "out": str(calibrated_dir),
                                                        "users": users, "seed": seed, **(planted or {})}))
    elif json.loads((calibrated_dir / "manifest.json").read_text())["users"] != users:
        raise SystemExit(f"--out {out}: its calibrated population has another --users; choose a new --out")
    return str(calibrated_dir.resolve())


def real_subset(out: Path, real: Path, users: int, seed: int) -> Path:
    """OUT/data/subset: `users` of the real dataset's users (data/subset.py, seeded), refused when --users asks for
    more users than it has or --out holds another subset."""
    have = json.loads((real / "manifest.json").read_text())["users"]
    if users > have:
        raise SystemExit(f"--users {users}: {real} has {have} users (leave --users out to use them all)")
    try:
        subset_dataset(real, users, seed, out / "data" / "subset")
    except PumaError as exc:
        raise SystemExit(f"--out {out}: {exc} (its subset has another --users)") from None
    return out / "data" / "subset"


def references(cfg: BenchConfig, data: str, out: Path, seeds: list[int], build: int = 0) -> tuple[dict, list[dict]]:
    """Source prompts (seed `build`) and, per reference seed, floor and full retraining on the target, on test."""
    source = trained(cfg, data, cfg.source_model, out / "source", build, "test")
    refs = []
    for seed in seeds:
        floor = trained(cfg, data, cfg.target_model, out / "ref" / f"seed{seed}" / "floor", seed, "test", freeze=True)
        full = trained(cfg, data, cfg.target_model, out / "ref" / f"seed{seed}" / "retrained", seed, "test")
        refs.append({"seed": seed, "floor": floor, "retrained": full})
    return source, refs


def diagnosable(groups: pd.DataFrame | None, metric: str) -> bool:
    """Per-group errors are exact RMSE over a group's rows: they need groups and a rating task."""
    return groups is not None and metric == "rmse"


def reference_users(refs: list[dict], metric: str) -> dict[str, list[pd.DataFrame]]:
    """Floor's and full retraining's per-user test tables, one per reference seed (rating tasks: the trained-on
    users vs the rest diagnostic compares them on the same users; none for clicks)."""
    if metric != "rmse":
        return {}
    return {name: [pd.read_parquet(Path(ref[name]["store"]).parent / "eval-test" / "per_user.parquet") for ref in refs]
            for name in ("floor", "retrained")}


def trained_vs_rest(per_user: pd.DataFrame, selected: list[str], ref_users: dict[str, list[pd.DataFrame]]) -> dict:
    """The trial's test RMSE on the users it trained on and on the rest, and the references' on the same users
    (mean over the reference seeds); {} for a click task."""
    if not ref_users:
        return {}
    found = trained_and_rest(per_user, selected)
    for name, tables in ref_users.items():
        each = pd.DataFrame([trained_and_rest(t, selected, f"{name}_") for t in tables])
        found.update(each.mean().to_dict())
    return found


def trial_record(trial: Trial, row: dict, trial_dir: Path, groups: pd.DataFrame | None, label_var: pd.Series,
                 metric: str, ref_users: dict[str, list[pd.DataFrame]]) -> tuple[dict, pd.DataFrame]:
    """One runs.csv row (the trial's record, its selection profile and, for ratings, its trained-on users vs the
    rest) and its groups.csv rows (none without groups or for a click task)."""
    selected = pd.read_parquet(trial_dir / "select" / "selected.parquet", columns=["user_id"])["user_id"].tolist()
    record = {"budget": trial.budget, "method": trial.method, "seed": trial.seed, "strategy": trial.strategy,
              "users_trained": row["users_trained"], f"test_{metric}": row[f"test_{metric}"],
              f"valid_{metric}": row[f"valid_{metric}"], "test_closure": row.get("test_closure"),
              "cost_device_s": row["cost_device_s"], **selection_profile(selected, groups, label_var)}
    if also := ALSO.get(metric):  # a click task: the mean per-user AUC too, from the trial's test evaluation
        record[f"test_{also}"] = json.loads((trial_dir / "eval" / "test" / "metrics.json").read_text())[also]
    per_user = pd.read_parquet(trial_dir / "eval" / "test" / "per_user.parquet")
    record.update(trained_vs_rest(per_user, selected, ref_users))
    if not diagnosable(groups, metric):
        return record, pd.DataFrame()
    per_group = group_errors(per_user, groups)
    return record, per_group.assign(budget=trial.budget, method=trial.method, seed=trial.seed)


def run_all(trials: list[Trial], setup: TrialSetup, out: Path, groups: pd.DataFrame | None,
            label_var: pd.Series, ref_users: dict[str, list[pd.DataFrame]],
            run_missing: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every trial (finished ones read back; with run_missing false, unfinished ones left out), with progress;
    runs.csv and groups.csv rewritten after each."""
    records, per_group = [], []
    for i, t in enumerate(trials, 1):
        d = out / "trials" / t.path()
        if not run_missing and not (d / RESULT).is_file():
            continue
        log.info("selection quality: trial %d/%d: budget %g, %s, seed %d", i, len(trials), t.budget, t.method, t.seed)
        row = run_trial(setup, {"strategy": t.strategy, "budget": t.fraction, "seed": t.seed}, d)
        rec, grp = trial_record(t, row, d, groups, label_var, setup.task_metric, ref_users)
        records.append(rec)
        per_group.append(grp)
        pd.DataFrame(records).to_csv(out / "runs.csv", index=False)
        pd.concat(per_group).to_csv(out / "groups.csv", index=False)
    return pd.DataFrame(records), pd.concat(per_group, ignore_index=True) if per_group else pd.DataFrame()


def reference_groups(ref_users: dict[str, list[pd.DataFrame]], groups: pd.DataFrame) -> pd.DataFrame:
    """Floor and full retraining's test RMSE per taste group (mean over the reference seeds)."""
    rows = [group_errors(table, groups).assign(method=name, seed=i)
            for name, tables in ref_users.items() for i, table in enumerate(tables)]
    return pd.concat(rows).groupby(["method", "group"], as_index=False)["rmse"].mean()


def plot_budget_curve(table: pd.DataFrame, ref: dict, metric: str, population: str, path: Path) -> None:
    """Test metric (mean ± std over seeds) vs users trained on, one line per strategy; floor and retraining.
    Strategies trained on the same number of users are drawn side by side (a small shift along the log axis;
    the ticks mark the true counts), so their error bars do not hide each other."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.subplots()
    n = table["method"].nunique()
    for i, (method, g) in enumerate(table.groupby("method", sort=False)):
        g = g.sort_values("users")
        style = dict(ls="--") if method == RANDOM_3X else {}
        shift = 10 ** (0.01 * (i - (n - 1) / 2))
        ax.errorbar(g["users"] * shift, g[f"{metric}_mean"], yerr=g[f"{metric}_std"], marker="o", capsize=3,
                    label=method, **style)
    for name, color in (("floor", "0.4"), ("retrained", "0.1")):
        ax.axhline(ref[name], color=color, ls=":", lw=1, label=f"{name} {ref[name]:.4f}")
    ax.set_xscale("log")
    ax.set_xticks(sorted(table["users"].unique()), [str(u) for u in sorted(table["users"].unique())])
    ax.minorticks_off()
    ax.set_xlabel("users the adapter is trained on (log)")
    ax.set_ylabel(f"test {metric.upper()} of every migrated user")
    ax.set_title(f"Selection strategies vs budget ({population}; mean ± std over seeds)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_group_errors(per_group: pd.DataFrame, ref_groups: pd.DataFrame, shares: pd.Series, path: Path) -> None:
    """Per budget, test RMSE per taste group (groups by size, largest first): each method's seed mean, with
    floor and full retraining per group."""
    from matplotlib.figure import Figure

    budgets = sorted(per_group["budget"].unique())
    order = shares.sort_values(ascending=False).index.tolist()
    fig = Figure(figsize=(4.2 * len(budgets), 4.4))
    axes = np.atleast_1d(fig.subplots(1, len(budgets), sharey=True))
    x = np.arange(len(order))
    for ax, budget in zip(axes, budgets):
        g = per_group[per_group["budget"] == budget].groupby(["method", "group"])["rmse"].mean()
        for method in dict.fromkeys(per_group["method"]):
            if method in g.index.get_level_values(0):
                ax.plot(x, g[method].reindex(order).to_numpy(), marker="o", ms=3, lw=1, label=method)
        for name, color in (("floor", "0.6"), ("retrained", "0.1")):
            r = ref_groups[ref_groups["method"] == name].set_index("group")["rmse"].reindex(order)
            ax.plot(x, r.to_numpy(), ls=":", color=color, label=name)
        ax.set_xticks(x, [f"{grp}\n{100 * shares[grp]:.0f}%" for grp in order], fontsize=6)
        ax.set_title(f"budget {100 * budget:g}% of users", fontsize=9)
        ax.set_xlabel("taste group (share of users)", fontsize=8)
    axes[0].set_ylabel("test RMSE in the group")
    axes[-1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_selected_variance(out: Path, runs: pd.DataFrame, label_var: pd.Series, budget: float, path: Path) -> None:
    """Label-variance histogram of the users each strategy selects at `budget` (seeds pooled) vs everyone."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.4))
    ax = fig.subplots()
    bins = np.linspace(0, float(np.nanquantile(label_var, 0.99)), 30)
    ax.hist(label_var.to_numpy(), bins=bins, density=True, color="0.85", label="all users")
    for method in [m for m in dict.fromkeys(runs["method"]) if m != RANDOM_3X]:
        ids = []
        for t in runs[(runs["budget"] == budget) & (runs["method"] == method)].itertuples():
            ids += pd.read_parquet(out / "trials" / Trial(budget, method, t.seed).path() / "select" /
                                   "selected.parquet", columns=["user_id"])["user_id"].tolist()
        ax.hist(label_var.reindex(ids).dropna().to_numpy(), bins=bins, density=True, histtype="step", lw=1.2,
                label=f"{method} ({len(ids)} picks)")
    ax.set_xlabel("a user's label variance (train rows)")
    ax.set_ylabel("density")
    ax.set_title(f"Who each strategy selects, budget {100 * budget:g}% (seeds pooled)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def fmt(x: float, digits: int = 4) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def vs_random(paired: pd.DataFrame, budget: float, method: str) -> dict[str, str]:
    """A method's paired differences at a budget as text, keyed by what it was compared with."""
    if not len(paired):
        return {}
    rows = paired[(paired["budget"] == budget) & (paired["method"] == method)].itertuples()
    return {p.vs: f"{p.text}, {p.better_seeds}/{p.seeds} better" for p in rows}


def also_lines(runs: pd.DataFrame, also: str, ref: dict) -> list[str]:
    """report.md's table of the second metric (ALSO): mean ± std per budget and method, paired vs random."""
    table, paired = summary(runs, also), paired_vs_random(runs, also)
    lines = ["", f"## Test {also}: the mean AUC of the users whose test rows hold both classes", "",
             f"Source prompts {fmt(ref['source'])}; floor {fmt(ref['floor'])}, full retraining "
             f"{fmt(ref['retrained'])}.", "",
             f"| budget | method | test {also} (mean ± std) | seeds | vs random at B | vs random at 3B |",
             "|---|---|---:|---:|---:|---:|"]
    for r in table.to_dict("records"):
        vs = vs_random(paired, r["budget"], r["method"])
        lines.append(f"| {100 * r['budget']:g}% | {r['method']} | {fmt(r[f'{also}_mean'])} ± "
                     f"{fmt(r[f'{also}_std'])} | {r['seeds']} | {vs.get(RANDOM, '')} | {vs.get(RANDOM_3X, '')} |")
    return lines


def population_words(args: argparse.Namespace, facts: dict) -> str:
    """Who the population is, for report.md."""
    if args.population == "calibrated":
        return f"{facts['users']:,} synthetic users calibrated on {facts['real']}"
    if facts.get("subset_of"):
        return (f"a seeded sample of {facts['users']:,} of the {facts['subset_of']:,} users of {facts['real']} "
                f"({args.source}'s shipped preprocessing; every row of a sampled user, with its split)")
    return f"the {facts['users']:,} users of {facts['real']} itself ({args.source}'s shipped preprocessing)"


def trained_lines(runs: pd.DataFrame) -> list[str]:
    """report.md's table of the users each adapter was trained on vs the rest, beside the references on the same
    users (test RMSE, mean over seeds): does the adapter carry over to users it never saw?"""
    cols = ["trained_rmse", "floor_trained_rmse", "retrained_trained_rmse", "rest_rmse", "floor_rest_rmse",
            "retrained_rest_rmse"]
    lines = ["", "## The users the adapter was trained on, and the rest (test RMSE, mean over seeds)", "",
             "| budget | method | trained-on users | their floor | their retraining | the rest | their floor | "
             "their retraining |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    means = runs.groupby(["budget", "method"], sort=False)[cols].mean()
    for (budget, method), r in means.iterrows():
        lines.append(f"| {100 * budget:g}% | {method} | " + " | ".join(fmt(r[c]) for c in cols) + " |")
    return lines


def report(out: Path, args: argparse.Namespace, facts: dict, runs: pd.DataFrame, table: pd.DataFrame,
           paired: pd.DataFrame, per_group: pd.DataFrame, ref_groups: pd.DataFrame | None,
           shares: pd.Series | None) -> list[str]:
    """report.md: the population, the table per budget, paired differences, the verdicts, the second metric's
    table (clicks: uAUC), per-group errors (when the population has taste groups and a rating task)."""
    # the command that ran the trials (a --report-only rerun reports them, it does not make them)
    cmd = "python benchmarks/selection_quality.py " + " ".join(a for a in sys.argv[1:] if a != "--report-only")
    m, name = facts["metric"], facts["metric"].upper()
    better = "higher" if m in HIGHER_IS_BETTER else "lower"
    who = population_words(args, facts)
    groups = (f", {facts['groups']} taste groups ({facts['groups_from']}), largest {100 * shares.max():.1f}% / "
              f"smallest {100 * shares.min():.1f}% of users" if shares is not None else ", no taste groups")
    lines = [f"# Selection quality on {args.population} users (Table 4)", "", f"`{cmd}`", "",
             f"- Population: {who} ({facts['rows']:,} rows{groups}); models tiny llama (source, hidden 64) -> "
             "tiny qwen2 (hidden 128, the target: an upgrade).",
             f"- Source prompts: test {name} {fmt(facts['source'])}. Floor {fmt(facts['floor'])}, full retraining "
             f"{fmt(facts['retrained'])} (reference seeds {args.reference_seeds}); closure = (floor - migrated) / "
             "(floor - retrained).",
             f"- Seeds {args.seeds}: a seed gives every strategy the same adapter initialisation and data order; "
             f"differences are paired by seed, {LEVEL:.0%} t-intervals (the method minus random; {better} {name} is "
             "better); "
             "k/n better: the paired seeds where the method's test metric was strictly better. Where m > 1 "
             "strategies are compared with the same random runs, the claims also give the Bonferroni interval "
             f"(level 1 - {1 - LEVEL:.2g}/m).",
             "- Baselines: tables of means fitted on train, scored on the same test rows (first rows below). "
             + (f"**{facts['verdict']}**" if facts.get("verdict") else "Full retraining beats the per-user and item "
                "means: the models learned personalization."),
             "", f"| budget | method | users | test {name} (mean ± std) | seeds | closure | groups covered | "
             "vs random at B | vs random at 3B |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| - | {row[0]} | 0 | {row[1]} | - | - | - | - | - |"
              for row in trivial.baseline_rows(facts.get("baselines", {}), (m,))]
    lines += [f"| - | full retraining | {facts['users']} | {fmt(facts['retrained'])} | - | 1.00 | - | - | - |"]
    for r in table.to_dict("records"):
        vs = vs_random(paired, r["budget"], r["method"])
        lines.append(f"| {100 * r['budget']:g}% | {r['method']} | {r['users']} | {fmt(r[f'{m}_mean'])} ± "
                     f"{fmt(r[f'{m}_std'])} | {r['seeds']} | {fmt(r['closure_mean'], 2)} ± {fmt(r['closure_std'], 2)}"
                     f" | {fmt(r['groups_covered'], 1)} | {vs.get(RANDOM, '')} | {vs.get(RANDOM_3X, '')} |")
    if (also := ALSO.get(m)) and f"test_{also}" in runs:
        lines += also_lines(runs, also, facts[also])
    if "trained_rmse" in runs:
        lines += trained_lines(runs)
    lines += ["", "## The claims, in words", ""]
    for method in [x for x in dict.fromkeys(table["method"]) if x not in (RANDOM, RANDOM_3X)]:
        lines += [f"- {v}" for v in verdict(paired, method, m)] if len(paired) else []
    lines += ["", "![budget curve](budget_curve.png)", "", "![selected users' label variance](selected_variance.png)"]
    if not per_group.empty:
        lines += group_lines(per_group, ref_groups, shares) + ["", "![per-group error](group_error.png)"]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return lines


def group_lines(per_group: pd.DataFrame, ref_groups: pd.DataFrame, shares: pd.Series) -> list[str]:
    """The per-group table of report.md: test RMSE per taste group and method (mean over seeds), floor, retrained."""
    lines = ["", "## Test RMSE per taste group (mean over seeds)", "",
             "| budget | group | share | " + " | ".join(dict.fromkeys(per_group["method"])) + " | floor | retrained |",
             "|---|---:|---:|" + "---:|" * (per_group["method"].nunique() + 2)]
    for budget, g in per_group.groupby("budget", sort=False):
        m = g.groupby(["group", "method"])["rmse"].mean().unstack()
        rg = ref_groups.pivot(index="group", columns="method", values="rmse")
        for grp in shares.sort_values(ascending=False).index:
            cells = " | ".join(fmt(m.loc[grp].get(k)) if grp in m.index else "n/a"
                               for k in dict.fromkeys(per_group["method"]))
            lines.append(f"| {100 * budget:g}% | {grp} | {100 * shares[grp]:.1f}% | {cells} | "
                         f"{fmt(rg.loc[grp, 'floor'])} | {fmt(rg.loc[grp, 'retrained'])} |")
    return lines


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/puma-selection")
    ap.add_argument("--population", choices=["calibrated", "real"], default="calibrated",
                    help="calibrated: --users synthetic users calibrated on --real; real: --real's own users")
    ap.add_argument("--source", default="movielens",
                    help="--real's format: configs/data-SOURCE.yaml preprocesses it (movielens, amazon, yelp, mind)")
    ap.add_argument("--real", default=str(ROOT.parent / "shared" / "data" / "ml-100k"),
                    help="the real dataset's input (default: MovieLens 100k)")
    ap.add_argument("--users", type=int, default=None,
                    help=f"calibrated: how many users to generate (default {CALIBRATED_USERS:,}); real: a seeded "
                         "sample of that many of its users (default: all)")
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.01, 0.02, 0.05])
    ap.add_argument("--strategies", nargs="+", default=["all"], help="registry names, or all")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--reference-seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--build-seed", type=int, default=0,
                    help="seed of this workspace build: the tiny models' weights and pretraining, and the source "
                         "prompts (run several --out with other build seeds for build-to-build variance)")
    ap.add_argument("--planted", action="store_true",
                    help="calibrated: the positive control, planted taste groups of unequal size (45/25/15/10/5%%), "
                         "taste 60%% and quality 25%% of the label variance, 15%% noise")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--prompt-epochs", type=int, default=6)
    ap.add_argument("--prompt-lr", type=float, default=5e-3)
    ap.add_argument("--adapter-epochs", type=int, default=4, help="the adapter stage's default (the paper's)")
    ap.add_argument("--only-references", action="store_true", help="build the workspace and references, then stop")
    ap.add_argument("--report-only", action="store_true",
                    help="run no trial: the report covers the finished trials of the plan")
    return ap.parse_args()


def main() -> None:
    args = parse()
    out = Path(args.out).resolve()
    setup_logging()
    init_ray()
    data = population(out, args.real, args.users, 0, args.source, args.population == "calibrated",
                      PLANTED if args.planted else {})
    manifest = json.loads((Path(data) / "manifest.json").read_text())
    metric = TASKS[manifest["task"]].metric
    for fam in FAMILIES:
        if not (out / fam / "config.json").is_file():
            run_models(ModelsConfig(family=fam, data=data, out=str(out / fam), seed=args.build_seed, **SIZES[fam]))
    cfg = BenchConfig(data=data, source_model=str(out / FAMILIES[0]), target_model=str(out / FAMILIES[1]),
                      out=str(out), workers=args.workers, prompt_epochs=args.prompt_epochs, prompt_lr=args.prompt_lr)
    source, refs = references(cfg, data, out, args.reference_seeds, args.build_seed)
    log.info("source test %s %.4f; references %s", metric, source["metrics"][metric],
             [(r["floor"]["metrics"][metric], r["retrained"]["metrics"][metric]) for r in refs])
    if args.only_references:
        return
    strategies = list(STRATEGIES) if args.strategies == ["all"] else args.strategies
    unknown = sorted(set(strategies) - set(STRATEGIES))
    if unknown:
        raise SystemExit(f"--strategies: unknown {unknown}; known: {', '.join(STRATEGIES)}")
    trials = plan(args.budgets, strategies, args.seeds)
    ref = {k: float(np.mean([r[k]["metrics"][metric] for r in refs])) for k in ("floor", "retrained")}
    setup = TrialSetup(data=data, sources=[source["store"]], target_model=cfg.target_model, task_metric=metric,
                       workers=args.workers,
                       reference={"floor": {"value": ref["floor"]}, "retrained": {"value": ref["retrained"]}},
                       defaults={"epochs": args.adapter_epochs})
    if not args.report_only:
        setup = shared_losses(setup, out / "source" / "train_loss", [t.strategy for t in trials])
    groups, label_var = population_facts(data)
    ref_users = reference_users(refs, metric)
    runs, per_group = run_all(trials, setup, out, groups, label_var, ref_users, run_missing=not args.report_only)
    if runs.empty:
        raise SystemExit(f"--out {out}: no finished trial to report (run without --report-only)")
    table, paired = summary(runs, metric), paired_vs_random(runs, metric)
    shares = groups["group"].value_counts(normalize=True) if groups is not None else None
    facts = {"users": manifest["users"], "real": args.real, "rows": manifest["rows"], "metric": metric,
             "subset_of": manifest.get("subset_of") and json.loads((out / "data" / "real" / "manifest.json")
                                                                     .read_text())["users"],
             "groups": len(shares) if shares is not None else 0,
             "groups_from": "the generator's" if args.population == "calibrated" else "clustered on train labels",
             "source": source["metrics"][metric], **ref,
             "baselines": refs[0]["retrained"]["metrics"].get("baselines", {})}
    facts["verdict"] = trivial.personalization_verdict(manifest["task"], ref["retrained"], facts["baselines"]) \
        if facts["baselines"] else None
    if also := ALSO.get(metric):  # the second metric's references, from the same evaluations
        facts[also] = {"source": source["metrics"][also],
                       **{k: float(np.mean([r[k]["metrics"][also] for r in refs])) for k in ("floor", "retrained")}}
    plot_budget_curve(table, ref, metric, f"{args.population} users", out / "budget_curve.png")
    ref_groups = reference_groups(ref_users, groups) if diagnosable(groups, metric) else None
    if not per_group.empty:
        plot_group_errors(per_group, ref_groups, shares, out / "group_error.png")
    plot_selected_variance(out, runs, label_var, sorted(args.budgets)[len(args.budgets) // 2],
                           out / "selected_variance.png")
    for line in report(out, args, facts, runs, table, paired, per_group, ref_groups, shares):
        print(line)
    print(json.dumps({"population": args.population, "source": args.source, "users": manifest["users"],
                      "metric": metric, "seeds": args.seeds, "floor": ref["floor"], "retrained": ref["retrained"],
                      "baselines": facts["baselines"], "personalization": facts["verdict"] or "learned",
                      "paired": [{k: r[k] for k in ("budget", "method", "vs", "mean", "low", "high", "seeds")}
                                 for r in paired.to_dict("records")]}))


if __name__ == "__main__":
    main()
