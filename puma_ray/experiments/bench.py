"""`puma-ray bench`: PUMA vs full retraining vs random selection on the same data and machine.

config -> checks -> for each size N (a seeded N-user subset of --data, or all of it):
source prompts on the source model (already paid: reported, never counted) -> for each seed:
random-init floor and full retraining on the target, then every method as a migration trial
(experiments/trial.py: select -> adapter -> migrate -> evaluate): each strategy at budget B, and
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
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from puma_ray.config import BenchConfig, ColdstartConfig, EvaluateConfig, PromptsConfig, RecycleConfig
from puma_ray.core import baselines as trivial
from puma_ray.core.hf import describe_model
from puma_ray.data.schema import read_manifest as read_data_manifest
from puma_ray.data.schema import write_json_atomic
from puma_ray.data.subset import subset_dataset
from puma_ray.errors import PumaError
from puma_ray.runtime.ray_utils import init_ray
from puma_ray.runtime.runs import STAGE_KINDS, CostMeter, check_out, log, open_run, write_kind
from puma_ray.runtime.storage import remote_paths
from puma_ray.core.tasks import TASKS
from puma_ray.store.prompt_store import MANIFEST, store_user_ids, without_users
from puma_ray.experiments.bench_cost import adapter_work, fit_components, projection, with_adapter_work
from puma_ray.experiments.bench_methods import (FLOOR, RECYCLED, RETRAINED, SOURCE, adapter_defaults, cold_metric,
                                         coldstart_name, methods_of, warm_name)
from puma_ray.experiments.bench_report import (gap_notes, paired_rows, plot_cold, plot_cost, plot_metrics, summary_table,
                                        write_report)
from puma_ray.experiments.trial import TrialSetup, claim, closure, run_trial, shared_losses, stage_cost

def trained(cfg: BenchConfig, data: str, model: str, out: Path, seed: int, split: str, freeze: bool = False,
            init_from: str | None = None, epochs: int | None = None) -> dict:
    """Prompts on `model` (reused when complete; from the prompts of `init_from` when given, for `epochs`, default
    --prompt-epochs), evaluated on `split`: {store, metrics, device_s, wall_s, startup_device_s, samples, users}."""
    from puma_ray.stages.evaluate import run_evaluate
    from puma_ray.stages.prompts import run_prompts

    store, ev = out / "store", out / f"eval-{split}"
    epochs = epochs or cfg.prompt_epochs
    claim(out, {"data": data, "model": model, "seed": seed, "freeze_prompts": freeze, "epochs": epochs,
                "lr": cfg.prompt_lr, "workers": cfg.workers, "split": split,
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
