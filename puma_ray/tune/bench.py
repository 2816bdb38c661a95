"""`puma-ray bench`: PUMA vs full retraining vs random selection on the same data and machine.

config -> checks -> for each size N (a seeded N-user subset of --data, or all of it):
source prompts on the source model (already paid: reported, never counted) -> for each seed:
random-init floor and full retraining on the target, then every method as a migration trial
(tune/trial.py: select -> adapter -> migrate -> evaluate): each strategy at budget B, and
random at 3B (optional rows: prompt recycling, the first strategy with a recycled start, its
migration tuned --warm-epochs, and its migration with --coldstart-fraction of the unselected
users held out and given `coldstart` prompts) -> per method mean ± std over seeds of the test
metric, gap closure and measured cost; the paired difference PUMA - random (same seed: same
adapter initialisation and data order) with its 95% t-interval -> cost per stage fitted as
fixed + per_user x users over the measured points and projected to 100k and 1M users with a
2,000-user budget (labelled projected) -> report.md, table.csv, runs.csv, metrics.png, cost.png,
coldstart.png (with a cold-start row), bench.json.

Every figure is on the `test` split: floor and retraining choose their best epoch on
`valid`, adapters too, and nothing else is chosen.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from puma_ray.config import (AdapterStageConfig, BenchConfig, ColdstartConfig, EvaluateConfig, PromptsConfig,
                             RecycleConfig)
from puma_ray.core import baselines as trivial
from puma_ray.core.hf import describe_model, prompt_lrs
from puma_ray.data.schema import read_manifest as read_data_manifest
from puma_ray.data.schema import write_json_atomic
from puma_ray.data.subset import subset_dataset
from puma_ray.errors import PumaError
from puma_ray.runtime.ray_utils import init_ray
from puma_ray.runtime.runs import STAGE_KINDS, CostMeter, check_out, log, open_run, write_kind, write_markdown
from puma_ray.runtime.storage import remote_paths
from puma_ray.core.tasks import TASKS
from puma_ray.select.strategies import STRATEGIES
from puma_ray.store.prompt_store import MANIFEST, store_user_ids, without_users
from puma_ray.train.common import epochs_for, steps_for
from puma_ray.tune.stats import (AdapterCost, LinearCost, fit_adapter_cost, fit_linear_cost, mean_std,
                                 paired_interval, per_unit_rate)
from puma_ray.tune.trial import TrialSetup, claim, closure, run_trial, shared_losses, stage_cost

FLOOR, RETRAINED, SOURCE = "random init (floor)", "full retraining", "source model"
RECYCLED = "prompt recycling (no users)"


def methods_of(cfg: BenchConfig) -> list[tuple[str, dict]]:
    """(method name, trial parameters but the seed): each strategy at B, then random at 3B, then (with
    --recycled-init) the first strategy at B with its adapter started from the recycled prompts."""
    names = strategy_names(cfg)
    out = [(f"{s} ({cfg.budget})", {"strategy": s, "budget": cfg.budget}) for s in names]
    out.append((f"random ({3 * cfg.budget})", {"strategy": "random", "budget": 3 * cfg.budget}))
    if cfg.recycled_init:
        out.append((recycled_init_name(cfg), {"strategy": names[0], "budget": cfg.budget, "init": "recycled"}))
    return out


def strategy_names(cfg: BenchConfig) -> list[str]:
    """--strategies, with 'all' read as every registered strategy."""
    return list(STRATEGIES) if cfg.strategies == ["all"] else cfg.strategies


def recycled_init_name(cfg: BenchConfig) -> str:
    """The table's name of the first strategy at B with a recycled start."""
    return f"{strategy_names(cfg)[0]} ({cfg.budget}), recycled init"


