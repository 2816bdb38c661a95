"""`puma-ray evaluate`: score a prompt store with its model over one split.

config -> checks (store complete and verified, model fingerprint, task, head) ->
Ray Data: interactions of the split(s) joined to the store's prompts on user_id (a
broadcast join when the store is at most --broadcast-mb: the whole store put once in Ray's
object store, which every scorer of a node maps read-only; a hash-shuffle join otherwise) ->
map_batches(PromptScorer), whose actors write the scored rows (rows.parquet, a directory) ->
per-user metrics by user hash buckets (Ray tasks: each rows file split into buckets, each
bucket folded per (split, user); memory one bucket of ~250k rows per task; Ray Data's groupby
held memory in the driver that grew with the rows)
-> one streamed pass over those per-user rows: per_user.parquet, each split's exact metrics
from the per-user sums, the five highest-loss users (click: AUC from per-score counts sorted
by score in Ray Data) -> report. The driver holds one batch at a time, never the scored rows.
Small evaluations (one worker, a broadcast store, at most --one-task-rows rows) do the same
work in one Ray task on a pooled worker instead (score_in_one_task): same batches, same files.

Prompts that are not finite are never scored: the store's quarantine list and any
non-finite row met here are reported (users, rows), and the metrics cover the rest.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from puma_ray.config import EvaluateConfig
from puma_ray.core import baselines as trivial
from puma_ray.core.hf import describe_model, dtype_name, model_ref
from puma_ray.core import per_user
from puma_ray.core.metrics import SortedAUC, UserTotals
from puma_ray.core.scoring import BroadcastStore, PromptScorer
from puma_ray.core.tasks import TASKS
from puma_ray.core.templates import load_template_text
from puma_ray.data.schema import read_manifest as read_data_manifest
from puma_ray.data.schema import shard_paths
from puma_ray.errors import PumaError
from puma_ray.runtime.ray_utils import actor_cpus, actor_pool, init_ray, read_columns, sort_shuffle, split_is
from puma_ray.runtime.runs import (CostMeter, Progress, build_beside, check_out, log, setup_logging, swap_in,
                                   write_markdown)
from puma_ray.runtime.storage import remote_paths
from puma_ray.store.prompt_store import check_model, read_head, read_quarantine, store_lora, verify


def store_head(store: str | Path) -> tuple[Path, dict]:
    """The task head that belongs to a store's prompts (written by `prompts` and `migrate`)."""
    head = read_head(store)
    if head is None:
        raise PumaError(f"prompt store {store} has no head.safetensors/head.json: only stores written by "
                        "`puma-ray prompts` or `puma-ray migrate` can be evaluated")
    return head


SCORE_COLUMNS = ["user_id", "item_text", "history_text", "label", "split"]
"""Columns of the interaction shards that scoring reads."""


def split_rows(data_dir: str, splits: list[str]) -> ray.data.Dataset:
    """Interaction rows of `splits` (the columns scoring needs)."""
    rows = read_columns([str(p.resolve()) for p in shard_paths(data_dir)], SCORE_COLUMNS)
    return rows.filter(expr=split_is(*splits))


def joined_rows(data_dir: str, splits: list[str], store: str | Path, manifest: dict) -> ray.data.Dataset:
    """Rows of `splits` with their user's prompt column (inner join on user_id: a hash shuffle)."""
    prompts = ray.data.read_parquet([str((Path(store) / s["name"]).resolve()) for s in manifest["shards"]])
    partitions = max(2, min(64, len(manifest["shards"])))
    return split_rows(data_dir, splits).join(prompts, join_type="inner", num_partitions=partitions, on=("user_id",))


def store_bytes(manifest: dict) -> int:
    """Size of a store's prompts in memory (float32)."""
    return manifest["num_users"] * manifest["prompt_len"] * manifest["dim"] * 4


def store_table(store: str | Path, manifest: dict, columns: tuple[str, ...] = ("user_id", "prompt")) -> pa.Table:
    """Every (user_id, prompt) of a store, for a broadcast join (or only the `columns` asked for)."""
    return pa.concat_tables([pq.read_table(Path(store) / s["name"], columns=list(columns))
                             for s in manifest["shards"]])


SCORED = pa.schema([("user_id", pa.string()), ("split", pa.string()), ("label", pa.float32()), ("pred", pa.float32()),
                    ("loss", pa.float32()), ("finite", pa.bool_())])
"""Columns of every scored row (rows.parquet)."""
PER_USER = {"rating": ["user_id", "n", "loss", "rmse", "mae"], "click": ["user_id", "n", "loss", "auc"]}
"""Columns of per_user.parquet."""


