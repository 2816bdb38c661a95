"""`puma-ray evaluate`: score a prompt store with its model over one split.

config -> checks (store complete and verified, model fingerprint, task, head) ->
Ray Data: interactions of the split(s) joined to the store's prompts on user_id (a
broadcast join when the store is at most --broadcast-mb: every scorer holds the whole
store; a hash-shuffle join otherwise) -> map_batches(PromptScorer) -> exact dataset
metrics, per-user metrics, report.

Prompts that are not finite are never scored: the store's quarantine list and any
non-finite row met here are reported (users, rows), and the metrics cover the rest.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch

from puma_ray.config import EvaluateConfig
from puma_ray.data.schema import read_manifest as read_data_manifest
from puma_ray.data.schema import shard_paths, write_parquet_atomic
from puma_ray.errors import PumaError
from puma_ray.hf import describe_model, dtype_name, model_ref
from puma_ray.metrics import RatingSums, auc, uauc
from puma_ray.prompt_store import check_model, read_head, read_quarantine, verify
from puma_ray.ray_utils import actor_cpus, actor_pool, init_ray, read_columns, split_is
from puma_ray.runs import CostMeter, log, open_run
from puma_ray.scoring import PromptScorer
from puma_ray.templates import load_template_text
from puma_ray.training import TASKS


def store_head(store: str | Path) -> tuple[Path, dict]:
    """The task head that belongs to a store's prompts (written by `prompts` and `migrate`)."""
    head = read_head(store)
    if head is None:
        raise PumaError(f"prompt store {store} has no head.safetensors/head.json: only stores written by "
                        "`puma-ray prompts` or `puma-ray migrate` can be evaluated")
    return head


def split_rows(data_dir: str, splits: list[str]) -> ray.data.Dataset:
    """Interaction rows of `splits` (the columns scoring needs)."""
    rows = read_columns([str(p.resolve()) for p in shard_paths(data_dir)],
                        ["user_id", "item_text", "history_text", "label", "split"])
    return rows.filter(expr=split_is(*splits))


def joined_rows(data_dir: str, splits: list[str], store: str | Path, manifest: dict) -> ray.data.Dataset:
    """Rows of `splits` with their user's prompt column (inner join on user_id: a hash shuffle)."""
    prompts = ray.data.read_parquet([str((Path(store) / s["name"]).resolve()) for s in manifest["shards"]])
    partitions = max(2, min(64, len(manifest["shards"])))
    return split_rows(data_dir, splits).join(prompts, join_type="inner", num_partitions=partitions, on=("user_id",))


def store_bytes(manifest: dict) -> int:
    """Size of a store's prompts in memory (float32)."""
    return manifest["num_users"] * manifest["prompt_len"] * manifest["dim"] * 4


def store_table(store: str | Path, manifest: dict) -> pa.Table:
    """Every (user_id, prompt) of a store, for a broadcast join."""
    return pa.concat_tables([pq.read_table(Path(store) / s["name"], columns=["user_id", "prompt"])
                             for s in manifest["shards"]])


def summarize(task: str, rows: pd.DataFrame) -> tuple[dict, pd.DataFrame]:
    """Exact metrics over scored rows (columns user_id, label, pred, loss) and one row per user."""
    by_user = rows.groupby("user_id", sort=True)
    per_user = pd.DataFrame({"n": by_user.size(), "loss": by_user["loss"].mean()})
    if task == "rating":
        sums = RatingSums()
        sums.update(torch.from_numpy(rows["pred"].to_numpy(np.float64)), torch.from_numpy(rows["label"].to_numpy(np.float64)))
        metrics = sums.compute()
        err = rows["pred"] - rows["label"]
        per_user["rmse"] = (err ** 2).groupby(rows["user_id"]).mean() ** 0.5
        per_user["mae"] = err.abs().groupby(rows["user_id"]).mean()
    else:
        users, scores, labels = rows["user_id"].to_numpy(), rows["pred"].to_numpy(), rows["label"].to_numpy()
        value, used, skipped = uauc(users, scores, labels)
        metrics = {"auc": auc(scores, labels), "uauc": value, "uauc_users": used, "uauc_users_skipped": skipped,
                   "n": len(rows)}
        per_user["auc"] = by_user.apply(lambda g: auc(g["pred"].to_numpy(), g["label"].to_numpy()))
    metrics["loss"] = float(rows["loss"].mean()) if len(rows) else float("nan")
    return metrics, per_user.reset_index()


def missing_users(data_dir: str, split: str, scored: set[str], quarantined: set[str]) -> list[str]:
    """Users with rows in `split` that the store has no prompt for."""
    users = pq.read_table(Path(data_dir) / "users.parquet", columns=["user_id", f"n_{split}"]).to_pandas()
    have = users.loc[users[f"n_{split}"] > 0, "user_id"]
    return sorted(set(have) - scored - quarantined)


