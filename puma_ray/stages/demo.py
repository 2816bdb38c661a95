"""`puma-ray demo`: the whole migration, end to end, offline, on this machine.

Synthetic data (MovieLens 100k is prepared too when its directory is present) -> a tiny
source and a tiny target model of different families, pretrained on the catalogue ->
source prompts on the source model -> full retraining and the random-init floor on the
target -> user selection (PUMA and random, same budget) -> one adapter per selection ->
every user migrated -> every store evaluated on the validation split -> report.md with
each method's RMSE, gap closure and measured cost (from the cost records), plus charts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
from matplotlib.figure import Figure

from puma_ray.config import (AdapterStageConfig, DataConfig, DemoConfig, EvaluateConfig, MigrateConfig, ModelsConfig,
                             PromptsConfig, SelectConfig)
from puma_ray.runs import CostMeter, log, open_run, read_costs
from puma_ray.stages.adapter import run_adapter
from puma_ray.stages.data import run_data
from puma_ray.stages.evaluate import run_evaluate
from puma_ray.stages.migrate import run_migrate
from puma_ray.stages.models import run_models
from puma_ray.stages.prompts import run_prompts
from puma_ray.stages.select import run_select


@dataclass(frozen=True)
class Size:
    """How big each demo size is."""

    users: int
    pretrain_steps: int
    prompt_epochs: int
    adapter_epochs: int
    budget: int
    """Users each adapter trains on (select)."""
    clusters: int
    """K-means clusters of the puma selection."""


SIZES = {"tiny": Size(150, 100, 2, 2, 40, 4), "default": Size(600, 400, 8, 8, 120, 8),
         "large": Size(5000, 800, 15, 4, 1000, 10)}


def _datasets(cfg: DemoConfig, out: Path) -> dict[str, DataConfig]:
    sets = {"synthetic": DataConfig(source="synthetic", out=str(out / "data" / "synthetic"), seed=cfg.seed,
                                    users=SIZES[cfg.size].users)}
    if cfg.movielens and (Path(cfg.movielens) / "u.data").is_file():
        sets["ml-100k"] = DataConfig(source="movielens", input=cfg.movielens, out=str(out / "data" / "ml-100k"),
                                     seed=cfg.seed)
    else:
        log.info("demo: MovieLens directory %r not found; synthetic data only", cfg.movielens)
    return sets


def plot_datasets(data_dirs: dict[str, Path], path: Path) -> None:
    """Interactions per user and label distribution of each dataset, side by side."""
    fig = Figure(figsize=(5 * len(data_dirs), 7))
    axes = fig.subplots(2, len(data_dirs), squeeze=False)
    for col, (name, d) in enumerate(data_dirs.items()):
        users = pq.read_table(d / "users.parquet").to_pandas()
        per_user = users[["n_train", "n_valid", "n_test"]].sum(axis=1)
        axes[0, col].hist(per_user, bins=30, color="#4c72b0")
        axes[0, col].set(title=f"{name}: interactions per user", xlabel="interactions", ylabel="users")
        labels = pd.concat(pq.read_table(p, columns=["label"]).to_pandas()
                           for p in sorted((d / "interactions").glob("part-*.parquet")))["label"]
        counts = labels.value_counts().sort_index()
        axes[1, col].bar(counts.index.astype(str), counts.to_numpy(), color="#dd8452")
        axes[1, col].set(title=f"{name}: label distribution", xlabel="label", ylabel="interactions")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def closure(floor: float, retrained: float, migrated: float) -> float:
    """Gap closure for an error metric: 1.0 matches full retraining (DESIGN.md)."""
    return (floor - migrated) / (floor - retrained) if floor != retrained else float("nan")


def cost_vs(cost: float, base: float) -> str:
    """'0.25x (75% less)' or '1.10x (10% more)' against full retraining's device-seconds."""
    r = cost / base
    return f"{r:.2f}x ({100 * abs(1 - r):.0f}% {'less' if r <= 1 else 'more'})"