def write_dataset(ds: ray.data.Dataset, path: Path, schema: pa.Schema) -> Path:
    """`ds` as a Parquet directory at `path`, each block written by the worker that holds it; written
    beside and swapped in (a rerun replaces the old directory whole); an empty dataset leaves one empty file."""
    work = path.with_name(f".{path.name}.partial")
    shutil.rmtree(work, ignore_errors=True)
    ds.write_parquet(str(work), min_rows_per_file=1_000_000)
    if not any(work.glob("*.parquet")):
        work.mkdir(parents=True, exist_ok=True)
        pq.write_table(schema.empty_table(), work / "empty.parquet")
    return swap_in(work, path)


def split_aucs(rows: ray.data.Dataset, splits: list[str], partitions: int) -> dict[str, float]:
    """Exact AUC of each split's scored rows: positives and count per (split, distinct score), sorted in
    Ray Data, folded in score order by SortedAUC; the driver holds one batch of runs at a time."""
    from ray.data.aggregate import Count, Sum
    from ray.data.expressions import col

    runs = (rows.filter(expr=col("finite")).groupby(["split", "pred"], num_partitions=partitions)
            .aggregate(Sum("label", alias_name="positives"), Count(alias_name="count")).sort(["split", "pred"]))
    return fold_aucs(runs.iter_batches(batch_size=65536, batch_format="numpy"), splits)


def fold_aucs(runs: Iterable[dict], splits: list[str]) -> dict[str, float]:
    """Each split's exact AUC from (split, positives, count) runs in ascending score order, a batch at a time."""
    folded = {s: SortedAUC() for s in splits}
    for b in runs:
        for split, fold in folded.items():
            mine = b["split"] == split
            fold.add(np.nan_to_num(b["positives"][mine]), b["count"][mine])
    return {s: f.value() for s, f in folded.items()}


def fold_per_user(batches: Iterable[dict], task: str, where: dict[str, Path]) -> dict[str, UserTotals]:
    """One streamed pass over per-user rows (batches of column arrays): each split's go to
    where[split]/per_user.parquet (written beside, renamed when complete) and into its UserTotals;
    memory is one batch."""
    cols = PER_USER[task]
    schema = pa.schema([(c, pa.string() if c == "user_id" else pa.int64() if c == "n" else pa.float64())
                        for c in cols])
    totals = {s: UserTotals(task) for s in where}
    parts = {s: where[s] / ".per_user.parquet.partial" for s in where}
    writers = {s: pq.ParquetWriter(parts[s], schema, compression="zstd") for s in where}
    try:
        for b in batches:
            for split, fold in totals.items():
                mine = {k: v[b["split"] == split] for k, v in b.items()}
                fold.add(mine)
                scored = mine["n"] > 0
                writers[split].write_table(pa.table({c: mine[c][scored] for c in cols}, schema=schema))
    finally:
        for w in writers.values():
            w.close()
    for s in where:
        os.replace(parts[s], where[s] / "per_user.parquet")
    return totals


def split_row_count(data_dir: str, splits: list[str]) -> int:
    """Interaction rows of `splits` (users.parquet's per-user counts; no shard is read)."""
    users = pq.read_table(Path(data_dir) / "users.parquet", columns=[f"n_{s}" for s in splits])
    return int(sum(pc.sum(users.column(c)).as_py() or 0 for c in users.column_names))


def table_aucs(rows: pa.Table, splits: list[str]) -> dict[str, float]:
    """Exact AUC of each split's scored rows (in memory): the same runs split_aucs folds, made by pyarrow."""
    runs = (rows.filter(pc.field("finite")).group_by(["split", "pred"])
            .aggregate([("label", "sum"), ("label", "count")]).sort_by([("split", "ascending"), ("pred", "ascending")]))
    return fold_aucs([{"split": runs.column("split").to_numpy(zero_copy_only=False),
                       "positives": runs.column("label_sum").to_numpy(),
                       "count": runs.column("label_count").to_numpy()}], splits)