def write_report(out: Path, cfg: EvaluateConfig, split: str, metrics: dict, per_user: pd.DataFrame) -> None:
    lines = [f"# Evaluation of {cfg.prompts}", "", f"model `{cfg.model}`, split `{split}`, data `{cfg.data}`", "",
             "| metric | value |", "|---|---:|"]
    lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
              for k, v in metrics.items() if not isinstance(v, (list, dict))]
    worst = per_user.sort_values("loss", ascending=False).head(5)
    lines += ["", "Highest per-user loss (all users are in per_user.parquet):", "",
              "| " + " | ".join(worst.columns) + " |", "|" + "---|" * len(worst.columns)]
    lines += ["| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row) + " |"
              for row in worst.itertuples(index=False)]
    (out / "report.md").write_text("\n".join(lines) + "\n")


def score_split(cfg: EvaluateConfig, task, split: str, frame: pd.DataFrame, quarantined: set[str], out: Path,
                extra: dict) -> dict:
    """metrics.json, per_user.parquet and report.md of one split's scored rows under `out`."""
    bad = frame[~frame["finite"]]
    quarantined = quarantined | set(bad["user_id"])
    metrics, per_user = summarize(task.name, frame[frame["finite"]])
    missing = missing_users(cfg.data, split, set(per_user["user_id"]), quarantined)
    metrics.update({"users": len(per_user), "quarantined_users": len(quarantined), "quarantined_rows_skipped": len(bad),
                    "missing_users": len(missing), "split": split, **extra})
    if quarantined:
        log.warning("evaluate: %s: %d user(s) have non-finite prompts and were not scored (e.g. %s)", split,
                    len(quarantined), sorted(quarantined)[:3])
    out.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(pa.Table.from_pandas(per_user, preserve_index=False), out / "per_user.parquet")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_report(out, cfg, split, metrics, per_user)
    log.info("evaluate: %s: %s", split, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
    return metrics


def run_evaluate(cfg: EvaluateConfig) -> dict:
    """Score `cfg.prompts` on `cfg.model` over `cfg.split` (one pass for several); returns the JSON summary.

    One split: OUT/metrics.json; several: OUT/<split>/metrics.json each (rows.parquet holds all)."""
    data = read_data_manifest(cfg.data)
    task = TASKS[data["task"]]
    store = verify(cfg.prompts)
    if store["task"] != task.name:
        raise PumaError(f"prompt store {cfg.prompts} is for task {store['task']!r}, the dataset is {task.name!r}")
    model = describe_model(cfg.model)
    check_model(store, model["fingerprint"], cfg.prompts)
    head_path, head = store_head(cfg.prompts)
    out = open_run(cfg.out, "evaluate", cfg)
    log.info("evaluate: %s on %s, split %s (%d users in the store)", cfg.prompts, model["family"],
             ", ".join(cfg.split), store["num_users"])
    scorer_args = dict(model=model_ref(cfg.model), template_text=load_template_text(head["template"]),
                       task=task.name, head_path=str(head_path.resolve()), lam=head["lam"],
                       yes_minus_no=head["yes_minus_no"], prompt_len=store["prompt_len"], dim=store["dim"],
                       prefix_cache=cfg.prefix_cache, use_gpu=cfg.use_gpu, dtype=cfg.dtype)
    with CostMeter(out, "evaluate", cfg, workers=cfg.workers) as meter:
        meter.startup_s = init_ray(dashboard=False)
        if store_bytes(store) <= cfg.broadcast_mb * 2**20:  # small store: sent whole to each scorer, no shuffle
            rows = split_rows(cfg.data, cfg.split)
            scorer_args["prompts_ref"] = ray.put(store_table(cfg.prompts, store))
        else:
            rows = joined_rows(cfg.data, cfg.split, cfg.prompts, store)
        meter.extra = {"join": "broadcast" if "prompts_ref" in scorer_args else "shuffle"}
        scored = rows.map_batches(
            PromptScorer, fn_constructor_kwargs=scorer_args, batch_size=cfg.batch_size, batch_format="pyarrow",
            compute=actor_pool(cfg.workers), num_cpus=actor_cpus(cfg.cpus_per_worker, cfg.workers),
            num_gpus=1 if cfg.use_gpu else None)
        tables = list(scored.iter_batches(batch_size=65536, batch_format="pyarrow"))
        rows = pa.concat_tables(tables) if tables else pa.table({k: pa.array([], t) for k, t in (
            ("user_id", pa.string()), ("split", pa.string()), ("label", pa.float32()), ("pred", pa.float32()),
            ("loss", pa.float32()), ("finite", pa.bool_()))})
        meter.samples = rows.num_rows
        write_parquet_atomic(rows, out / "rows.parquet")
    frame = rows.to_pandas()
    quarantined = set(read_quarantine(cfg.prompts))
    extra = {"model": model["name"], "prompts": str(Path(cfg.prompts).resolve()), "wall_s": meter.record.wall_s,
             "lm_dtype": dtype_name(cfg.dtype, cfg.use_gpu)}
    results = {split: score_split(cfg, task, split, frame[frame["split"] == split], quarantined,
                                  out if len(cfg.split) == 1 else out / split, extra) for split in cfg.split}
    if len(cfg.split) == 1:
        return {"out": str(out), **results[cfg.split[0]]}
    return {"out": str(out), "splits": results, "wall_s": meter.record.wall_s}