def trained(cfg: BenchConfig, data: str, model: str, out: Path, seed: int, split: str, freeze: bool = False,
            init_from: str | None = None, epochs: int | None = None) -> dict:
    """Prompts on `model` (reused when complete; from the prompts of `init_from` when given, for `epochs`, default
    --prompt-epochs), evaluated on `split`: {store, metrics, device_s, wall_s, startup_device_s, samples, users}."""
    from puma_ray.stages.evaluate import run_evaluate
    from puma_ray.stages.prompts import run_prompts

    store, ev = out / "store", out / f"eval-{split}"
    epochs = epochs or cfg.prompt_epochs
    prompt_lr, head_lr = prompt_lrs(cfg.prompt_lr, model)  # resolved: a model recording another rate is new work
    claim(out, {"data": data, "model": model, "seed": seed, "freeze_prompts": freeze, "epochs": epochs,
                "lr": prompt_lr, "head_lr": head_lr, "workers": cfg.workers, "split": split,
                **({"init_from": init_from} if init_from else {}),
                **({"dtype": cfg.dtype} if cfg.dtype != "auto" else {})}, "prompt training")
    if not (store / MANIFEST).is_file():
        run_prompts(PromptsConfig(data=data, model=model, out=str(store), workers=cfg.workers,
                                  cpus_per_worker=cfg.cpus_per_worker, use_gpu=cfg.use_gpu,
                                  gpus_per_worker=cfg.gpus_per_worker, dtype=cfg.dtype,
                                  epochs=epochs, lr=cfg.prompt_lr, seed=seed, freeze_prompts=freeze,
                                  init_from=init_from))
    if not (ev / "metrics.json").is_file():
        run_evaluate(EvaluateConfig(data=data, model=model, prompts=str(store), split=split, out=str(ev),
                                    use_gpu=cfg.use_gpu, gpus_per_worker=cfg.gpus_per_worker, dtype=cfg.dtype,
                                    baselines=not freeze))  # the floor's rows are retraining's: fitted once
    metrics = json.loads((ev / "metrics.json").read_text())
    cost = stage_cost(store)
    return {"store": str(store), "metrics": metrics, "device_s": cost["device_seconds"], "wall_s": cost["wall_s"],
            "startup_device_s": cost["startup_device_s"], "samples": cost.get("samples"),
            "users": json.loads((store / MANIFEST).read_text())["num_users"]}


def recycled(cfg: BenchConfig, data: str, source_store: str, floor_store: str, out: Path, split: str) -> dict:
    """The source store recycled into the target (no user data; the floor's head), evaluated on `split`:
    {metrics, device_s, wall_s} (the recycle stage's own cost; the head's is the floor's)."""
    from puma_ray.stages.evaluate import run_evaluate
    from puma_ray.stages.recycle import run_recycle

    store, ev = out / "store", out / f"eval-{split}"
    claim(out, {"data": data, "source": source_store, "target_model": cfg.target_model, "head_from": floor_store,
                "split": split}, "prompt recycling")
    if not (store / MANIFEST).is_file():
        run_recycle(RecycleConfig(source=source_store, source_model=cfg.source_model, target_model=cfg.target_model,
                                  out=str(store), head_from=floor_store))
    if not (ev / "metrics.json").is_file():
        run_evaluate(EvaluateConfig(data=data, model=cfg.target_model, prompts=str(store), split=split, out=str(ev),
                                    use_gpu=cfg.use_gpu, gpus_per_worker=cfg.gpus_per_worker, dtype=cfg.dtype))
    cost = stage_cost(store)
    return {"metrics": json.loads((ev / "metrics.json").read_text()), "device_s": cost["device_seconds"],
            "wall_s": cost["wall_s"]}


