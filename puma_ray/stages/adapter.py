"""`puma-ray adapter`: train PUMA's migration adapter through the frozen target model.

config -> selected users and their source prompts (checked on the driver) -> Ray Data rows
-> TorchTrainer.fit -> best epoch's adapter + head + adapter.json -> report.

A selection directory holds `selected.parquet` with a `user_id` column (what
`puma-ray select` writes); `--users all` takes every user of the dataset.
"""

from __future__ import annotations

import shutil
import time
from typing import NamedTuple
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import ray
import torch
from safetensors.torch import load_file, save_file

from puma_ray.config import AdapterStageConfig
from puma_ray.core.hf import describe_model, load_causal_lm, model_ref
from puma_ray.core.modules import AdapterConfig, MigrationAdapter, adapter_param_count
from puma_ray.core.recycle import distil
from puma_ray.data.schema import copy_atomic, file_sha256, shard_paths, split_label_mean, write_json_atomic
from puma_ray.data.schema import read_manifest as read_data_manifest
from puma_ray.errors import PumaError
from puma_ray.runtime.ray_utils import dataset_parts, init_ray, read_columns
from puma_ray.runtime.runs import PENDING_CONFIG, CostMeter, check_out, commit_config, log, open_run
from puma_ray.runtime.storage import remote_paths
from puma_ray.store.prompt_store import check_model, iter_prompts, load_prompts, read_head, verify
from puma_ray.train.wiring import (best_checkpoint, build_trainer, check_resume, fit_trainer, record_training,
                                   run_history, run_name)
from puma_ray.core.tasks import TASKS
from puma_ray.core.templates import load_template_text
from puma_ray.train.adapter_loop import adapter_loop, source_prompts
from puma_ray.train.common import epochs_for, read_users, rows_per_rank, steps_for, tag_parts
from puma_ray.train.engines import deepspeed_config
from puma_ray.train.loop_config import AdapterLoopConfig


def users_file(users_arg: str, data_dir: str) -> Path:
    """The parquet file whose user_id column lists the users trained on: a selection's selected.parquet, or the
    dataset's users.parquet for 'all'. Workers read it themselves: no id list travels in the training config."""
    if users_arg == "all":
        return (Path(data_dir) / "users.parquet").resolve()
    path = Path(users_arg) / "selected.parquet"
    if not path.is_file():
        raise PumaError(f"--users {users_arg}: no selected.parquet there (give a `puma-ray select` output or 'all')")
    return path.resolve()



def check_sources(stores: list[str], users: list[str], task: str) -> list[dict]:
    """Manifests of the source stores, after checking task, prompt length and user coverage."""
    manifests = [verify(s) for s in stores]  # checksums too: a corrupt shard is one line, not a traceback
    if {m["prompt_len"] for m in manifests} != {manifests[0]["prompt_len"]}:
        raise PumaError("source stores differ in prompt length; aggregated migration needs one l")
    for store, m in zip(stores, manifests):
        if m["task"] != task:
            raise PumaError(f"source store {store} was trained for task {m['task']!r}, the dataset is {task!r}")
        want = set(users)
        for ids, _ in iter_prompts(store):
            want.difference_update(ids)
        if want:
            raise PumaError(f"{len(want)} of the {len(users)} selected users have no prompt in source store {store} "
                            f"(e.g. {sorted(want)[:3]})")
    return manifests


def source_head(store: str, task: str, lam: float) -> str | None:
    """The first source store's head weights when they fit this run (same task and loss weight), else None."""
    found = read_head(store)
    if found is None:
        log.info("adapter: source store %s has no head; the head starts fresh", store)
        return None
    path, head = found
    if head["task"] != task or head.get("lam") != lam:
        log.info("adapter: the source head was trained for %s (lam %s); the head starts fresh", head["task"], head.get("lam"))
        return None
    return str(path.resolve())


