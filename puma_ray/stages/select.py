"""`puma-ray select`: choose the users the adapter trains on.

config -> eligible users (finite source prompt and >= 1 training row) -> lazy inputs
(select/inputs.py: label variance from per-user partial sums of pyarrow batches, mini-batch K-means /
incremental PCA streamed over the store by this process; here: source-model losses via
`evaluate`, FFN features via Ray Data) -> strategy -> selection directory -> report.

Output (DIR):
    selected.parquet     user_id, cluster, stratum, value   (the B chosen users)
    assignments.parquet  user_id, cluster, stratum, value, selected   (every eligible user)
    report.json / .md    budget, cluster sizes and quotas, per-stratum counts, timings
    selection.png        2-D PCA of all vs selected users; selected users per stratum
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from puma_ray.config import EvaluateConfig, SelectConfig
from puma_ray.core.scoring import FFNShardFeatures
from puma_ray.data.schema import read_manifest as read_data_manifest
from puma_ray.data.schema import write_parquet_atomic
from puma_ray.errors import PumaError
from puma_ray.runtime.ray_utils import actor_cpus, actor_pool, init_ray
from puma_ray.runtime.runs import CostMeter, Progress, build_beside, check_out, log, write_markdown
from puma_ray.runtime.storage import remote_paths
from puma_ray.select.inputs import PLOT_SAMPLE, SelectionInputs, VectorFiles
from puma_ray.select.strata import stratum_weights
from puma_ray.select.strategies import select_users, uses_losses
from puma_ray.store.prompt_store import refuse_lora, store_user_ids, verify


def score_source_losses(data: str, prompts: str, model: str, out: str, workers: int, batch_size: int) -> None:
    """`evaluate --split train` of the store `prompts` on its own `model` into `out`: what --losses reads."""
    from puma_ray.stages.evaluate import run_evaluate

    run_evaluate(EvaluateConfig(data=data, model=model, prompts=prompts, split="train", out=out, workers=workers,
                                batch_size=batch_size))


def source_losses(cfg: SelectConfig, store: dict, out: Path) -> pd.Series:
    """Mean source-model training loss per user: from --losses, or by running `evaluate --split train`."""
    where = cfg.losses
    if where is None:
        where = str(out / "source_loss")
        score_source_losses(cfg.data, cfg.prompts, store["model"]["name"], where, cfg.workers, cfg.batch_size)
    path = Path(where) / "per_user.parquet"
    if not path.is_file():
        raise PumaError(f"--losses {where}: no per_user.parquet there (give a `puma-ray evaluate` output)")
    table = pq.read_table(path, columns=["user_id", "loss"]).to_pandas()
    return table.set_index("user_id")["loss"]


def ffn_features(cfg: SelectConfig, store: dict, users: pd.Index, out: Path) -> VectorFiles:
    """The source model's FFN outputs for every prompt, written by Ray Data to DIR/_ffn (streamed back)."""
    from transformers import AutoConfig

    layers = AutoConfig.from_pretrained(store["model"]["name"]).num_hidden_layers
    n = cfg.ffn_layers or min(3, layers)
    if n > layers:
        raise PumaError(f"--ffn-layers {n} exceeds the {layers} decoder layers of the source model "
                        f"{store['model']['name']}; use --ffn-layers {layers} or fewer")
    l, d = store["prompt_len"], store["dim"]
    paths = [str((Path(cfg.prompts) / s["name"]).resolve()) for s in store["shards"]]
    target = out / "_ffn"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    # one feature file per store shard, rows in the shard's order: K-means reads them in shard order, so the
    # same seed picks the same users whichever actor finishes first (Ray Data's own write kept no order:
    # issue 46, 27 of 250 users in common between two runs)
    ds = ray.data.from_items([{"index": i, "path": p} for i, p in enumerate(paths)]).map_batches(
        FFNShardFeatures, fn_constructor_kwargs={"out": str(target.resolve()), "batch_size": cfg.batch_size,
                                                 "model": store["model"]["name"], "prompt_len": l, "dim": d,
                                                 "layers": n},
        batch_size=1, compute=actor_pool(cfg.workers), num_cpus=actor_cpus(1.0, cfg.workers))
    progress, written = Progress("select: FFN features of store shards", len(paths)), set()
    for row in ds.iter_rows():
        progress.step()
        if row["rows"]:
            written.add(int(row["index"]))
    files = [str(target / f"part-{i:05d}.parquet") for i in sorted(written)]  # an empty shard has no file
    return VectorFiles(files, "prompt", n * d, users, cfg.batch_rows)


