"""`puma-ray migrate`: every user's prompt of the source store(s) through the adapter into a target store.

config -> checks (adapter checksum; each source store verified and matching the
adapter's source model, dim, l, task) -> pending source shards -> Ray Data
map_batches(ShardMigrator) over them (one shard per call, `workers` actors) ->
manifest (written last) with the target model, lineage and shard checksums -> report.

Rows out = rows in: each source shard becomes the target shard of the same index, and
every source user ends in a target shard or in the quarantine list (non-finite input
or output, plus users the sources had already quarantined). Interrupted runs resume:
shards already done (progress record + checksum) are skipped.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import ray

from puma_ray.config import MigrateConfig
from puma_ray.core.hf import dtype_name
from puma_ray.core.modules import AdapterConfig, adapter_param_count
from puma_ray.data.schema import copy_atomic, file_sha256, read_required_json, write_json_atomic
from puma_ray.errors import PumaError
from puma_ray.migrate.migration import PROGRESS_DIR, ShardMigrator, checked_weights, done_shard
from puma_ray.runtime.ray_utils import actor_cpus, actor_pool, init_ray
from puma_ray.runtime.runs import (PENDING_CONFIG, STAGE_KINDS, CostMeter, Progress, check_out, commit_config, log,
                                   open_run, write_kind)
from puma_ray.runtime.storage import remote_paths
from puma_ray.store.prompt_store import LORA_DIR, MANIFEST, finalize, read_quarantine, verify
from puma_ray.store.prompt_store import read_manifest as read_store_manifest


def check_stores(sources: list[str], meta: dict) -> list[dict]:
    """Verified manifests of the source stores, each matching what the adapter was trained on."""
    if len(sources) != len(meta["sources"]):
        raise PumaError(f"the adapter was trained on {len(meta['sources'])} source store(s), {len(sources)} given")
    manifests = []
    for store, want in zip(sources, meta["sources"]):
        m = verify(store)
        if m["model"]["fingerprint"] != want["model"]["fingerprint"]:
            raise PumaError(f"source store {store} belongs to model {m['model']['name']}, but the adapter maps prompts "
                            f"of {want['model']['name']} (fingerprints differ)")
        if m["dim"] != want["dim"] or m["prompt_len"] != meta["prompt_len"]:
            raise PumaError(f"source store {store} holds l={m['prompt_len']} x d={m['dim']} prompts; the adapter "
                            f"expects l={meta['prompt_len']} x d={want['dim']}")
        if m["task"] != meta["task"]:
            raise PumaError(f"source store {store} is for task {m['task']!r}, the adapter for {meta['task']!r}")
        manifests.append(m)
    return manifests


def lineage_of(sources: list[str], manifests: list[dict], adapter_dir: str, meta: dict, dtype: str) -> list[dict]:
    """The first source's lineage + this step (every source and the adapter checksum), so chains show."""
    step = {"step": "migrated", "from": [{"store": str(Path(s).resolve()), "model": m["model"]["fingerprint"]}
                                         for s, m in zip(sources, manifests)],
            "adapter": str(Path(adapter_dir).resolve()), "adapter_sha256": meta["sha256"],
            "model": meta["target"]["fingerprint"], "dtype": dtype,
            "lora": {k: v for k, v in meta["lora"].items() if k != "path"} if meta.get("lora") else None}
    if len(sources) > 1:
        step["aggregated_lineages"] = [m["lineage"] for m in manifests[1:]]
    return manifests[0]["lineage"] + [step]


def copy_lora(adapter_dir: Path, meta: dict, out: Path) -> dict | None:
    """The adapter's LoRA co-adaptation copied into the store (out/lora, swapped in whole) and its manifest
    record; None (and no lora/ left over) when the adapter trained none."""
    shutil.rmtree(out / LORA_DIR, ignore_errors=True)
    if not meta.get("lora"):
        return None
    work = out / f".{LORA_DIR}.partial"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(adapter_dir / meta["lora"]["path"], work)
    work.rename(out / LORA_DIR)
    settings = {k: v for k, v in meta["lora"].items() if k != "path"}
    return {"path": LORA_DIR, "weights_sha256": file_sha256(out / LORA_DIR / "adapter_model.safetensors"), **settings}


def claim_output(out: Path, identity: dict) -> dict | None:
    """The finished manifest when `out` already holds this very migration; an error when it holds another."""
    marker = out / PROGRESS_DIR / "identity.json"
    if (out / MANIFEST).is_file():
        m = read_store_manifest(out)
        if m["lineage"] and m["lineage"][-1].get("adapter_sha256") == identity["adapter_sha256"] and \
                [f["store"] for f in m["lineage"][-1]["from"]] == identity["sources"]:
            return m
        raise PumaError(f"--out {out} is already a complete prompt store of another run; choose a new --out")
    if marker.is_file() and read_required_json(marker, f"{marker} is missing") != identity:
        raise PumaError(f"--out {out} holds a partial migration with another adapter or sources; "
                        "delete it or choose a new --out")
    marker.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(marker, identity)
    return None


