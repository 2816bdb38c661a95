"""`puma-ray prompts`: train every user's soft prompt on a frozen model (Ray Train + DeepSpeed).

Creates the SOURCE prompts, and on the target model it is the FULL RETRAINING baseline
(with --freeze-prompts: the random-initialisation floor). config -> datasets per rank
-> TorchTrainer.fit -> prompt store from the best epoch's checkpoint -> report.
"""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow.parquet as pq
from safetensors.torch import load_file

from puma_ray.config import PromptsConfig
from puma_ray.core.hf import describe_model, model_ref
from puma_ray.core.templates import load_template_text
from puma_ray.data.schema import read_manifest as read_data_manifest
from puma_ray.data.schema import copy_atomic, shard_paths, split_label_mean
from puma_ray.runtime.ray_utils import dataset_parts, init_ray, read_columns
from puma_ray.runtime.runs import PENDING_CONFIG, CostMeter, check_out, commit_config, log, open_run
from puma_ray.runtime.storage import remote_paths
from puma_ray.store.prompt_store import check_model, finalize, generation_name, read_head, refuse_lora, write_shard
from puma_ray.store.prompt_store import read_manifest as read_store_manifest
from puma_ray.train.loop_config import PromptsLoopConfig
from puma_ray.train.prompts_loop import prompts_loop
from puma_ray.train.wiring import (best_checkpoint, build_trainer, check_resume, fit_trainer, record_training,
                                   run_history, run_name)
from puma_ray.core.tasks import TASKS
from puma_ray.train.common import rows_per_rank, steps_for, tag_parts

_COLUMNS = ["user_id", "item_text", "history_text", "label", "split"]


def rank_datasets(data_dir: str, world: int, cache: bool) -> dict:
    """`train_r{k}` / `valid_r{k}`: the rows of the users rank k owns (Ray Data; with `cache`,
    the shards are read once for all of them, see runtime.ray_utils.dataset_parts)."""
    base = read_columns([str(p.resolve()) for p in shard_paths(data_dir)], _COLUMNS)
    tagged = base.map_batches(tag_parts, batch_format="pandas", fn_kwargs={"world": world})
    return dataset_parts(tagged, [f"{split}_r{r}" for split in ("train", "valid") for r in range(world)], cache)


def write_store(ckpt, out: Path, world: int, head: dict, manifest_fields: dict) -> dict:
    """Prompt store from a checkpoint: one shard per rank (streamed rank by rank) + head weights, all of a new
    generation written beside the store's current files; the manifest swaps them in (prompt_store module doc)."""
    generation = f"{time.time_ns():x}"
    shards, quarantined = [], []
    with ckpt.as_directory() as d:
        for r in range(world):
            users = pq.read_table(f"{d}/users-r{r:05d}.parquet").column(0).to_pylist()
            if not users:
                continue
            weight = load_file(f"{d}/table-r{r:05d}.safetensors")["weight"].numpy()
            info, bad = write_shard(out, r, users, weight, generation)
            shards.append(info)
            quarantined += bad
        weights = generation_name("head.safetensors", generation)
        copy_atomic(f"{d}/head.safetensors", out / weights)
    return finalize(out, shards=shards, quarantined=quarantined, generation=generation,
                    head={"weights": weights, **head}, **manifest_fields)


def warm_head(store: str, task: str, lam: float, yes_minus_no: bool) -> tuple[Path, dict] | None:
    """The --init-from store's head and its fields when they fit this run (same task, loss weight and click
    loss), else None: warm-started prompts keep the head they were trained or migrated with."""
    found = read_head(store)
    if found is None:
        log.info("prompts: --init-from %s has no head; the head starts fresh", store)
        return None
    path, head = found
    if (head["task"], head.get("lam"), head.get("yes_minus_no", False)) != (task, lam, yes_minus_no):
        log.info("prompts: the head of --init-from %s was trained for %s (lam %s); the head starts fresh", store,
                 head["task"], head.get("lam"))
        return None
    return path.resolve(), head


