"""`puma-ray sweep`: Ray Tune over selection and adapter knobs -> the cost/accuracy curve.

config -> checks (dataset, source stores, target model, search space, reference) -> Tuner
(a trial = select -> adapter -> migrate -> evaluate, experiments/trial.py; the adapter's
TorchTrainer runs inside the trial and reports every epoch to Tune through
TuneReportCallback, which ASHA can act on) -> results table, Pareto front, plots, best.yaml.

Outputs (DIR):
    results.parquet / results.csv   one row per trial: parameters, metrics, measured cost, status
    pareto.csv                      trials no other trial beats on both cost and the reported metric
    cost_accuracy.png               cost vs reported metric, Pareto front, floor / full retraining
    budget_curve.png                reported metric vs users trained on, one line per strategy
    best.yaml                       the adapter config of the trial best on the VALID split
                                    (`puma-ray adapter --config best.yaml` runs it as is)
    report.md                       the table and the figures
    trials/<key>/                   each trial's stage outputs (reused when the sweep is re-run)
    tune/<name>/                    Ray Tune's experiment state (the same --name resumes it)

Configs are chosen on `valid`, figures are reported on `test` (never used to choose).
"""

from __future__ import annotations

import hashlib
import json
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from puma_ray.config import AdapterStageConfig, SweepConfig
from puma_ray.core import baselines as trivial
from puma_ray.core.hf import describe_model
from puma_ray.core.tasks import TASKS
from puma_ray.data.schema import read_manifest as read_data_manifest
from puma_ray.data.schema import shard_paths
from puma_ray.errors import ConfigError, PumaError
from puma_ray.runtime.ray_utils import init_ray, quiet_ray_data_console
from puma_ray.runtime.runs import STAGE_KINDS, CostMeter, check_out, log, open_run, write_kind, write_markdown
from puma_ray.runtime.storage import remote_paths
from puma_ray.store.prompt_store import read_manifest as read_store_manifest
from puma_ray.experiments.space import TRIAL_KEYS, SearchSpace, load_space
from puma_ray.experiments.stats import pareto_front
from puma_ray.experiments.trial import TrialSetup, closure, run_trial, select_default, shared_losses

TRIAL_RESOURCES = {"CPU": 0, "memory": 64 * 1024**2}  # the trial driver; its stages reserve their own


def read_reference(path: str, split: str, metric: str, data_fingerprint: str) -> dict:
    """reference.json (written by `bench` and `demo`): floor and full retraining on the same data and split."""
    file = Path(path) / "reference.json" if Path(path).is_dir() else Path(path)
    if not file.is_file():
        raise ConfigError(f"reference: no reference.json at {path} (give a `puma-ray bench` or demo output)")
    try:
        ref = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"reference: {file} is not valid JSON ({exc.msg})") from None
    for key in ("split", "metric", "floor", "retrained"):
        if key not in ref:
            raise ConfigError(f"reference: {file} lacks {key!r}")
    if ref["split"] != split or ref["metric"] != metric:
        raise ConfigError(f"reference: {file} is {ref['metric']} on {ref['split']}, the sweep reports {metric} on {split}")
    if ref.get("dataset_fingerprint") not in (None, data_fingerprint):
        raise ConfigError(f"reference: {file} was measured on another dataset (fingerprints differ)")
    return ref


def tune_space(space: SearchSpace) -> dict:
    """The space as Ray Tune's param_space."""
    from ray import tune

    make = {"const": lambda a: a[0], "grid": lambda a: tune.grid_search(list(a)), "choice": lambda a: tune.choice(list(a)),
            "uniform": lambda a: tune.uniform(*a), "loguniform": lambda a: tune.loguniform(*a),
            "randint": lambda a: tune.randint(int(a[0]), int(a[1]))}
    return {k: make[d.kind](d.args) for k, d in space.params.items()}


def trial_key(params: dict) -> str:
    """A readable, stable directory name for a parameter set (same parameters -> same directory)."""
    short = {"strategy": "", "budget": "b", "clusters": "k", "width": "w", "rank": "r", "lora_rank": "lora",
             "lr": "lr", "epochs": "e", "seed": "s"}
    parts = [f"{short[k]}{params[k]:g}" if isinstance(params[k], float) else f"{short[k]}{params[k]}"
             for k in short if k in params]
    digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return "-".join(parts + [digest])


def _trial_task(setup: TrialSetup, params: dict, trial_dir: str, callbacks: tuple) -> dict:
    quiet_ray_data_console()
    return run_trial(setup, params, trial_dir, callbacks=callbacks)


