"""`puma-ray coldstart`: prompts for users the source never saw (issue 18, item 3).

config -> checks (dataset readable; store complete and verified, with a head, for the dataset's task;
--out is a prompt store or free) -> cold-start users = the dataset's users that the store neither holds
nor quarantines -> every user's set of train items (a sparse matrix; valid and test rows are never
read) -> each cold user's nearest store users by cosine of those sets (core/coldstart.py) -> their
prompts (only the neighbours' rows are loaded) averaged by similarity, or the store's mean prompt for a
user who shares no train item with anyone -> a store built beside --out: the store's shards copied
unchanged, the cold users' shards added, `coldstart_users.parquet` naming every cold user and how its
prompt was made, manifest last with a `coldstart` lineage step -> swapped in whole.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from puma_ray.config import ColdstartConfig
from puma_ray.core.coldstart import Neighbours, blend, interaction_matrix, nearest
from puma_ray.data.schema import copy_atomic, shard_paths, write_parquet_atomic
from puma_ray.data.schema import read_manifest as read_data_manifest
from puma_ray.errors import PumaError
from puma_ray.runtime.runs import CostMeter, build_beside, check_out, log
from puma_ray.runtime.storage import remote_paths
from puma_ray.store.prompt_store import (finalize, iter_prompts, load_prompts, read_head, refuse_lora,
                                         read_quarantine, verify, write_shard)

USERS_FILE = "coldstart_users.parquet"
"""The cold-start users of a store (user_id, made_from = neighbours | mean, neighbours, weight)."""


def store_users(store: str | Path) -> tuple[list[str], np.ndarray]:
    """(every user id of the store in store order, the mean of their prompts [l, d])."""
    users, total, n = [], None, 0
    for ids, x in iter_prompts(store):
        users += ids
        part = x.astype(np.float64).sum(axis=0)
        total, n = (part if total is None else total + part), n + len(ids)
    if not n:
        raise PumaError(f"--prompts {store}: the store holds no prompt, so no user has neighbours to start from")
    return users, (total / n).astype(np.float32)


def train_items(data_dir: str, user_index: pd.Index) -> "tuple[np.ndarray, np.ndarray, int]":
    """(row of each train interaction's user in `user_index`, its item's column, number of items)."""
    rows, cols, items = [], [], {}
    for path in shard_paths(data_dir):
        t = pq.read_table(path, columns=["user_id", "item_id"], filters=[("split", "==", "train")])
        codes = pd.factorize(t.column("item_id").to_numpy(zero_copy_only=False))
        ids = pd.Index(codes[1]).map(lambda i: items.setdefault(i, len(items)))
        rows.append(user_index.get_indexer(t.column("user_id").to_numpy(zero_copy_only=False)))
        cols.append(np.asarray(ids, dtype=np.int64)[codes[0]])
    rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    cols = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    known = rows >= 0
    return rows[known], cols[known], len(items)


def cold_users(data_dir: str, warm: list[str], quarantined: list[str]) -> list[str]:
    """The dataset's users (users.parquet order) that are neither in the store nor quarantined by it."""
    users = pq.read_table(Path(data_dir) / "users.parquet", columns=["user_id"]).column("user_id").to_pylist()
    have = set(warm) | set(quarantined)
    return [u for u in users if u not in have]


def neighbours_of(cfg: ColdstartConfig, cold: list[str], warm: list[str]) -> Neighbours:
    """Each cold user's nearest warm users by their train items."""
    index = pd.Index(warm + cold)
    rows, cols, n_items = train_items(cfg.data, index)
    x = interaction_matrix(rows, cols, len(index), max(n_items, 1))
    log.info("coldstart: %d cold-start users, %d store users, %d train interactions over %d items", len(cold),
             len(warm), len(rows), n_items)
    return nearest(x[len(warm):], x[:len(warm)], cfg.neighbours, cfg.chunk_users)