@remote_paths
def run_migrate(cfg: MigrateConfig) -> dict:
    """Migrate every user of cfg.source into the store cfg.out; returns the JSON summary."""
    out = check_out(cfg.out, "prompt store")  # first: an --out holding another kind of output is refused untouched
    adapter_dir = Path(cfg.adapter)
    meta = read_required_json(adapter_dir / "adapter.json",
                              f"--adapter {cfg.adapter}: no adapter.json there (give a `puma-ray adapter` output)")
    checked_weights(adapter_dir, meta)  # before --out is touched (the actors check again when they load it)
    manifests = check_stores(cfg.source, meta)
    sources = [str(Path(s).resolve()) for s in cfg.source]
    identity = {"adapter_sha256": meta["sha256"], "sources": sources,
                **({"dtype": cfg.dtype} if cfg.dtype != "auto" else {})}  # a resumed run keeps one dtype
    out.mkdir(parents=True, exist_ok=True)
    write_kind(out, STAGE_KINDS["migrate"])  # before any other file: an interrupted migration is still known
    finished = claim_output(out, identity)
    if finished:
        commit_config(out)  # a run killed between its manifest and its config
        log.info("migrate: %s is already complete (%d users)", out, finished["num_users"])
        return {"out": str(out), "users": finished["num_users"], "quarantined": finished["quarantined"],
                "already_complete": True}
    open_run(out, "migrate", cfg, config_name=PENDING_CONFIG)  # config.yaml once the store is complete
    shards = manifests[0]["shards"]
    done = {i: done_shard(out, i) for i in range(len(shards))}
    pending = [{"index": i, "path": str(Path(sources[0]) / s["name"]), "sha256": s["sha256"]}
               for i, s in enumerate(shards) if done[i] is None]
    total_rows = sum(s["rows"] for s in shards)
    log.info("migrate: %d users in %d shards (%d already done) -> %s, %d actor(s)", total_rows, len(shards),
             len(shards) - len(pending), out, cfg.workers)
    with CostMeter(out, "migrate", cfg, workers=cfg.workers) as meter:
        meter.startup_s = init_ray(dashboard=False)
        if pending:
            ds = ray.data.from_items(pending).map_batches(
                ShardMigrator, batch_size=1, compute=actor_pool(cfg.workers), num_cpus=actor_cpus(cfg.cpus_per_worker, cfg.workers),
                num_gpus=cfg.gpus_per_worker if cfg.use_gpu else None,
                fn_constructor_kwargs={"adapter_dir": str(adapter_dir.resolve()), "sources": sources, "out": str(out.resolve()),
                                       "prompt_len": meta["prompt_len"], "dims": [m["dim"] for m in manifests],
                                       "batch_size": cfg.batch_size, "threads": max(1, int(cfg.cpus_per_worker)),
                                       "use_gpu": cfg.use_gpu, "dtype": cfg.dtype})
            progress = Progress("migrate: users", sum(s["rows"] for i, s in enumerate(shards) if done[i] is None))
            for row in ds.iter_rows():
                progress.step(json.loads(row["record"])["source_rows"])
        records = [done_shard(out, i) for i in range(len(shards))]
        busy = sum(records[p["index"]]["seconds"] for p in pending if records[p["index"]]) / cfg.workers
        meter.startup_s = max(0.0, meter.elapsed() - busy)  # what was not spent migrating users
        if any(r is None for r in records):
            raise PumaError("migrate: some target shards are missing after the run; re-run to finish them")
        migrated = sum(r["source_rows"] for r in records)
        if migrated != total_rows:
            raise PumaError(f"migrate: {migrated} users came out of {total_rows} in the source; refusing to finish")
        quarantined = sorted({u for r in records for u in r["quarantined"]} |
                             {u for s in cfg.source for u in read_quarantine(s)})
        target = meta["target"]
        # the head (and LoRA) go in before the manifest, which names them: a complete store always has them
        copy_atomic(adapter_dir / meta.get("head", "head.safetensors"), out / "head.safetensors")
        lora = copy_lora(adapter_dir, meta, out)
        manifest = finalize(out, task=meta["task"], prompt_len=meta["prompt_len"], dim=target["hidden_size"],
                            model={k: target[k] for k in ("name", "family", "hidden_size", "fingerprint")},
                            lineage=lineage_of(cfg.source, manifests, cfg.adapter, meta,
                                              dtype_name(cfg.dtype, cfg.use_gpu)),
                            dataset_fingerprint=manifests[0]["dataset_fingerprint"],
                            shards=[{k: r[k] for k in ("name", "rows", "sha256")} for r in records],
                            quarantined=quarantined,
                            head={"weights": "head.safetensors", "task": meta["task"], "lam": meta["lam"],
                                  "template": meta["template"], "yes_minus_no": meta["yes_minus_no"]},
                            lora=lora)
        commit_config(out)
        shutil.rmtree(out / PROGRESS_DIR, ignore_errors=True)
        params = adapter_param_count(AdapterConfig(**meta["adapter"]))
        meter.samples = total_rows
        meter.flops = 2.0 * params * total_rows * meta["prompt_len"]
        meter.extra = {"shards": len(shards), "resumed_shards": len(shards) - len(pending),
                       "quarantined": len(quarantined), "adapter_params": params}
    log.info("migrate: %d users -> %s (%d quarantined, %.1f s)", manifest["num_users"], out, len(quarantined),
             meter.record.wall_s)
    return {"out": str(out), "users": manifest["num_users"], "quarantined": len(quarantined),
            "shards": len(shards), "resumed_shards": len(shards) - len(pending), "wall_s": meter.record.wall_s}