def sweep_trial(config: dict, setup: TrialSetup, trials_dir: str) -> None:
    """Tune's function trainable: one migration trial, reported as one dict.

    The stages run in a task outside the trial's placement group: Tune captures a trial's child
    tasks in its (CPU-less) bundle, where Ray Data's shuffle tasks (evaluate's join) cannot be
    scheduled. The adapter's epochs still reach Tune through TuneReportCallback."""
    import ray
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    params = {k: config[k] for k in TRIAL_KEYS if k in config}
    task = ray.remote(_trial_task).options(num_cpus=0, max_retries=0,
                                           scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None))
    row = ray.get(task.remote(setup, params, str(Path(trials_dir) / trial_key(params)), (TuneReportCallback(),)))
    tune.report({k: v for k, v in row.items() if v is None or isinstance(v, (int, float, str, bool))})


def _tuner(cfg: SweepConfig, space: SearchSpace, setup: TrialSetup, out: Path, metric: str, mode: str):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    trainable = tune.with_resources(partial(sweep_trial, setup=setup, trials_dir=str(out / "trials")), TRIAL_RESOURCES)
    storage, name = str((out / "tune").resolve()), cfg.name
    path = Path(storage) / name
    if tune.Tuner.can_restore(str(path)):
        log.info("sweep: resuming %s (finished trials are kept)", path)
        return tune.Tuner.restore(str(path), trainable, resume_unfinished=True, restart_errored=True)
    scheduler_name = cfg.scheduler or space.scheduler
    epochs = space.max_epochs(AdapterStageConfig.epochs)
    # stop_last_trials=False: a trial that survives every rung goes on past its last epoch to migrate and
    # evaluate (with the default, ASHA stops it at max_t, before the report the sweep needs)
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=max(epochs, space.grace_period),
                              grace_period=space.grace_period,
                              stop_last_trials=False) if scheduler_name == "asha" else FIFOScheduler()
    return tune.Tuner(
        trainable, param_space=tune_space(space),
        tune_config=tune.TuneConfig(metric=metric, mode=mode, num_samples=space.num_samples, scheduler=scheduler,
                                    search_alg=BasicVariantGenerator(max_concurrent=cfg.max_concurrent,
                                                                     random_state=cfg.seed)),
        run_config=tune.RunConfig(name=name, storage_path=storage, verbose=0))


def results_table(grid, space: SearchSpace) -> pd.DataFrame:
    """One row per trial: its parameters, its final report (or last epoch when stopped) and status."""
    rows = []
    for r in grid:
        status = "error" if r.error else ("finished" if r.metrics and "cost_device_s" in r.metrics else "stopped")
        params = {k: r.config.get(k) for k in space.params}
        metrics = {k: v for k, v in (r.metrics or {}).items() if not k.startswith(
            ("time_", "timestamp", "pid", "hostname", "node_ip", "date", "config", "checkpoint_dir_name", "done",
             "training_iteration", "trial_id", "iterations_since_restore", "should_checkpoint"))}
        key = trial_key({k: r.config[k] for k in TRIAL_KEYS if k in r.config})
        rows.append({**params, **metrics, "budget_requested": r.config.get("budget"), "trial_dir": key, "status": status,
                     "error": str(r.error).splitlines()[0] if r.error else ""})
    return pd.DataFrame(rows)


def with_reference(df: pd.DataFrame, ref: dict | None, metric: str, task_metric: str) -> pd.DataFrame:
    """Closure and cost vs retraining of every trial against this run's --reference (a resumed sweep may be
    given a better reference than the one its first trials reported against)."""
    if not ref or metric not in df:
        return df
    df = df.copy()
    df[f"{ref['split']}_closure"] = [closure(ref["floor"]["value"], ref["retrained"]["value"], v, task_metric)
                                     for v in df[metric]]
    if ref["retrained"].get("device_s") and "cost_device_s" in df:
        df["cost_vs_retraining"] = df["cost_device_s"] / ref["retrained"]["device_s"]
    return df