def eligible_users(data_dir: str, store_dir: str, store: dict) -> pd.Index:
    """Users with a (finite) prompt in the store and >= 1 training row, in store order."""
    counts = pq.read_table(Path(data_dir) / "users.parquet", columns=["user_id", "n_train"]).to_pandas()
    trained = set(counts.loc[counts["n_train"] > 0, "user_id"])
    ids = [u for u in store_user_ids(store_dir) if u in trained]
    if len(set(ids)) != len(ids):
        raise PumaError(f"prompt store {store_dir} lists some users twice; it is corrupt")
    return pd.Index(ids, dtype=object)


def plot_coordinates(inputs: SelectionInputs, chosen: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """2-D PCA coordinates of a sample of all users and of every chosen user (for the scatter).

    K-means strategies got them during their assignment pass; the others take one pass here."""
    if inputs.coords is None:
        for pos, x in inputs.prompts.batches("plot coordinates"):
            inputs.project(pos, x)
    sample = np.sort(np.random.default_rng(seed).choice(inputs.n, size=min(inputs.n, PLOT_SAMPLE), replace=False))
    return inputs.coords[sample], inputs.coords[chosen]


def save_plot(path: Path, background: np.ndarray, picked: np.ndarray, sel, cfg: SelectConfig, report: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    ax = axes[0]
    ax.scatter(background[:, 0], background[:, 1], s=3, c="0.8", label=f"all users (sample of {len(background)})")
    style = {"c": sel.cluster[sel.chosen], "cmap": "tab10"} if sel.cluster is not None else {"c": "tab:red"}
    ax.scatter(picked[:, 0], picked[:, 1], s=8, label=f"selected ({len(picked)})", **style)
    ax.set_title(f"{cfg.strategy}: source prompts, first 2 principal components")
    ax.legend(loc="best", fontsize=8)
    ax = axes[1]
    if "stratum_selected" in report:
        counts = np.asarray(report["stratum_selected"])
        ax.bar(np.arange(cfg.bins), counts, color="tab:blue", label="selected")
        share = np.asarray(report["stratum_target_share"])
        ax.plot(np.arange(cfg.bins), share * counts.sum(), "o-", color="tab:orange", label="target weights")
        ax.set_xlabel(f"stratum (low -> high {report['stratified_by']})")
        ax.set_ylabel("users")
        ax.legend(fontsize=8)
    elif sel.cluster is not None:
        ax.bar(np.arange(cfg.clusters), np.bincount(sel.cluster, minlength=cfg.clusters), color="0.7", label="all")
        ax.bar(np.arange(cfg.clusters), np.bincount(sel.cluster[sel.chosen], minlength=cfg.clusters),
               color="tab:blue", label="selected")
        ax.set_xlabel("cluster")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    else:
        ax.axis("off")
    ax.set_title("selected users per stratum" if "stratum_selected" in report else "users per cluster")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def selection_report(cfg: SelectConfig, sel, n: int, timings: dict) -> dict:
    report = {"strategy": cfg.strategy, "budget": cfg.budget, "selected": int(len(sel.chosen)), "eligible": n,
              "seed": cfg.seed, "timings_s": timings}
    if sel.cluster is not None:
        report["cluster_sizes"] = np.bincount(sel.cluster, minlength=cfg.clusters).tolist()
        report["cluster_selected"] = np.bincount(sel.cluster[sel.chosen], minlength=cfg.clusters).tolist()
    if sel.stratum is not None and (sel.stratum >= 0).any():
        strata = sel.stratum[sel.chosen]
        report["stratum_selected"] = np.bincount(strata[strata >= 0], minlength=cfg.bins).tolist()
        w = stratum_weights(cfg.bins, "normal" if cfg.strategy == "puma" else cfg.weights)
        report["stratum_target_share"] = (w / w.sum()).round(4).tolist()
        report["stratified_by"] = "loss" if uses_losses(cfg.strategy, cfg.ffn_strata) else "variance"
    return report


def write_report_md(path: Path, report: dict) -> None:
    lines = [f"# Selection: {report['strategy']}", "",
             f"{report['selected']} of {report['eligible']} eligible users (budget {report['budget']}, "
             f"seed {report['seed']}).", ""]
    if "cluster_sizes" in report:
        lines += ["| cluster | users | selected |", "|---:|---:|---:|"]
        lines += [f"| {c} | {a} | {b} |" for c, (a, b) in
                  enumerate(zip(report["cluster_sizes"], report["cluster_selected"]))]
        lines.append("")
    if "stratum_selected" in report:
        total = max(sum(report["stratum_selected"]), 1)
        lines += ["| stratum | selected | share | target share |", "|---:|---:|---:|---:|"]
        lines += [f"| {s} | {c} | {c / total:.3f} | {t:.3f} |" for s, (c, t) in
                  enumerate(zip(report["stratum_selected"], report["stratum_target_share"]))]
        lines.append("")
    lines.append("Timings (s): " + ", ".join(f"{k} {v}" for k, v in report["timings_s"].items()))
    write_markdown(path, lines)


@remote_paths
def run_select(cfg: SelectConfig) -> dict:
    """Select cfg.budget users of the store with cfg.strategy; returns the JSON summary."""
    check_out(cfg.out, "selection")  # first: an --out holding another kind of output is refused untouched
    read_data_manifest(cfg.data)
    store = verify(cfg.prompts)  # every shard's checksum: a corrupt store is one line, not a traceback
    if cfg.strategy == "ffn":
        refuse_lora(store, cfg.prompts, "--prompts", "ffn selection (the source model's FFN features)")
    # built beside --out and swapped in whole when complete: an old selection there survives any failure
    out, (report, timings) = build_beside(cfg.out, "select", cfg, lambda work: build_selection(cfg, store, work))
    log.info("select: %d users -> %s (%.1f s)", cfg.budget, out, report["wall_s"])
    return {"out": str(out), **{k: v for k, v in report.items() if k != "timings_s"}, "timings_s": timings}


def build_selection(cfg: SelectConfig, store: dict, out: Path) -> tuple[dict, dict]:
    """The selection's files in `out` (assignments, selected users, plot, reports); its report and timings."""
    with CostMeter(out, "select", cfg) as meter:
        meter.startup_s = init_ray(dashboard=False)
        users = eligible_users(cfg.data, cfg.prompts, store)
        log.info("select: %s, %d of %d eligible users (store %s)", cfg.strategy, cfg.budget, len(users), cfg.prompts)
        inputs = SelectionInputs(cfg, store, users, losses=lambda: source_losses(cfg, store, out),
                                 features=lambda: ffn_features(cfg, store, users, out))
        sel = select_users(inputs, cfg)
        chosen = np.sort(sel.chosen)
        sel.chosen = chosen
        n = len(users)
        table = pd.DataFrame({
            "user_id": users.to_numpy(),
            "cluster": sel.cluster if sel.cluster is not None else np.full(n, -1),
            "stratum": sel.stratum if sel.stratum is not None else np.full(n, -1),
            "value": sel.value if sel.value is not None else np.full(n, np.nan),
            "selected": np.isin(np.arange(n), chosen)})
        write_parquet_atomic(pa.Table.from_pandas(table, preserve_index=False), out / "assignments.parquet")
        background, picked = inputs._timed("plot", lambda: plot_coordinates(inputs, chosen, cfg.seed))
        report = selection_report(cfg, sel, n, inputs.timings)
        save_plot(out / "selection.png", background, picked, sel, cfg, report)
        meter.samples = n
        meter.extra = {"strategy": cfg.strategy, "budget": cfg.budget, "eligible": n}
        per_user = sum(v for k, v in inputs.timings.items() if k != "plot")  # passes over every user
        meter.startup_s = max(0.0, meter.elapsed() - per_user)
        # written last: an adapter run reads selected.parquet, so its presence means "complete"
        # (the whole directory is swapped in only after it)
        write_parquet_atomic(pa.Table.from_pandas(table[table["selected"]].drop(columns=["selected"]),
                                                  preserve_index=False), out / "selected.parquet")
    shutil.rmtree(out / "_ffn", ignore_errors=True)
    report["wall_s"] = meter.record.wall_s
    report["peak_memory_bytes"] = meter.record.peak_memory_bytes
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    write_report_md(out / "report.md", report)
    return report, inputs.timings
