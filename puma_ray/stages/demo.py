"""`puma-ray demo`: every stage that exists so far, end to end, offline, on this machine.

Today: synthetic data (and MovieLens 100k when its directory is present) -> a tiny
source model and a tiny target model of different families, each with a tokenizer
trained on that dataset -> report.md + dataset_stats.png with the measured costs.
Later stages (prompts, select, adapter, migrate, evaluate, bench) join this chain
as they land.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
from matplotlib.figure import Figure

from puma_ray.config import DataConfig, DemoConfig, ModelsConfig
from puma_ray.runs import CostMeter, log, open_run, read_costs
from puma_ray.stages.data import run_data
from puma_ray.stages.models import run_models

SIZES = {"tiny": 300, "default": 2000, "large": 20000}


def _datasets(cfg: DemoConfig, out: Path) -> dict[str, DataConfig]:
    sets = {"synthetic": DataConfig(source="synthetic", out=str(out / "data" / "synthetic"), seed=cfg.seed,
                                    users=SIZES[cfg.size])}
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


def write_report(out: Path, data: dict[str, dict], models: dict[str, dict], costs: list[dict]) -> Path:
    lines = ["# puma-ray demo", "", "## Datasets", "",
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
              "| stage | run | wall s | workers | device | samples | peak memory MB |",
              "|---|---|---:|---:|---|---:|---:|"]
    for c in costs:
        lines.append(f"| {c['stage']} | {c['run']} | {c['wall_s']:.1f} | {c['workers']} | {c['device_kind']} | {c['samples']} | "
                     f"{c['peak_memory_bytes'] / 2**20:.0f} |")
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_demo(cfg: DemoConfig) -> dict:
    """Run the available chain under `cfg.out`; returns the JSON summary."""
    out = open_run(cfg.out, "demo", cfg)
    data, models, data_dirs = {}, {}, {}
    steps = cfg.pretrain_steps if cfg.pretrain_steps is not None else (100 if cfg.size == "tiny" else 800)
    with CostMeter(out, "demo", cfg) as meter:
        for name, dcfg in _datasets(cfg, out).items():
            log.info("demo: preparing dataset %s", name)
            data[name] = run_data(dcfg)
            data_dirs[name] = Path(dcfg.out)
            for role, family in (("source", cfg.source_family), ("target", cfg.target_family)):
                key = f"{name}/{role}-{family}"
                log.info("demo: building %s model %s", role, key)
                models[key] = run_models(ModelsConfig(family=family, data=dcfg.out, seed=cfg.seed,
                                                      pretrain_steps=steps,
                                                      out=str(out / "models" / name / f"{role}-{family}")))
        plot_datasets(data_dirs, out / "dataset_stats.png")
        meter.samples = sum(s["rows"] for s in data.values())
    report = write_report(out, data, models, read_costs(out))
    log.info("demo: report at %s", report)
    return {"out": str(out), "report": str(report), "datasets": {k: v["rows"] for k, v in data.items()},
            "models": {k: v["path"] for k, v in models.items()}, "wall_s": meter.record.wall_s}