def size_runs(cfg: BenchConfig, data: str, users: int, root: Path, metric: str) -> list[dict]:
    """Every method x seed at one size; one flat row each."""
    m, split = metric, cfg.split
    src = trained(cfg, data, cfg.source_model, root / "source", cfg.seeds[0], split)
    rows = [{"size": users, "seed": cfg.seeds[0], "method": SOURCE, "strategy": "", "users_trained": users,
             f"{split}_{m}": src["metrics"][m], "cost_device_s": src["device_s"], "cost_wall_s": src["wall_s"],
             "paid": True}]
    ref_rows = []
    for seed in cfg.seeds:
        floor = trained(cfg, data, cfg.target_model, root / f"seed{seed}" / "floor", seed, split, freeze=True)
        full = trained(cfg, data, cfg.target_model, root / f"seed{seed}" / "retrained", seed, split)
        if seed == cfg.seeds[0]:  # the baselines it was scored beside: the same rows at every seed
            found = full["metrics"].get("baselines")
        ref = {"split": split, "metric": m, "floor": {"value": floor["metrics"][m], "device_s": floor["device_s"]},
               "retrained": {"value": full["metrics"][m], "device_s": full["device_s"]}}
        ref_rows.append(ref)
        for name, run in ((FLOOR, floor), (RETRAINED, full)):
            rows.append({"size": users, "seed": seed, "method": name, "strategy": "", "users_trained": users,
                         f"{split}_{m}": run["metrics"][m],
                         f"{split}_closure": closure(ref["floor"]["value"], ref["retrained"]["value"], run["metrics"][m],
                                                     m),
                         "cost_device_s": run["device_s"], "cost_wall_s": run["wall_s"],
                         "prompts_device_s": run["device_s"], "prompts_startup_device_s": run["startup_device_s"],
                         "prompts_samples": run["samples"],
                         "paid": False})
        rec_store = None
        if cfg.recycle:
            rec_store = str(root / f"seed{seed}" / "recycled" / "store")
            rec = recycled(cfg, data, src["store"], floor["store"], root / f"seed{seed}" / "recycled", split)
            rows.append({"size": users, "seed": seed, "method": RECYCLED, "strategy": "", "users_trained": 0,
                         f"{split}_{m}": rec["metrics"][m],
                         f"{split}_closure": closure(ref["floor"]["value"], ref["retrained"]["value"],
                                                     rec["metrics"][m], m),
                         "cost_device_s": rec["device_s"], "cost_wall_s": rec["wall_s"], "paid": False})
        setup = TrialSetup(data=data, sources=[src["store"]], target_model=cfg.target_model, task_metric=m,
                           workers=cfg.workers, cpus_per_worker=cfg.cpus_per_worker, use_gpu=cfg.use_gpu,
                           gpus_per_worker=cfg.gpus_per_worker,
                           dtype=cfg.dtype, report_split=split, reference=ref, defaults=adapter_defaults(cfg),
                           recycled=rec_store)
        setup = shared_losses(setup, root / "source" / "train_loss", [p["strategy"] for _, p in methods_of(cfg)])
        for name, params in methods_of(cfg):
            log.info("bench: %d users, seed %d: %s", users, seed, name)
            trial_path = root / f"seed{seed}" / name.replace(" ", "").replace("(", "-").replace(")", "").replace(",", "-")
            row = run_trial(setup, {**params, "seed": seed}, trial_path)
            if params.get("init") == "recycled":  # its start is the recycled store: that stage's cost is its own too
                row = {**row, "recycle_device_s": rec["device_s"],
                       "cost_device_s": round(row["cost_device_s"] + rec["device_s"], 3)}
            rows.append({**row, "size": users, "seed": seed, "method": name, "paid": False,
                         "trial_path": str(trial_path)})
            if name == methods_of(cfg)[0][0]:
                first_row = rows[-1]
                if cfg.warm_epochs:
                    rows.append(warm_row(cfg, data, first_row, root / f"seed{seed}", ref, seed, users))
                if cfg.coldstart_fraction:
                    rows.append(coldstart_row(cfg, data, first_row, root / f"seed{seed}", ref, seed, users))
    write_reference(root, ref_rows, data, m, found)
    return rows


def warm_name(cfg: BenchConfig) -> str:
    """The table's name of the first strategy's migration tuned for --warm-epochs."""
    return f"{methods_of(cfg)[0][0]} + {cfg.warm_epochs} epoch{'s' if cfg.warm_epochs > 1 else ''} tuning"


def warm_row(cfg: BenchConfig, data: str, trial: dict, seed_dir: Path, ref: dict, seed: int, users: int) -> dict:
    """The first strategy's migrated store tuned --warm-epochs on the target (`prompts --init-from`): its row,
    costed as the migration plus the tuning."""
    m, split = ref["metric"], ref["split"]
    store = str(Path(trial["trial_path"]) / "store")
    tuned = trained(cfg, data, cfg.target_model, seed_dir / f"warm{cfg.warm_epochs}", seed, split, init_from=store,
                    epochs=cfg.warm_epochs)
    return {"size": users, "seed": seed, "method": warm_name(cfg), "strategy": trial["strategy"],
            "users_trained": users, f"{split}_{m}": tuned["metrics"][m],
            f"{split}_closure": closure(ref["floor"]["value"], ref["retrained"]["value"], tuned["metrics"][m], m),
            "cost_device_s": round(trial["cost_device_s"] + tuned["device_s"], 3), "cost_wall_s":
            round(trial["cost_wall_s"] + tuned["wall_s"], 3), "tuning_device_s": tuned["device_s"],
            "trial_path": trial["trial_path"], "warm_store": tuned["store"], "paid": False}