def save_lora(target_model: str, lora_cfg: dict, weights: dict, path: Path) -> None:
    """The co-adapted LoRA weights in PEFT's own format (PeftModel.from_pretrained reads it)."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(load_causal_lm(target_model), LoraConfig(**lora_cfg))
    missing = set(weights) - set(peft_model.state_dict())
    if missing:
        raise PumaError(f"LoRA checkpoint has weights the target model lacks: {sorted(missing)[:3]}")
    peft_model.load_state_dict(weights, strict=False)
    peft_model.save_pretrained(path)


def write_adapter_files(ckpt, out: Path, cfg: AdapterStageConfig, lora_cfg: dict | None) -> dict[str, str]:
    """The best checkpoint's adapter, head (and LoRA) under names of a new generation, beside whatever adapter
    `out` already holds: adapter.json names the new files only once they are complete (old or new, never neither)."""
    generation = f"{time.time_ns():x}"
    files = {"weights": f"adapter-{generation}.safetensors", "head": f"head-{generation}.safetensors",
             "lora": f"lora-{generation}" if cfg.lora_rank else None}
    with ckpt.as_directory() as d:
        copy_atomic(Path(d) / "adapter.safetensors", out / files["weights"])
        copy_atomic(Path(d) / "head.safetensors", out / files["head"])
        if cfg.lora_rank:
            save_lora(cfg.target_model, lora_cfg, load_file(Path(d) / "lora.safetensors"), out / files["lora"])
    return files


def drop_other_generations(out: Path, files: dict) -> None:
    """Delete the adapter files adapter.json no longer names (earlier generations, and the unnamed files of
    adapters written before generations existed)."""
    keep = {v for v in files.values() if v}
    for pattern in ("adapter*.safetensors", "head*.safetensors", "lora*"):
        for path in out.glob(pattern):
            if path.name not in keep:
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def check_recycled(store: str, sources: list[dict], target: dict) -> dict:
    """The --recycled store's manifest, after checking it is the first source recycled into the target model."""
    m = verify(store)
    check_model(m, target["fingerprint"], store)
    step = m["lineage"][-1] if m["lineage"] else {}
    made_from = [f["model"] for f in step.get("from", [])]
    if step.get("step") != "recycled" or made_from != [sources[0]["model"]["fingerprint"]]:
        raise PumaError(f"--recycled {store} is not a `puma-ray recycle` output of the first --source's model "
                        f"(its last lineage step is {step.get('step')!r})")
    if m["prompt_len"] != sources[0]["prompt_len"]:
        raise PumaError(f"--recycled {store} has prompt length {m['prompt_len']}, the sources {sources[0]['prompt_len']}")
    return m


def recycled_start(cfg: AdapterStageConfig, users: list[str], adapter_cfg: dict, out: Path) -> dict:
    """--init recycled: a seeded adapter fitted to reproduce the recycled prompts of `users` from their source
    prompts (core/recycle.distil), saved as out/init.safetensors for the workers; returns what the fit reached."""
    x, y = source_prompts(cfg.source, users), load_prompts(cfg.recycled, users)
    with torch.random.fork_rng(devices=[]):  # the workers' seeded draw, without moving this process's generator
        torch.manual_seed(cfg.seed)
        adapter = MigrationAdapter(AdapterConfig(**adapter_cfg))
    fit = distil(adapter, x, y, cfg.init_steps, cfg.init_lr, 256, torch.Generator().manual_seed(cfg.seed))
    save_file({k: v.contiguous() for k, v in adapter.state_dict().items()}, str(out / "init.safetensors"))
    log.info("adapter: fitted to the recycled prompts in %d steps (mse %.4g -> %.4g, R^2 %.3f)", cfg.init_steps,
             fit.mse_start, fit.mse, fit.r2)
    return {"kind": "recycled", "store": str(Path(cfg.recycled).resolve()), "steps": cfg.init_steps,
            "lr": cfg.init_lr, "mse_start": fit.mse_start, "mse": fit.mse, "r2": fit.r2}


