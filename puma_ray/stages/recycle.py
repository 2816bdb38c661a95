"""`puma-ray recycle`: a migration that needs no user data (issue 18, item 1).

config -> checks (source store verified; --source-model is the store's model by fingerprint;
the target model loads; --out is a prompt store or free) -> the least-squares map between the
two models' input-embedding spaces over their shared tokens (core/recycle.py) -> every source
prompt mapped, batch by batch, into a store built beside --out (with the task head of
--head-from, default the source store's) -> manifest last, with a
`recycled` lineage step (shared tokens, fit R^2) -> swapped in whole.

Users the source quarantined stay quarantined; a mapped prompt that is not finite is quarantined.
"""

from __future__ import annotations

from pathlib import Path

from puma_ray.config import RecycleConfig
from puma_ray.core.hf import describe_model, load_causal_lm, load_tokenizer
from puma_ray.core.recycle import fit_recycle_map
from puma_ray.data.schema import copy_atomic
from puma_ray.errors import PumaError
from puma_ray.runtime.runs import CostMeter, Progress, build_beside, check_out, log
from puma_ray.runtime.storage import remote_paths
from puma_ray.store.prompt_store import (check_model, finalize, iter_prompts, read_head, refuse_lora,
                                         read_quarantine, verify, write_shard)


def fit_between(cfg: RecycleConfig):
    """The recycling map from the source model's embedding space to the target's."""
    log.info("recycle: fitting the map %s -> %s on their shared tokens", cfg.source_model, cfg.target_model)
    return fit_recycle_map(load_causal_lm(cfg.source_model), load_tokenizer(cfg.source_model),
                           load_causal_lm(cfg.target_model), load_tokenizer(cfg.target_model), cfg.ridge)


def recycle_into(work: Path, cfg: RecycleConfig, store: dict, target: dict, head: tuple[Path, dict]) -> dict:
    """Map every prompt of cfg.source into `work` (a store of the target model); returns its manifest."""
    with CostMeter(work, "recycle", cfg) as meter:
        fitted = fit_between(cfg)
        log.info("recycle: %d shared tokens, R^2 %.3f of the target embeddings explained", fitted.tokens, fitted.r2)
        shards, quarantined = [], list(read_quarantine(cfg.source))
        progress = Progress("recycle: users", store["num_users"])
        for index, (users, prompts) in enumerate(iter_prompts(cfg.source, cfg.batch_rows)):
            info, bad = write_shard(work, index, users, fitted.apply(prompts))
            shards.append(info)
            quarantined += bad
            progress.step(len(users))
        meter.samples = store["num_users"]
        copy_atomic(head[0], work / "head.safetensors")  # before the manifest, which names it
        step = {"step": "recycled", "from": [{"store": str(Path(cfg.source).resolve()),
                                             "model": store["model"]["fingerprint"]}],
                "model": target["fingerprint"], "shared_tokens": fitted.tokens, "fit_r2": round(fitted.r2, 6),
                "ridge": cfg.ridge, "head_from": str(Path(cfg.head_from or cfg.source).resolve())}
        return finalize(work, task=store["task"], prompt_len=store["prompt_len"], dim=target["hidden_size"],
                        model=target, lineage=store["lineage"] + [step],
                        dataset_fingerprint=store.get("dataset_fingerprint"),
                        shards=shards, quarantined=quarantined, head={"weights": "head.safetensors", **head[1]})


@remote_paths
def run_recycle(cfg: RecycleConfig) -> dict:
    """Recycle every prompt of `cfg.source` into `cfg.target_model`'s space; returns the JSON summary."""
    check_out(cfg.out, "prompt store")  # first: an --out holding another kind of output is refused untouched
    store = verify(cfg.source)
    refuse_lora(store, cfg.source, "--source", "recycling")
    source = describe_model(cfg.source_model)
    check_model(store, source["fingerprint"], cfg.source)
    target = describe_model(cfg.target_model)  # a model that does not load fails here, before --out is touched
    head_store, flag = (cfg.head_from, "--head-from") if cfg.head_from else (cfg.source, "--source")
    head = read_head(head_store)
    if head is None:
        raise PumaError(f"{flag} {head_store}: the store has no task head (stores of `prompts` and `migrate` do)")
    if head[1]["task"] != store["task"]:
        raise PumaError(f"--head-from {head_store}: its head is for task {head[1]['task']!r}, the source's prompts "
                        f"for {store['task']!r}")
    out, manifest = build_beside(cfg.out, "recycle", cfg, lambda work: recycle_into(work, cfg, store, target, head))
    step = manifest["lineage"][-1]
    summary = {"out": str(out), "users": manifest["num_users"], "quarantined": manifest.get("quarantined", 0),
               "shared_tokens": step["shared_tokens"], "fit_r2": step["fit_r2"], "model": target["name"]}
    log.info("recycle: %d users into %s (%d quarantined)", summary["users"], out, summary["quarantined"])
    return summary