@ray.remote
def score_in_one_task(shards: list[str], splits: list[str], scorer_args: dict, batch_size: int, out: str, task: str,
                      where: dict[str, str], total: int) -> tuple[dict[str, UserTotals], dict[str, float], int]:
    """The pipeline's work for a small evaluation, in one task: score `splits`' rows shard by shard, write
    rows.parquet, fold per user (per_user.parquet of each split) -> (totals, AUCs, rows scored). It runs on a
    pooled Ray worker, which keeps its imports from one evaluation to the next; its progress line (of `total`
    rows) reaches the driver's console through Ray's worker log forwarding."""
    setup_logging()
    scorer, scored, progress = PromptScorer(**scorer_args), [], Progress("evaluate: rows scored", total, every_s=15.0)
    for path in shards:  # one shard's rows of `splits` at a time, in full batches as the pipeline forms them
        mine = pq.read_table(path, columns=SCORE_COLUMNS, filters=[("split", "in", splits)])
        for at in range(0, mine.num_rows, batch_size):
            scored.append(scorer(mine.slice(at, batch_size)))
            progress.step(min(batch_size, mine.num_rows - at))
    rows = pa.concat_tables(scored) if scored else SCORED.empty_table()
    (Path(out) / "rows.parquet").mkdir()  # `out` is the work directory beside --out, swapped in whole
    pq.write_table(rows, Path(out) / "rows.parquet" / "part-00000.parquet")
    totals = fold_per_user(per_user.user_groups(rows, task), task, {s: Path(p) for s, p in where.items()})
    return totals, table_aucs(rows, splits) if task == "click" else {}, rows.num_rows


def missing_users(data_dir: str, split: str, scored: int, quarantined: set[str]) -> int:
    """Users with rows in `split` that were neither scored nor quarantined (the store lacks them)."""
    users = pq.read_table(Path(data_dir) / "users.parquet", columns=["user_id", f"n_{split}"])
    have = users.filter(pc.greater(users.column(f"n_{split}"), 0)).column("user_id")
    held = int(pc.sum(pc.is_in(have, value_set=pa.array(sorted(quarantined), pa.string()))).as_py() or 0)
    return len(have) - scored - held


def baseline_lines(task: str, metrics: dict) -> list[str]:
    """The report's table of the trivial baselines above this store's row, on the same rows."""
    found = metrics.get("baselines")
    if not found:
        return []
    names = ("rmse", "mae") if task == "rating" else ("auc", "uauc")
    lines = ["Trivial baselines, fitted on train and scored on the same rows as the store "
             f"({found['rows']} rows, {found['users']} users):", "",
             "| predictor | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    lines += ["| " + " | ".join(row) + " |" for row in trivial.baseline_rows(found, names)]
    lines += ["| this store | " + " | ".join(f"{metrics.get(m, float('nan')):.4f}" for m in names) + " |", ""]
    return lines


def write_report(out: Path, cfg: EvaluateConfig, split: str, metrics: dict, worst: pd.DataFrame, task: str) -> None:
    lines = [f"# Evaluation of {cfg.prompts}", "", f"model `{cfg.model}`, split `{split}`, data `{cfg.data}`", ""]
    lines += baseline_lines(task, metrics) + ["| metric | value |", "|---|---:|"]
    lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
              for k, v in metrics.items() if not isinstance(v, (list, dict))]
    lines += ["", "Highest per-user loss (all users are in per_user.parquet):", "",
              "| " + " | ".join(worst.columns) + " |", "|" + "---|" * len(worst.columns)]
    lines += ["| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row) + " |"
              for row in worst.itertuples(index=False)]
    write_markdown(out / "report.md", lines)


def scored_baselines(cfg: EvaluateConfig, task: str, store: dict, quarantined: set[str]) -> dict[str, dict]:
    """The trivial baselines (core/baselines.py), fitted once, on each split's rows of the users this evaluation
    scored (the store's, less the quarantined ones): {split: baselines}."""
    log.info("evaluate: fitting the trivial baselines on train")
    users = set(store_table(cfg.prompts, store, ("user_id",)).column(0).to_pylist()) - quarantined
    return trivial.splits_baselines(shard_paths(cfg.data), task, cfg.split, users=users)