@remote_paths
def run_coldstart(cfg: ColdstartConfig) -> dict:
    """A store with a prompt for every user of `cfg.data`: `cfg.prompts`' own plus the cold-start users'."""
    check_out(cfg.out, "prompt store")  # first: an --out holding another kind of output is refused untouched
    data = read_data_manifest(cfg.data)
    store = verify(cfg.prompts)
    refuse_lora(store, cfg.prompts, "--prompts", "coldstart (its nearest neighbours and mean prompt)")
    if store["task"] != data["task"]:
        raise PumaError(f"--prompts {cfg.prompts} is for task {store['task']!r}, --data {cfg.data} is {data['task']!r}")
    head = read_head(cfg.prompts)
    if head is None:
        raise PumaError(f"--prompts {cfg.prompts}: the store has no task head (stores of `prompts` and `migrate` do)")
    out, manifest = build_beside(cfg.out, "coldstart", cfg, lambda work: coldstart_into(work, cfg, store, head))
    step = manifest["lineage"][-1]
    summary = {"out": str(out), "users": manifest["num_users"], "cold_users": step["cold_users"],
               "from_neighbours": step["from_neighbours"], "from_mean": step["from_mean"]}
    log.info("coldstart: %d cold-start users (%d from neighbours, %d the mean prompt) -> %s", step["cold_users"],
             step["from_neighbours"], step["from_mean"], out)
    return summary


def coldstart_into(work: Path, cfg: ColdstartConfig, store: dict, head: tuple[Path, dict]) -> dict:
    """The store's shards and the cold-start users' prompts in `work`; returns its manifest."""
    with CostMeter(work, "coldstart", cfg) as meter:
        warm, mean_prompt = store_users(cfg.prompts)
        quarantined = read_quarantine(cfg.prompts)
        cold = cold_users(cfg.data, warm, quarantined)
        found = neighbours_of(cfg, cold, warm)
        needed = np.unique(found.index[found.index >= 0])
        positions = np.full(len(warm), -1, dtype=np.int64)
        positions[needed] = np.arange(len(needed))
        loaded = load_prompts(cfg.prompts, [warm[i] for i in needed]) if len(needed) else mean_prompt[None]
        prompts = blend(found, loaded, positions, mean_prompt)
        for s in store["shards"]:  # the store's prompts, unchanged
            copy_atomic(Path(cfg.prompts) / s["name"], work / s["name"])
        shards, bad = [dict(s) for s in store["shards"]], []
        generation = f"cold{len(store['lineage'])}"  # never the name of a shard the store already has
        for index, lo in enumerate(range(0, len(cold), 65536)):
            info, q = write_shard(work, index, cold[lo:lo + 65536], prompts[lo:lo + 65536], generation=generation)
            shards.append(info)
            bad += q
        write_parquet_atomic(pa.table({
            "user_id": pa.array(cold, pa.string()),
            "made_from": pa.array(np.where(found.found, "neighbours", "mean").tolist(), pa.string()),
            "neighbours": pa.array((found.index >= 0).sum(axis=1), pa.int32()),
            "weight": pa.array(found.weight.sum(axis=1), pa.float32())}), work / USERS_FILE)
        copy_atomic(head[0], work / "head.safetensors")  # before the manifest, which names it
        meter.samples = len(cold)
        step = {"step": "coldstart", "from": [{"store": str(Path(cfg.prompts).resolve()),
                                              "model": store["model"]["fingerprint"]}],
                "data": str(Path(cfg.data).resolve()), "cold_users": len(cold),
                "from_neighbours": int(found.found.sum()), "from_mean": int((~found.found).sum()),
                "neighbours": cfg.neighbours, "similarity": "cosine of train-item sets", "users_file": USERS_FILE}
        return finalize(work, task=store["task"], prompt_len=store["prompt_len"], dim=store["dim"],
                        model=store["model"], lineage=store["lineage"] + [step],
                        dataset_fingerprint=store.get("dataset_fingerprint"), shards=shards,
                        quarantined=list(quarantined) + bad, head={"weights": "head.safetensors", **head[1]})