@remote_paths
def run_prompts(cfg: PromptsConfig) -> dict:
    """Train prompts for every user of `cfg.data` on `cfg.model`; returns the JSON summary."""
    check_out(cfg.out, "prompt store")  # first: an --out holding another kind of output is refused untouched
    data = read_data_manifest(cfg.data)
    task = TASKS[data["task"]]
    model = describe_model(cfg.model)  # a model that does not load fails here, before --out is touched
    lineage = [{"step": "trained", "model": model["fingerprint"], "freeze_prompts": cfg.freeze_prompts}]
    if cfg.init_from:
        source = read_store_manifest(cfg.init_from)
        check_model(source, model["fingerprint"], cfg.init_from)
        refuse_lora(source, cfg.init_from, "--init-from", "prompt training")
        lineage = source["lineage"] + [{**lineage[0], "init_from": str(Path(cfg.init_from).resolve())}]
    start_head = warm_head(cfg.init_from, task.name, cfg.lam, cfg.yes_minus_no) if cfg.init_from else None
    name = cfg.run_name or run_name("prompts", cfg.out)
    storage = cfg.storage_path or str((Path(cfg.out) / "_train").resolve())
    check_resume(storage, name, cfg.workers)  # before anything in --out changes
    # a store already there stays whole (its config.yaml too) until the new one replaces it
    out = open_run(cfg.out, "prompts", cfg, config_name=PENDING_CONFIG)
    W = cfg.workers
    with CostMeter(out, "prompts", cfg, workers=W) as meter:
        meter.startup_s = init_ray()
        users = pq.read_table(Path(cfg.data) / "users.parquet", columns=["user_id", "n_train", "n_valid"]).to_pandas()
        train_steps = steps_for(rows_per_rank(users, "n_train", W), cfg.batch_size)
        valid_rows = rows_per_rank(users, "n_valid", W)
        valid_steps = steps_for(valid_rows, cfg.batch_size) if sum(valid_rows) else 0
        template = cfg.template or (start_head[1].get("template") if start_head else None) or task.template
        metric = f"valid_{task.metric}"
        loop_config = PromptsLoopConfig(
            task=task.name, model=model_ref(cfg.model), template_text=load_template_text(template),
            prompt_len=cfg.prompt_len, users_file=str((Path(cfg.data) / "users.parquet").resolve()),
            seed=cfg.seed, lr=cfg.lr, batch_size=cfg.batch_size, shuffle_rows=cfg.shuffle_rows,
            epochs=cfg.epochs, lam=cfg.lam, yes_minus_no=cfg.yes_minus_no, freeze_prompts=cfg.freeze_prompts,
            init_from=str(Path(cfg.init_from).resolve()) if cfg.init_from else None,
            head_file=str(start_head[0]) if start_head else None,
            prefix_cache=cfg.prefix_cache, use_gpu=cfg.use_gpu, dtype=cfg.dtype, train_steps=train_steps,
            valid_steps=valid_steps, label_mean=split_label_mean(cfg.data, "train"))
        log.info("prompts: %d users, %d workers x %d steps/epoch, %d epochs, lr %g, run %s", len(users), W,
                 train_steps, cfg.epochs, cfg.lr, name)
        trainer = build_trainer(prompts_loop, loop_config, cfg, name, storage, metric, task.mode,
                                rank_datasets(cfg.data, W, cfg.cache_data), split=[])
        fit_start = time.time()
        result = fit_trainer(trainer, "prompt training", f"{storage}/{name}")
        ckpt, best = best_checkpoint(result, metric, task.mode)
        history = run_history(result)
        lineage[-1].update(best_epoch=int(best["epoch"]), lr=cfg.lr)
        lineage[-1]["curve"] = [{"epoch": int(row["epoch"]), metric: row[metric]} for row in history]
        head = {"task": task.name, "lam": cfg.lam, "template": template, "yes_minus_no": cfg.yes_minus_no}
        manifest = write_store(ckpt, out, W, head, {
            "task": task.name, "prompt_len": cfg.prompt_len, "dim": model["hidden_size"], "model": model,
            "lineage": lineage, "dataset_fingerprint": data["fingerprint"]})
        commit_config(out)
        record_training(meter, history, fit_start, model["parameters"])
        meter.extra = {"best_epoch": int(best["epoch"]), metric: best[metric], "users": len(users),
                       "lm_dtype": history[-1].get("lm_dtype")}
    log.info("prompts: best epoch %d, %s %.4f -> store %s", best["epoch"], metric, best[metric], out)
    curve = [{k: row[k] for k in ("epoch", "train_loss", metric)} for row in history]
    return {"out": str(out), "users": manifest["num_users"], "quarantined": manifest["quarantined"],
            "best_epoch": int(best["epoch"]), metric: best[metric], "curve": curve, "run_name": name,
            "lr": cfg.lr,
            "lm_dtype": history[-1].get("lm_dtype"),
            "wall_s": meter.record.wall_s, "startup_s": meter.record.startup_s}