def plot_cost_accuracy(df: pd.DataFrame, front: np.ndarray, metric: str, ref: dict | None, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 5))
    ax = fig.subplots()
    strategies = sorted(df["strategy"].dropna().unique()) if "strategy" in df else ["-"]
    colors = dict(zip(strategies, ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3",
                                   "#8c8c8c", "#ccb974"]))
    for s in strategies:
        part = df[df["strategy"] == s] if "strategy" in df else df
        ax.scatter(part["cost_device_s"], part[metric], s=30, color=colors[s], label=s, alpha=0.8)
        for _, r in part.iterrows():  # users trained on, next to each point
            ax.annotate(str(int(r["users_trained"])), (r["cost_device_s"], r[metric]), fontsize=6, color=colors[s],
                        xytext=(3, 3), textcoords="offset points")
    f = df[front].sort_values("cost_device_s")
    ax.plot(f["cost_device_s"], f[metric], "k--", lw=1, label="Pareto front")
    if ref:
        for key, style, label in (("floor", ":", "random-init floor"), ("retrained", "-", "full retraining")):
            ax.axhline(ref[key]["value"], color="0.4", ls=style, lw=1, label=f"{label} ({ref[key]['value']:.4f})")
        if ref["retrained"].get("device_s"):
            ax.scatter([ref["retrained"]["device_s"]], [ref["retrained"]["value"]], marker="*", s=160, color="k",
                       label="full retraining (its cost)")
    ax.set_xscale("log")
    better = "lower" if TASKS["rating"].metric in metric else "higher"
    ax.set(xlabel="measured cost: device-seconds of select + adapter + migrate (log)",
           ylabel=f"{metric} ({better} is better)", title="sweep: cost vs accuracy (labels: users trained on)")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_budget_curve(df: pd.DataFrame, metric: str, ref: dict | None, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 5))
    ax = fig.subplots()
    key = "strategy" if "strategy" in df else None
    for s, part in (df.groupby(key) if key else [("all", df)]):
        g = part.groupby("users_trained")[metric].agg(["mean", "std", "count"]).reset_index()
        ax.errorbar(g["users_trained"], g["mean"], yerr=g["std"].fillna(0.0), marker="o", capsize=3,
                    label=f"{s} (mean ± std over {int(g['count'].max())} run(s))")
    if ref:
        ax.axhline(ref["floor"]["value"], color="0.4", ls=":", lw=1, label="random-init floor")
        ax.axhline(ref["retrained"]["value"], color="0.2", ls="-", lw=1, label="full retraining")
    ax.set_xscale("log")
    ax.set(xlabel="users the adapter trained on (budget, log)", ylabel=metric, title="metric vs selection budget")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_best(cfg: SweepConfig, best: pd.Series, out: Path) -> Path:
    """best.yaml: the adapter config of the chosen trial, accepted by `puma-ray adapter --config`."""
    trial_dir = out / "trials" / best["trial_dir"]
    adapter = yaml.safe_load((trial_dir / "adapter" / "config.yaml").read_text())
    adapter.update(out=str((out / "best-adapter").resolve()), run_name=None, storage_path=None)
    AdapterStageConfig(**adapter)  # what `puma-ray adapter --config` will do with it
    path = out / "best.yaml"
    path.write_text(f"# puma-ray adapter --config {path}\n"
                    f"# ray job submit --address http://127.0.0.1:8265 --runtime-env cluster/runtime-env.yaml "
                    f"--entrypoint-num-cpus 1 -- python jobs/adapter.py --config {path}\n# chosen by sweep {cfg.name!r} on the valid split; its selection is "
                    f"{adapter['users']}\n" + yaml.safe_dump(adapter, sort_keys=False))
    return path