def coldstart_name(cfg: BenchConfig) -> str:
    """The table's name of the first strategy's migration with --coldstart-fraction of the users cold."""
    return f"{methods_of(cfg)[0][0]}, {100 * cfg.coldstart_fraction:g}% of users cold-start"


def cold_users_of(store: str, selected: str, fraction: float, seed: int) -> list[str]:
    """round(fraction x store users) users drawn (seeded) from those the trial did not select: users who joined
    after the source was trained could not have been selected, so the adapter stays the trial's own."""
    users = store_user_ids(store)
    chosen = set(pq.read_table(selected, columns=["user_id"]).column("user_id").to_pylist())
    pool = sorted(set(users) - chosen)
    k = min(len(pool), round(fraction * len(users)))
    if k < 1:
        raise PumaError(f"--coldstart-fraction {fraction}: no unselected user to treat as cold-start "
                        f"({len(users)} users, {len(chosen)} selected)")
    return sorted(np.random.default_rng(seed).choice(pool, size=k, replace=False).tolist())


def cold_metric(metric: str) -> str:
    """The metric the cold users alone are scored on: RMSE exactly, AUC as their mean per-user AUC (uAUC)."""
    return "rmse" if metric == "rmse" else "uauc"


def users_metric(per_user: Path, users: list[str], metric: str) -> float:
    """The metric over `users`' rows from an evaluation's per_user.parquet: exact RMSE (from per-user RMSE and
    counts); for AUC, the mean per-user AUC (uAUC) of those users."""
    t = pq.read_table(per_user).to_pandas()
    t = t[t["user_id"].isin(set(users))]
    if metric == "rmse":
        return float(np.sqrt((t["rmse"] ** 2 * t["n"]).sum() / t["n"].sum()))
    return float(t["auc"].dropna().mean())


def coldstart_row(cfg: BenchConfig, data: str, trial: dict, seed_dir: Path, ref: dict, seed: int, users: int) -> dict:
    """The first strategy's migration with --coldstart-fraction of its users removed (they have no source prompt)
    and given prompts by `coldstart` from their nearest migrated neighbours; evaluated over every user, and on the
    cold users alone (their prompts vs their own migrated, floor and retrained ones). Cost = the migration plus the
    coldstart stage."""
    from puma_ray.stages.coldstart import run_coldstart
    from puma_ray.stages.evaluate import run_evaluate

    m, split, trial_dir = ref["metric"], ref["split"], Path(trial["trial_path"])
    out = seed_dir / f"coldstart{cfg.coldstart_fraction:g}"
    claim(out, {"data": data, "migrated": str(trial_dir / "store"), "fraction": cfg.coldstart_fraction,
                "seed": seed, "split": split}, "cold-start run")
    cold = cold_users_of(str(trial_dir / "store"), str(trial_dir / "select" / "selected.parquet"),
                         cfg.coldstart_fraction, seed)
    if not (out / "warm" / MANIFEST).is_file():
        without_users(trial_dir / "store", out / "warm", cold,
                      {"step": "held_out", "why": "bench: users treated as cold-start (no source prompt)"})
    if not (out / "store" / MANIFEST).is_file():
        run_coldstart(ColdstartConfig(data=data, prompts=str(out / "warm"), out=str(out / "store")))
    ev = out / f"eval-{split}"
    if not (ev / "metrics.json").is_file():
        run_evaluate(EvaluateConfig(data=data, model=cfg.target_model, prompts=str(out / "store"), split=split,
                                    out=str(ev), use_gpu=cfg.use_gpu,
                                    gpus_per_worker=cfg.gpus_per_worker, dtype=cfg.dtype))
    value = json.loads((ev / "metrics.json").read_text())[m]
    cold_m = cold_metric(m)
    cost = stage_cost(out / "store")
    return {"size": users, "seed": seed, "method": coldstart_name(cfg), "strategy": trial["strategy"],
            "users_trained": trial["users_trained"], f"{split}_{m}": value,
            f"{split}_closure": closure(ref["floor"]["value"], ref["retrained"]["value"], value, m),
            "cost_device_s": round(trial["cost_device_s"] + cost["device_seconds"], 3),
            "cost_wall_s": round(trial["cost_wall_s"] + cost["wall_s"], 3), "coldstart_device_s": cost["device_seconds"],
            "cold_users": len(cold), f"cold_{split}_{cold_m}": users_metric(ev / "per_user.parquet", cold, m),
            **{f"cold_{k}_{split}_{cold_m}": users_metric(path / "per_user.parquet", cold, m) for k, path in
               (("migrated", trial_dir / "eval" / split), ("floor", seed_dir / "floor" / f"eval-{split}"),
                ("retrained", seed_dir / "retrained" / f"eval-{split}"))},
            "trial_path": trial["trial_path"], "coldstart_store": str(out / "store"), "paid": False}