def report_split(cfg: EvaluateConfig, task: str, split: str, totals: UserTotals, split_auc: float | None,
                 quarantined: set[str], out: Path, extra: dict, found: dict | None = None) -> dict:
    """metrics.json and report.md of one split (per_user.parquet is already there)."""
    metrics = ({"auc": split_auc} if split_auc is not None else {}) | totals.metrics()
    quarantined = quarantined | totals.bad
    metrics.update({"quarantined_users": len(quarantined),
                    "missing_users": missing_users(cfg.data, split, metrics["users"], quarantined), "split": split,
                    **extra})
    if found is not None:
        metrics["baselines"] = found
    if quarantined:
        log.warning("evaluate: %s: %d user(s) have non-finite prompts and were not scored (e.g. %s)", split,
                    len(quarantined), sorted(quarantined)[:3])
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    worst = pd.DataFrame(totals.worst if totals.worst is not None else {c: [] for c in PER_USER[task]})
    write_report(out, cfg, split, metrics, worst[PER_USER[task]], task)
    log.info("evaluate: %s: %s", split, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
    return metrics


@remote_paths
def run_evaluate(cfg: EvaluateConfig) -> dict:
    """Score `cfg.prompts` on `cfg.model` over `cfg.split` (one pass for several); returns the JSON summary.

    One split: OUT/metrics.json; several: OUT/<split>/metrics.json each (rows.parquet holds all)."""
    check_out(cfg.out, "evaluation")  # first: an --out holding another kind of output is refused untouched
    data = read_data_manifest(cfg.data)
    task = TASKS[data["task"]]
    store = verify(cfg.prompts)
    if store["task"] != task.name:
        raise PumaError(f"prompt store {cfg.prompts} is for task {store['task']!r}, the dataset is {task.name!r}")
    model = describe_model(cfg.model)
    check_model(store, model["fingerprint"], cfg.prompts)
    head_path, head = store_head(cfg.prompts)
    store_lora(cfg.prompts, store)  # its LoRA weights checked before anything runs
    # built beside --out and swapped in whole when complete: an old evaluation there survives any failure
    out, summary = build_beside(cfg.out, "evaluate", cfg,
                                lambda work: score_and_report(cfg, task, store, model, head_path, head, work))
    return {**summary, "out": str(out)}


class ReportingScorer(PromptScorer):
    """The pipeline's scoring actor: a PromptScorer that logs, every `every_s`, how many rows it has scored
    (Ray forwards actors' output to the driver's console: the progress line of a long evaluation)."""

    def __init__(self, every_s: float = 30.0, **scorer_args) -> None:
        super().__init__(**scorer_args)
        setup_logging()
        self.rows, self.every_s, self.t0, self.last = 0, every_s, time.perf_counter(), 0.0

    def __call__(self, batch: pa.Table) -> pa.Table:
        scored = super().__call__(batch)
        self.rows += batch.num_rows
        now = time.perf_counter() - self.t0
        if now - self.last >= self.every_s:
            self.last = now
            log.info("evaluate: this scorer has scored %d rows (%.0f rows/s)", self.rows, self.rows / now)
        return scored


def score_in_pipeline(cfg: EvaluateConfig, task: str, store: dict, scorer_args: dict, out: Path,
                      where: dict[str, Path], meter) -> tuple[dict[str, UserTotals], dict[str, float]]:
    """Ray Data: rows (broadcast or hash-joined to their prompts) -> PromptScorer actors -> rows.parquet
    -> per-user groups -> per_user.parquet of each split; returns (totals, AUCs)."""
    if "broadcast" in scorer_args:
        rows = split_rows(cfg.data, cfg.split)
    else:
        rows = joined_rows(cfg.data, cfg.split, cfg.prompts, store)
    # Blocks of 16 batches (streamed, no shuffle): a data shard is one ~700k-row block, and with a few
    # of them one scoring actor got all the work (10k users: 128 s -> 81 s with 2 actors).
    rows = rows.repartition(target_num_rows_per_block=16 * cfg.batch_size)
    scored = rows.map_batches(
        ReportingScorer, fn_constructor_kwargs=scorer_args, batch_size=cfg.batch_size, batch_format="pyarrow",
        compute=actor_pool(cfg.workers), num_cpus=actor_cpus(cfg.cpus_per_worker, cfg.workers),
        num_gpus=cfg.gpus_per_worker if cfg.use_gpu else None)
    written = write_dataset(scored, out / "rows.parquet", SCORED)
    files = sorted(str(f) for f in written.glob("*.parquet"))
    meter.samples = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    totals = fold_per_user(bucketed_user_rows(files, task, out / ".buckets", meter.samples), task, where)
    with sort_shuffle():  # a dataset keeps the context it was created in
        partitions = max(1, min(256, meter.samples // 250_000))  # a sort reducer holds its partition
        aucs = split_aucs(ray.data.read_parquet(str(written)), cfg.split, partitions) if task == "click" else {}
    return totals, aucs


def bucketed_user_rows(files: list[str], task: str, scratch: Path, rows: int,
                       bucket_rows: int = 250_000) -> Iterator[dict]:
    """Scored-row files -> per-user rows (batches of column arrays), with memory bounded by one bucket of
    about `bucket_rows` rows in every process: Ray tasks hash the rows into user buckets under `scratch`
    (per_user.split_into_buckets), fold each bucket (per_user.fold_bucket), and the caller streams the
    results; `scratch` is removed at the end. The tasks import neither torch nor the model."""
    buckets = max(1, -(-rows // bucket_rows))
    shutil.rmtree(scratch, ignore_errors=True)
    split_task = ray.remote(num_cpus=1)(per_user.split_into_buckets)
    fold_task = ray.remote(num_cpus=1)(per_user.fold_bucket)
    ray.get([split_task.remote(f, buckets, str(scratch), i) for i, f in enumerate(files)])
    folds = [fold_task.remote(sorted(str(f) for f in d.glob("*.parquet")), task, str(scratch / f"{d.name}.parquet"))
             for d in sorted(scratch.glob("b*")) if d.is_dir()]
    progress = Progress("evaluate: user buckets folded", len(folds), every_s=30.0)
    pending = list(folds)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        ray.get(ready)
        progress.step(1)
    try:
        for f in sorted(scratch.glob("b*.parquet")):
            for batch in pq.ParquetFile(f).iter_batches(batch_size=65536):
                yield {c: batch.column(c).to_numpy(zero_copy_only=False) for c in batch.schema.names}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def score_and_report(cfg: EvaluateConfig, task, store: dict, model: dict, head_path: Path, head: dict,
                     out: Path) -> dict:
    """Score cfg.split's rows with the store's prompts, fold them per user, write metrics and reports in `out`."""
    log.info("evaluate: %s on %s, split %s (%d users in the store)", cfg.prompts, model["family"],
             ", ".join(cfg.split), store["num_users"])
    scorer_args = dict(model=model_ref(cfg.model), template_text=load_template_text(head["template"]),
                       task=task.name, head_path=str(head_path.resolve()), lam=head["lam"],
                       yes_minus_no=head["yes_minus_no"], prompt_len=store["prompt_len"], dim=store["dim"],
                       prefix_cache=cfg.prefix_cache, use_gpu=cfg.use_gpu, dtype=cfg.dtype,
                       lora=store_lora(cfg.prompts, store))  # a LoRA-migrated store: the co-adapted model
    where = {s: out if len(cfg.split) == 1 else out / s for s in cfg.split}
    for path in where.values():
        path.mkdir(parents=True, exist_ok=True)
    with CostMeter(out, "evaluate", cfg, workers=cfg.workers) as meter:
        meter.startup_s = init_ray(dashboard=False)
        if store_bytes(store) <= cfg.broadcast_mb * 2**20:  # small store: shared whole with the scorers, no shuffle
            shared = BroadcastStore.from_table(store_table(cfg.prompts, store), store["prompt_len"] * store["dim"])
            scorer_args["broadcast"] = functools.partial(ray.get, ray.put(shared))
            del shared  # the object store holds it now
        total = split_row_count(cfg.data, cfg.split)
        one_task = "broadcast" in scorer_args and cfg.workers == 1 and total <= cfg.one_task_rows
        meter.extra = {"join": "broadcast" if "broadcast" in scorer_args else "shuffle",
                       "path": "one task" if one_task else "pipeline"}
        if one_task:
            task_cpus = {"num_cpus": cfg.cpus_per_worker, "num_gpus": cfg.gpus_per_worker if cfg.use_gpu else 0}
            shards = [str(p.resolve()) for p in shard_paths(cfg.data)]
            totals, aucs, meter.samples = ray.get(score_in_one_task.options(**task_cpus).remote(
                shards, cfg.split, scorer_args, cfg.batch_size, str(out), task.name,
                {s: str(p) for s, p in where.items()}, total))
        else:
            totals, aucs = score_in_pipeline(cfg, task.name, store, scorer_args, out, where, meter)
    quarantined = set(read_quarantine(cfg.prompts))
    extra = {"model": model["name"], "prompts": str(Path(cfg.prompts).resolve()), "wall_s": meter.record.wall_s,
             "lm_dtype": dtype_name(cfg.dtype, cfg.use_gpu)}
    found = scored_baselines(cfg, task.name, store, quarantined | set().union(*(totals[s].bad for s in cfg.split))) \
        if cfg.baselines else {}
    results = {s: report_split(cfg, task.name, s, totals[s], aucs.get(s), quarantined, where[s], extra, found.get(s))
               for s in cfg.split}
    if len(cfg.split) == 1:
        return {"out": str(out), **results[cfg.split[0]]}
    return {"out": str(out), "splits": results, "wall_s": meter.record.wall_s}