def _select_rows(batch: pd.DataFrame, users_ref) -> pd.DataFrame:
    keep = ray.get(users_ref)
    return batch[batch["user_id"].isin(keep)]


class Steps(NamedTuple):
    """Epochs and per-epoch step counts of one adapter run."""

    epochs: int
    train: int
    valid: int


def adapter_loop_config(cfg: AdapterStageConfig, task: str, template_text: str, prompt_len: int, users_path: Path,
                        adapter_cfg: dict, steps: Steps, label_mean: float | None, out: Path) -> AdapterLoopConfig:
    """What the workers read: the stage's settings and what the driver resolved, typed."""
    return AdapterLoopConfig(
        task=task, model=model_ref(cfg.target_model), template_text=template_text, prompt_len=prompt_len,
        users_file=str(users_path), sources=tuple(str(Path(s).resolve()) for s in cfg.source),
        adapter=AdapterConfig(**adapter_cfg), seed=cfg.seed, lr=cfg.lr, batch_size=cfg.batch_size,
        shuffle_rows=cfg.shuffle_rows, epochs=steps.epochs, lam=cfg.lam, yes_minus_no=cfg.yes_minus_no,
        prefix_cache=cfg.prefix_cache, use_gpu=cfg.use_gpu, dtype=cfg.dtype,
        train_steps=steps.train, valid_steps=steps.valid, label_mean=label_mean,
        lora={"r": cfg.lora_rank, "lora_alpha": cfg.lora_alpha, "target_modules": "all-linear",
              "lora_dropout": 0.0} if cfg.lora_rank else None,
        ds_config=deepspeed_config(cfg.batch_size, cfg.zero_stage, cfg.use_gpu, cfg.zero3_persistence_threshold),
        head_file=source_head(cfg.source[0], task, cfg.lam) if cfg.head_init == "source" else None,
        adapter_init=str((out / "init.safetensors").resolve()) if cfg.init == "recycled" else None)