def adapter_defaults(cfg: BenchConfig) -> dict:
    """Selection and adapter knobs every method shares (unset ones take the stages' defaults)."""
    knobs = {"clusters": cfg.clusters, "min_per_cluster": cfg.min_per_cluster, "bins": cfg.bins,
             "width": cfg.adapter_width, "lr": cfg.adapter_lr, "epochs": cfg.adapter_epochs,
             "min_steps": cfg.adapter_min_steps}
    return {k: v for k, v in knobs.items() if v is not None}


def write_reference(root: Path, refs: list[dict], data: str, metric: str, found: dict | None) -> None:
    """reference.json (seed means, and the trivial baselines on the same rows) that `puma-ray sweep --reference`
    reads for gap closure on this data."""
    def avg(key: str, field: str) -> float:
        return float(np.mean([r[key][field] for r in refs]))

    write_json_atomic(root / "reference.json", {
        "split": refs[0]["split"], "metric": metric, "seeds": len(refs), "data": data,
        "dataset_fingerprint": read_data_manifest(data)["fingerprint"],
        "floor": {"value": avg("floor", "value"), "device_s": avg("floor", "device_s")},
        "retrained": {"value": avg("retrained", "value"), "device_s": avg("retrained", "device_s")},
        **({"baselines": found} if found else {})})


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


def stage_points(runs: pd.DataFrame) -> dict[str, tuple[list[float], list[float], list[float]]]:
    """(units, device-seconds, start-up device-seconds) measured per cost component: prompts (users),
    select/<strategy> (users) and migrate (users); the adapter has its own model (adapter_fit)."""
    pts: dict[str, tuple[list[float], list[float], list[float]]] = {}

    def add(key: str, units: float, cost: float, startup: float) -> None:
        if cost is not None and math.isfinite(cost):
            for lst, v in zip(pts.setdefault(key, ([], [], [])), (units, cost, startup)):
                lst.append(float(v) if v is not None and math.isfinite(v) else 0.0)

    for _, r in runs.iterrows():
        if r["method"] == RETRAINED:
            add("prompts", r["size"], r["prompts_device_s"], r.get("prompts_startup_device_s"))
        elif r["method"] not in (SOURCE, FLOOR, RECYCLED):  # a migration trial
            add(f"select/{r['strategy']}", r["size"], r["select_device_s"], r.get("select_startup_device_s"))
            add("migrate", r["size"], r["migrate_device_s"], r.get("migrate_startup_device_s"))
    return pts


@dataclass
class AdapterWork:
    """The adapter's epochs and training samples at a budget, as `puma-ray adapter` would choose them."""

    rows_per_user: float
    """Mean training rows per user of the data."""
    epochs: int
    min_steps: int
    batch_size: int
    workers: int

    def at(self, budget: int) -> tuple[int, float]:
        rows = budget * self.rows_per_user
        epochs = epochs_for(self.epochs, self.min_steps, steps_for([math.ceil(rows / self.workers)], self.batch_size))
        return epochs, epochs * rows