def plot_methods(rows: list[dict], path: Path) -> None:
    """Validation RMSE and measured device-seconds of each method, side by side."""
    fig = Figure(figsize=(11, 4.2))
    ax_m, ax_c = fig.subplots(1, 2)
    names = [r["method"] for r in rows]
    colors = ["#8c8c8c", "#c44e52", "#4c72b0", "#55a868", "#dd8452", "#8172b3"][: len(rows)]
    ax_m.bar(names, [r["rmse"] for r in rows], color=colors)
    lo = min(r["rmse"] for r in rows)
    ax_m.set_ylim(lo * 0.95, max(r["rmse"] for r in rows) * 1.02)
    ax_m.set(title="validation RMSE on the target (lower is better)", ylabel="RMSE")
    for k, r in enumerate(rows):
        ax_m.annotate(f"{r['rmse']:.4f}", (k, r["rmse"]), ha="center", va="bottom", fontsize=8)
    costed = [r for r in rows if r.get("device_s") is not None]
    ax_c.bar([r["method"] for r in costed], [r["device_s"] for r in costed], color=colors[: len(costed)])
    ax_c.set(title="measured cost to get there (cost records)", ylabel="device-seconds")
    for ax in (ax_m, ax_c):
        ax.tick_params(axis="x", labelrotation=15, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write_report(out: Path, cfg: DemoConfig, data: dict[str, dict], models: dict[str, dict], methods: list[dict],
                 costs: list[dict]) -> Path:
    lines = ["# puma-ray demo", "",
             f"Size `{cfg.size}`, seed {cfg.seed}: prompts migrate from a tiny {cfg.source_family} to a tiny "
             f"{cfg.target_family}. Metric: validation RMSE of every user on the target model "
             "(the source row is on the source model).", "", "## Migration", "",
             "| method | users trained on | valid RMSE | gap closure | wall s | device-s | cost vs full retraining |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    base = next(m for m in methods if m["method"] == "full retraining")["device_s"]
    for m in methods:
        ratio = cost_vs(m["device_s"], base) if m["method"] != "source model" else "- (already paid)"
        close = f"{m['closure']:.2f}" if m.get("closure") is not None else "-"
        lines.append(f"| {m['method']} | {m['users']} | {m['rmse']:.4f} | {close} | {m['wall_s']:.1f} | "
                     f"{m['device_s']:.1f} | {ratio} |")
    lines += ["", "Every RMSE comes from `puma-ray evaluate` of that method's prompt store on the validation split "
              "(the source model's own prompts on the source model; all others on the target). Gap closure = "
              "(floor - method) / (floor - full retraining); 1.0 matches full retraining. A selection's cost is "
              "select + adapter + migrate of every user (cost records); the source prompts already exist. "
              "Cost ratio = method device-seconds / full retraining's, with the reduction (or increase) in "
              "brackets.", "", "![methods](methods.png)", "",
              "PUMA's selection: ![puma selection](select/puma/selection.png)", "",
              "## Datasets", "",
              "| dataset | rows | users | items | train | valid | dropped rows |", "|---|---:|---:|---:|---:|---:|---|"]
    for name, s in data.items():
        dropped = ", ".join(f"{k} {v}" for k, v in s["rows_dropped"].items() if v) or "none"
        lines.append(f"| {name} | {s['rows']} | {s['users']} | {s['items']} | {s['splits']['train']} | "
                     f"{s['splits']['valid']} | {dropped} |")
    lines += ["", "![dataset statistics](dataset_stats.png)", "", "## Models", "",
              "| model | family | hidden | parameters | vocab | pretraining steps | LM loss first -> last | fingerprint |",
              "|---|---|---:|---:|---:|---:|---|---|"]
    for name, s in models.items():
        p = s.get("pretrain") or {}
        loss = f"{p['loss_first']:.2f} -> {p['loss_last']:.2f}" if p else "-"
        lines.append(f"| {name} | {s['family']} | {s['hidden_size']} | {s['parameters']} | {s['vocab_size']} | "
                     f"{s['pretrain_steps']} | {loss} | {s['fingerprint'][:12]} |")
    lines += ["", "## Measured cost of each stage run", "",
              "| stage | run | wall s | workers | device | samples | tokens | peak memory MB |",
              "|---|---|---:|---:|---|---:|---:|---:|"]
    for c in costs:
        lines.append(f"| {c['stage']} | {c['run']} | {c['wall_s']:.1f} | {c['workers']} | {c['device_kind']} | "
                     f"{c['samples']} | {c['tokens']} | {c['peak_memory_bytes'] / 2**20:.0f} |")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _device_s(run_dir: Path) -> float:
    """Device-seconds of the latest run recorded in `run_dir` itself (not its sub-directories)."""
    own = [c for c in read_costs(run_dir) if c["run"] == "."]
    return own[-1]["device_seconds"]


def migrate_with(cfg: DemoConfig, out: Path, syn: str, target: str, strategy: str, size: Size) -> dict:
    """select (strategy) -> adapter -> migrate every user; returns paths and the summed device-seconds."""
    name = f"{strategy}-{size.budget}"
    select_dir, adapter_dir, store = out / "select" / strategy, out / "adapter" / name, out / "migrated" / name
    log.info("demo: selecting %d users (%s)", size.budget, strategy)
    run_select(SelectConfig(data=syn, prompts=str(out / "prompts" / "source"), out=str(select_dir), strategy=strategy,
                            budget=size.budget, clusters=size.clusters, min_per_cluster=max(1, size.budget // (4 * size.clusters)),
                            seed=cfg.seed))
    log.info("demo: training the adapter on the %s selection", strategy)
    run_adapter(AdapterStageConfig(data=syn, source=[str(out / "prompts" / "source")], target_model=target,
                                   users=str(select_dir), out=str(adapter_dir), workers=cfg.workers,
                                   epochs=size.adapter_epochs, lr=cfg.adapter_lr, width=cfg.adapter_width,
                                   seed=cfg.seed))
    log.info("demo: migrating every user with the %s adapter", strategy)
    run_migrate(MigrateConfig(adapter=str(adapter_dir), source=[str(out / "prompts" / "source")], out=str(store)))
    cost = sum(_device_s(d) for d in (select_dir, adapter_dir, store))
    wall = sum(read_costs(d)[-1]["wall_s"] for d in (select_dir, adapter_dir, store))
    return {"store": store, "device_s": cost, "wall_s": wall}


def run_demo(cfg: DemoConfig) -> dict:
    """Run the whole chain under `cfg.out`; returns the JSON summary."""
    out = open_run(cfg.out, "demo", cfg)
    size = SIZES[cfg.size]
    steps = cfg.pretrain_steps if cfg.pretrain_steps is not None else size.pretrain_steps
    data, models, data_dirs = {}, {}, {}
    with CostMeter(out, "demo", cfg) as meter:
        for name, dcfg in _datasets(cfg, out).items():
            log.info("demo: preparing dataset %s", name)
            data[name] = run_data(dcfg)
            data_dirs[name] = Path(dcfg.out)
        plot_datasets(data_dirs, out / "dataset_stats.png")
        syn = str(data_dirs["synthetic"])
        paths = {}
        for role, family in (("source", cfg.source_family), ("target", cfg.target_family)):
            paths[role] = str(out / "models" / f"{role}-{family}")
            log.info("demo: building the %s model (%s)", role, family)
            models[f"{role}-{family}"] = run_models(ModelsConfig(family=family, data=syn, seed=cfg.seed,
                                                                 pretrain_steps=steps, out=paths[role]))
        common = dict(data=syn, workers=cfg.workers, epochs=size.prompt_epochs, lr=cfg.prompt_lr, seed=cfg.seed)
        for key, model, extra in (("source", paths["source"], {}), ("retrained", paths["target"], {}),
                                  ("floor", paths["target"], {"freeze_prompts": True})):
            log.info("demo: training prompts: %s", key)
            run_prompts(PromptsConfig(model=model, out=str(out / "prompts" / key), **common, **extra))
        puma = migrate_with(cfg, out, syn, paths["target"], "puma", size)
        rand = migrate_with(cfg, out, syn, paths["target"], "random", size)
        stores = [("source model", out / "prompts" / "source", paths["source"], "all", None),
                  ("random init (floor)", out / "prompts" / "floor", paths["target"], "all", None),
                  ("full retraining", out / "prompts" / "retrained", paths["target"], "all", None),
                  (f"PUMA ({size.budget} users)", puma["store"], paths["target"], size.budget, puma),
                  (f"random selection ({size.budget} users)", rand["store"], paths["target"], size.budget, rand)]
        scores = {}
        for method, store, model, _, _ in stores:
            log.info("demo: evaluating %s", method)
            scores[method] = run_evaluate(EvaluateConfig(data=syn, model=model, prompts=str(store),
                                                         out=str(out / "eval" / Path(store).name)))
        floor, full = scores["random init (floor)"]["rmse"], scores["full retraining"]["rmse"]
        methods = []
        for method, store, _, users, run in stores:
            cost = run or {"device_s": _device_s(store), "wall_s": read_costs(store)[-1]["wall_s"]}
            methods.append({"method": method, "users": users, "rmse": scores[method]["rmse"],
                            "closure": None if method == "source model" else closure(floor, full, scores[method]["rmse"]),
                            "wall_s": cost["wall_s"], "device_s": cost["device_s"]})
        plot_methods(methods, out / "methods.png")
        meter.samples = sum(s["rows"] for s in data.values())
    report = write_report(out, cfg, data, models, methods, read_costs(out))
    log.info("demo: report at %s", report)
    return {"out": str(out), "report": str(report), "datasets": {k: v["rows"] for k, v in data.items()},
            "methods": {m["method"]: {"rmse": m["rmse"], "closure": m.get("closure"), "device_s": m["device_s"]}
                        for m in methods},
            "models": {k: v["path"] for k, v in models.items()}, "wall_s": meter.record.wall_s}