@remote_paths
def run_adapter(cfg: AdapterStageConfig, callbacks: tuple = ()) -> dict:
    """Train the adapter; returns the JSON summary. callbacks: Ray Train callbacks (a sweep reports to Tune)."""
    check_out(cfg.out, "adapter")  # first: an --out holding another kind of output is refused untouched
    data = read_data_manifest(cfg.data)
    task = TASKS[data["task"]]
    users_path = users_file(cfg.users, cfg.data)
    users = read_users(users_path)
    sources = check_sources(cfg.source, users, task.name)
    target = describe_model(cfg.target_model)  # a model that does not load fails here, before --out is touched
    if cfg.init == "recycled":
        check_recycled(cfg.recycled, sources, target)
    name = cfg.run_name or run_name("adapter", cfg.out)
    storage = cfg.storage_path or str((Path(cfg.out) / "_train").resolve())
    check_resume(storage, name, cfg.workers)
    # an adapter already there stays whole (its config.yaml too) until adapter.json is replaced
    out = open_run(cfg.out, "adapter", cfg, config_name=PENDING_CONFIG)
    W = cfg.workers
    with CostMeter(out, "adapter", cfg, workers=W) as meter:
        meter.startup_s = init_ray()
        source_head_info = read_head(cfg.source[0])
        template = cfg.template or (source_head_info[1]["template"] if source_head_info else task.template)
        prompt_len = sources[0]["prompt_len"]
        source_dim = sum(m["dim"] for m in sources)
        adapter_cfg = {"source_dim": source_dim, "target_dim": target["hidden_size"],
                       "width": cfg.width or 2 * source_dim, "rank": cfg.rank, "dropout": cfg.dropout}
        counts = pq.read_table(Path(cfg.data) / "users.parquet", columns=["user_id", "n_train", "n_valid"]).to_pandas()
        counts = counts[counts["user_id"].isin(set(users))]
        train_steps = steps_for([-(-int(counts["n_train"].sum()) // W)], cfg.batch_size)
        epochs = epochs_for(cfg.epochs, cfg.min_steps, train_steps)
        valid_rows = rows_per_rank(counts, "n_valid", W)  # valid_r{k}: the rows of the users rank k owns
        valid_steps = steps_for(valid_rows, cfg.batch_size) if sum(valid_rows) else 0
        base = read_columns([str(p.resolve()) for p in shard_paths(cfg.data)],
                            ["user_id", "item_text", "history_text", "label", "split"])
        base = base.map_batches(_select_rows, batch_format="pandas", fn_kwargs={"users_ref": ray.put(set(users))})
        tagged = base.map_batches(tag_parts, batch_format="pandas", fn_kwargs={"world": W, "train_part": "train"})
        datasets = dataset_parts(tagged, ["train"] + [f"valid_r{r}" for r in range(W)], cfg.cache_data)
        metric = f"valid_{task.metric}"
        start = recycled_start(cfg, users, adapter_cfg, out) if cfg.init == "recycled" else {"kind": "random"}
        loop_config = adapter_loop_config(cfg, task.name, load_template_text(template), prompt_len, users_path,
                                          adapter_cfg, Steps(epochs, train_steps, valid_steps),
                                          split_label_mean(cfg.data, "train"), out)
        log.info("adapter: %d users from %d source store(s) -> %s (d %d -> %d, w %d, rank %d), %d workers x %d steps "
                 "x %d epochs", len(users), len(cfg.source), target["family"], adapter_cfg["source_dim"],
                 adapter_cfg["target_dim"], adapter_cfg["width"], cfg.rank, W, train_steps, epochs)
        trainer = build_trainer(adapter_loop, loop_config, cfg, name, storage, metric, task.mode, datasets,
                                split=["train"], callbacks=callbacks)
        fit_start = time.time()
        result = fit_trainer(trainer, "adapter training", f"{storage}/{name}")
        ckpt, best = best_checkpoint(result, metric, task.mode)
        files = write_adapter_files(ckpt, out, cfg, loop_config.lora)
        history = run_history(result)
        record_training(meter, history, fit_start, target["parameters"])
        meter.extra = {"best_epoch": int(best["epoch"]), metric: best[metric], "users": len(users), "epochs": epochs,
                       "lm_dtype": history[-1].get("lm_dtype"), "init": start["kind"]}
    curve = [{k: row[k] for k in ("epoch", "train_loss", metric)} for row in history]
    meta = {"adapter": adapter_cfg, "lora": {**loop_config.lora, "path": files["lora"]} if cfg.lora_rank else None,
            "weights": files["weights"], "head": files["head"],
            "task": task.name, "template": template, "prompt_len": prompt_len,
            "lam": cfg.lam, "yes_minus_no": cfg.yes_minus_no, "target": target,
            "sources": [{"path": str(Path(s).resolve()), "model": m["model"], "dim": m["dim"],
                         "lineage": m["lineage"]} for s, m in zip(cfg.source, sources)],
            "users": len(users), "best_epoch": int(best["epoch"]), metric: best[metric], "init": start,
            "curve": curve, "dataset_fingerprint": data["fingerprint"], "sha256": file_sha256(out / files["weights"])}
    write_json_atomic(out / "adapter.json", meta)  # last: it marks the adapter complete and names its files
    commit_config(out)
    drop_other_generations(out, files)
    log.info("adapter: best epoch %d, %s %.4f -> %s", best["epoch"], metric, best[metric], out)
    return {"out": str(out), "users": len(users), "best_epoch": int(best["epoch"]), metric: best[metric],
            "curve": curve, "init": start, "adapter_params": adapter_param_count(AdapterConfig(**adapter_cfg)), "run_name": name,
            "wall_s": meter.record.wall_s, "startup_s": meter.record.startup_s}