def adapter_work(cfg: BenchConfig) -> AdapterWork:
    """From the data's users.parquet and the adapter's settings in this bench (else the stage's defaults)."""
    defaults = {f.name: f.default for f in dataclasses.fields(AdapterStageConfig)}
    knobs = {**defaults, **adapter_defaults(cfg)}
    n_train = pq.read_table(Path(cfg.data) / "users.parquet", columns=["n_train"]).column(0).to_numpy()
    return AdapterWork(float(n_train.mean()) if len(n_train) else 0.0, knobs["epochs"], knobs["min_steps"],
                       knobs["batch_size"], cfg.workers)


def with_adapter_work(runs: pd.DataFrame) -> pd.DataFrame:
    """adapter_samples / adapter_epochs of every migration trial, read from its adapter's cost record where the
    trial's result predates them."""
    runs = runs.copy()
    for col in ("adapter_samples", "adapter_epochs"):
        if col not in runs:
            runs[col] = np.nan
    for i, r in runs.iterrows():
        if isinstance(r.get("trial_path"), str) and not np.isfinite(float(r["adapter_samples"])):
            c = stage_cost(Path(r["trial_path"]) / "adapter")
            runs.loc[i, ["adapter_samples", "adapter_epochs"]] = [c.get("samples"), (c.get("extra") or {}).get("epochs")]
    return runs


def adapter_fit(runs: pd.DataFrame) -> AdapterCost:
    """fixed + per epoch + per sample over the migration trials; per sample at least full retraining's marginal
    cost per sample (every adapter sample runs the same frozen target forward and backward, plus the adapter)."""
    full = runs[(runs["method"] == RETRAINED)].dropna(subset=["prompts_samples"]) if "prompts_samples" in runs \
        else runs.iloc[:0]
    floor = per_unit_rate(full["prompts_samples"], full["prompts_device_s"],
                          full["prompts_startup_device_s"].fillna(0.0)) if len(full) else 0.0
    trials = runs.dropna(subset=["adapter_samples", "adapter_epochs", "adapter_device_s"])
    return fit_adapter_cost(trials["adapter_epochs"], trials["adapter_samples"], trials["adapter_device_s"], floor)


def fit_components(runs: pd.DataFrame) -> dict[str, LinearCost | AdapterCost]:
    """Each component's fixed + per-unit cost: least squares over >= 2 unit counts; with one, the fixed
    part is the stage's measured start-up (the time it did not spend on users) and the rest is per unit."""
    fits = {}
    for key, (units, cost, startup) in stage_points(runs).items():
        if len(set(units)) >= 2:
            fits[key] = fit_linear_cost(units, cost)
        else:
            start = float(np.mean(startup))
            per = max(float(np.mean(cost)) - start, 0.0) / float(units[0])
            rel = float(np.max(np.abs(np.asarray(cost) - (start + per * units[0])) / np.asarray(cost)))
            fits[key] = LinearCost(start, per, len(units), rel)
    if "adapter_samples" in runs and runs["adapter_samples"].notna().any():
        fits["adapter"] = adapter_fit(runs)
    return fits


def projection(fits: dict, strategy: str, users: int, budget: int, work: AdapterWork) -> dict:
    """Projected device-seconds at `users` with `budget` selected users: strategy vs full retraining."""
    epochs, samples = work.at(budget)
    adapter = fits["adapter"](epochs, samples)
    ours = fits[f"select/{strategy}"](users) + adapter + fits["migrate"](users)
    full = fits["prompts"](users)
    return {"users": users, "budget": budget, "strategy": strategy, "device_s": ours, "retraining_device_s": full,
            "ratio": ours / full, "adapter_device_s": adapter, "adapter_epochs": epochs, "adapter_samples": samples}


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


def size_baselines(out: Path, cfg: BenchConfig, sizes: list[int]) -> dict[int, dict]:
    """Each size's trivial baselines (the first seed's full-retraining evaluation fitted them on its rows),
    read back from the size's reference.json."""
    found = {}
    for n in sizes:
        ref = json.loads(((out / f"n{n}" if cfg.sizes else out) / "reference.json").read_text())
        if ref.get("baselines"):
            found[n] = ref["baselines"]
    return found