def write_report(out: Path, cfg: SweepConfig, df: pd.DataFrame, metric: str, choose: str, best, ref,
                 found: dict) -> Path:
    shown = [c for c in ("strategy", "budget", "users_trained", "clusters", "bins", "width", "rank", "lora_rank", "lr",
                         "epochs", "seed", choose, metric, f"{cfg.split}_closure", "cost_device_s", "cost_vs_retraining",
                         "status") if c in df]
    lines = [f"# Sweep `{cfg.name}`", "", f"Space `{cfg.space}`, {len(df)} trial(s). Configs are compared on "
             f"`{choose}` (every user's migrated prompt); `{metric}` is reported and never used to choose.", ""]
    name = metric.split("_", 1)[1]
    lines += [f"Reference rows on the same {found['rows']} `{cfg.split}` rows: trivial baselines fitted on train"
              + (", the floor and full retraining (bench's reference.json)" if ref else "") + ":", "",
              f"| reference | {metric} |", "|---|---:|"]
    lines += [f"| {row[0]} | {row[1]} |" for row in trivial.baseline_rows(found, (name,))]
    if ref:
        lines += [f"| random-init floor | {ref['floor']['value']:.4f} |",
                  f"| full retraining | {ref['retrained']['value']:.4f} |"]
    lines += ["", "| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    for _, r in df.sort_values("cost_device_s").iterrows():
        lines.append("| " + " | ".join(f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in shown) + " |")
    if best is not None:
        lines += ["", f"Best on `{choose}`: trial `{best['trial_dir']}` ({choose} {best[choose]:.4f}, "
                      f"{metric} {best[metric]:.4f}); `best.yaml` reruns its adapter."]
    if ref:
        lines += ["", f"Reference ({ref['split']}): floor {ref['floor']['value']:.4f}, full retraining "
                      f"{ref['retrained']['value']:.4f}" + (f" at {ref['retrained']['device_s']:.0f} device-s"
                                                              if ref['retrained'].get('device_s') else "") + "."]
    lines += ["", "![cost vs accuracy](cost_accuracy.png)", "", "![metric vs budget](budget_curve.png)"]
    return write_markdown(out / "report.md", lines)


def space_strategies(space: SearchSpace) -> list[str]:
    """The selection strategies the space's trials can draw (the select stage's default when it sets none)."""
    d = space.params.get("strategy")
    return [select_default("strategy")] if d is None else [str(v) for v in d.args]


@remote_paths
def run_sweep(cfg: SweepConfig) -> dict:
    """Run (or resume) the sweep; returns the JSON summary."""
    check_out(cfg.out, "sweep")  # first: an --out holding another kind of output is refused untouched
    data = read_data_manifest(cfg.data)
    task = TASKS[data["task"]]
    space = load_space(cfg.space)
    sources = [read_store_manifest(s) for s in cfg.source]
    if any(m["task"] != task.name for m in sources):
        raise PumaError(f"--source stores must be for the dataset's task {task.name!r}")
    metric, choose = f"{cfg.split}_{task.metric}", f"valid_{task.metric}"
    ref = read_reference(cfg.reference, cfg.split, task.metric, data["fingerprint"]) if cfg.reference else None
    target = describe_model(cfg.target_model)
    out = Path(cfg.out)  # config.yaml is written once the trials in it ran with this config
    out.mkdir(parents=True, exist_ok=True)
    write_kind(out, STAGE_KINDS["sweep"])
    init_ray()
    setup = TrialSetup(data=str(Path(cfg.data).resolve()), sources=[str(Path(s).resolve()) for s in cfg.source],
                       target_model=target["name"], task_metric=task.metric, workers=cfg.workers,
                       cpus_per_worker=cfg.cpus_per_worker, use_gpu=cfg.use_gpu,
                       gpus_per_worker=cfg.gpus_per_worker, dtype=cfg.dtype,
                       report_split=cfg.split,
                       reference=ref)
    setup = shared_losses(setup, out / "train_loss", space_strategies(space))
    log.info("sweep: %s, up to %d trial(s) (%s), %d at a time -> %s", cfg.space, space.grid_size(),
             cfg.scheduler or space.scheduler, cfg.max_concurrent, out)
    with CostMeter(out, "sweep", cfg, workers=cfg.workers) as meter:
        grid = _tuner(cfg, space, setup, out, choose, task.mode).fit()
        df = with_reference(results_table(grid, space), ref, metric, task.metric)
        meter.samples = len(df)
    open_run(out, "sweep", cfg)
    done = df[df["status"] == "finished"].reset_index(drop=True)
    if done.empty:
        raise PumaError(f"sweep: no trial finished ({len(df)} ran; first error: "
                        f"{next((e for e in df['error'] if e), 'none')})")
    done_front = pareto_front(done["cost_device_s"], done[metric], task.mode)
    df.to_parquet(out / "results.parquet", index=False)
    df.to_csv(out / "results.csv", index=False)
    done[done_front].sort_values("cost_device_s").to_csv(out / "pareto.csv", index=False)
    plot_cost_accuracy(done, done_front, metric, ref, out / "cost_accuracy.png")
    plot_budget_curve(done, metric, ref, out / "budget_curve.png")
    best = done.loc[done[choose].idxmin() if task.mode == "min" else done[choose].idxmax()]
    write_best(cfg, best, out)
    found = trivial.dataset_baselines(shard_paths(cfg.data), task.name, cfg.split)
    report = write_report(out, cfg, df, metric, choose, best, ref, found)
    log.info("sweep: %d trial(s), %d finished; best on %s: %s -> %s", len(df), len(done), choose, best["trial_dir"],
             report)
    return {"out": str(out), "trials": len(df), "finished": len(done), "pareto": int(done_front.sum()),
            "best": {"trial": best["trial_dir"], choose: float(best[choose]), metric: float(best[metric]),
                     "cost_device_s": float(best["cost_device_s"])},
            "baselines": found, "results": str(out / "results.csv"), "wall_s": meter.record.wall_s}