def personalization(table: pd.DataFrame, found: dict[int, dict], task: str, metric: str) -> dict[int, str | None]:
    """Per size: None when full retraining (seed mean) beats the per-user and item baselines, else the verdict."""
    out = {}
    for size, b in found.items():
        full = table[(table["size"] == size) & (table["method"] == RETRAINED)][f"{metric}_mean"]
        if len(full):
            out[size] = trivial.personalization_verdict(task, float(full.iloc[0]), b)
    return out


@remote_paths
def run_bench(cfg: BenchConfig) -> dict:
    """Benchmark every method at every size and seed; returns the JSON summary."""
    check_out(cfg.out, "bench")  # first: an --out holding another kind of output is refused untouched
    data = read_data_manifest(cfg.data)
    task = TASKS[data["task"]]
    for m in (cfg.source_model, cfg.target_model):
        describe_model(m)  # loads: a model directory that does not is a clear error before anything runs
    sizes = sorted(cfg.sizes) if cfg.sizes else [data["users"]]
    if sizes[-1] > data["users"]:
        raise PumaError(f"--sizes {sizes[-1]} exceeds the {data['users']} users of --data {cfg.data}")
    if 3 * cfg.budget > sizes[0]:
        raise PumaError(f"--budget {cfg.budget}: random at 3 x budget needs {3 * cfg.budget} users, the smallest "
                        f"size has {sizes[0]}; lower --budget or raise --sizes")
    out = Path(cfg.out)  # its config.yaml is written once every run in it is consistent with this config
    out.mkdir(parents=True, exist_ok=True)
    write_kind(out, STAGE_KINDS["bench"])
    init_ray()
    metric = task.metric
    rows = []
    with CostMeter(out, "bench", cfg, workers=cfg.workers) as meter:
        for n in sizes:
            root = out / f"n{n}" if cfg.sizes else out  # one size (all users): no size level
            d = cfg.data
            if n < data["users"]:
                subset_dataset(cfg.data, n, cfg.seeds[0], root / "data")
                d = str(root / "data")
            log.info("bench: size %d users (%s)", n, d)
            rows += size_runs(cfg, str(Path(d).resolve()), n, root, metric)
        meter.samples = len(rows)
    open_run(out, "bench", cfg)
    runs = with_adapter_work(pd.DataFrame(rows))
    runs.to_csv(out / "runs.csv", index=False)
    table = summary_table(runs, metric, cfg.split)
    table.to_csv(out / "table.csv", index=False)
    paired = paired_rows(runs, cfg, metric)
    fits = fit_components(runs)
    work = adapter_work(cfg)
    strategy = methods_of(cfg)[0][1]["strategy"]
    projected = [projection(fits, strategy, u, cfg.project_budget, work) for u in cfg.project_users]
    plot_metrics(table, metric, out / "metrics.png")
    plot_cost(runs, fits, cfg, work, out / "cost.png")
    cold_png = plot_cold(runs, cfg, metric, out / "coldstart.png")
    note = f"Data `{cfg.data}` ({data['source']}, {data['users']} users), sizes {', '.join(map(str, sizes))}."
    notes = gap_notes(runs, metric, cfg.split)
    found = size_baselines(out, cfg, sizes)
    verdicts = personalization(table, found, task.name, metric)
    notes += [f"{size} users: {v}" for size, v in verdicts.items() if v]
    report = write_report(out, cfg, table, paired, fits, projected, metric, note, notes, cold_png, found)
    summary = {"out": str(out), "report": str(report), "sizes": sizes, "seeds": cfg.seeds, "metric": metric,
               "baselines": found.get(sizes[-1], {}), "baselines_by_size": {str(k): v for k, v in found.items()},
               "personalization": {str(k): v or "learned" for k, v in verdicts.items()}, "notes": notes, "paired": paired, "projected": projected,
               "fits": {k: dataclasses.asdict(f) for k, f in fits.items()}, "adapter_work": dataclasses.asdict(work),
               "table": table.to_dict(orient="records"), "wall_s": meter.record.wall_s}
    write_json_atomic(out / "bench.json", summary)
    log.info("bench: projected %s / full retraining at %d users: %.3f -> %s", strategy, projected[-1]["users"],
             projected[-1]["ratio"], report)
    return summary
