"""The prompt store (DESIGN.md "Data contracts"): per-user soft prompts for one model.

    STORE/manifest.json        written last: format, task, l, d, dtype, num_users, model
                               {name, family, hidden_size, fingerprint}, lineage, dataset
                               fingerprint, shards [{name, rows, sha256}], quarantine count
    STORE/part-NNNNN.parquet   user_id string, prompt fixed_size_list<float32>[l*d]
    STORE/quarantine.parquet   users whose prompt was not finite (never written to a shard)
    STORE/head.safetensors, head.json   the task head (prompts and migrate stores)

Shards are written under a temporary name and renamed, so an interrupted writer leaves
no half shard; a store without a manifest is incomplete. A store re-written in place
(`prompts` on an existing store) names every new file with a generation
(part-NNNNN-GEN.parquet, quarantine-GEN.parquet, head-GEN.safetensors; the manifest's
`quarantine_file` and `head` name them), writes them beside the old ones, then replaces
the manifest and only then deletes the files no manifest names: killed at any moment,
the store is the old one or the new one, complete. Prompts are read in batches,
never all at once. Loading prompts for a model whose fingerprint differs is refused
unless the caller is migrating them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from puma_ray import __version__
from puma_ray.data.schema import (copy_atomic, file_sha256, read_required_json, shard_name, write_json_atomic,
                                  write_parquet_atomic)
from puma_ray.errors import PumaError

MANIFEST = "manifest.json"
LORA_DIR = "lora"
"""A migrated store's LoRA co-adaptation of its model (PEFT directory), when its adapter trained one."""
QUARANTINE = "quarantine.parquet"
FORMAT_VERSION = 1


def prompt_schema(width: int) -> pa.Schema:
    return pa.schema([("user_id", pa.string()), ("prompt", pa.list_(pa.float32(), width))])


def split_finite(user_ids: list[str], prompts: np.ndarray) -> tuple[list[str], np.ndarray, list[str]]:
    """(finite users, their prompts, users with a NaN/inf anywhere in their prompt)."""
    ok = np.isfinite(prompts.reshape(len(prompts), -1)).all(axis=1)
    users = np.asarray(user_ids, dtype=object)
    return users[ok].tolist(), prompts[ok], users[~ok].tolist()


def generation_name(name: str, generation: str) -> str:
    """`part-00000.parquet` -> `part-00000-GEN.parquet` (unchanged without a generation)."""
    stem, dot, ext = name.partition(".")
    return f"{stem}-{generation}{dot}{ext}" if generation else name


def write_shard(store: str | Path, index: int, user_ids: list[str], prompts: np.ndarray,
                generation: str = "") -> tuple[dict, list[str]]:
    """Write shard `index` atomically; returns ({name, rows, sha256}, quarantined user ids).

    prompts: [n, l, d] or [n, l*d] float (stored as float32).
    """
    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    flat = np.ascontiguousarray(prompts, dtype=np.float32).reshape(len(user_ids), -1)
    users, flat, bad = split_finite(list(user_ids), flat)
    width = flat.shape[1]
    values = pa.array(flat.reshape(-1), type=pa.float32())
    table = pa.table({"user_id": pa.array(users, pa.string()),
                      "prompt": pa.FixedSizeListArray.from_arrays(values, width)}, schema=prompt_schema(width))
    path = store / generation_name(shard_name(index), generation)
    write_parquet_atomic(table, path)
    return {"name": path.name, "rows": len(users), "sha256": file_sha256(path)}, bad


def finalize(store: str | Path, *, task: str, prompt_len: int, dim: int, model: dict, lineage: list[dict],
             dataset_fingerprint: str | None, shards: list[dict], quarantined: list[str], generation: str = "",
             head: dict | None = None, lora: dict | None = None) -> dict:
    """Write the quarantine list and then the manifest (last: it marks the store complete).

    generation: the new files' generation (see the module doc); the manifest then names the quarantine file
    and `head` ({"weights": file, **head.json fields}), and files no longer named are deleted after it lands.
    lora: the store's LoRA co-adaptation ({"path": LORA_DIR, "weights_sha256", PEFT settings}): its prompts
    are meant for the model with it merged in (evaluate does; stages that would use the plain model refuse).
    """
    store = Path(store)
    shards = sorted(shards, key=lambda s: s["name"])
    quarantine = generation_name(QUARANTINE, generation)
    write_parquet_atomic(pa.table({"user_id": pa.array(sorted(quarantined), pa.string())}), store / quarantine)
    manifest = {"format_version": FORMAT_VERSION, "created_by": f"puma-ray {__version__}", "task": task,
                "prompt_len": prompt_len, "dim": dim, "dtype": "float32",
                "num_users": sum(s["rows"] for s in shards), "quarantined": len(quarantined), "model": model,
                "lineage": lineage, "dataset_fingerprint": dataset_fingerprint, "shards": shards}
    if generation:
        manifest["quarantine_file"] = quarantine
    if head is not None:
        manifest["head"] = head
    if lora is not None:
        manifest["lora"] = lora
    write_json_atomic(store / MANIFEST, manifest)
    if generation:
        drop_unnamed(store, manifest)
    return manifest


def named_files(manifest: dict) -> set[str]:
    """Every file a manifest names (shards, quarantine list, head weights)."""
    names = {s["name"] for s in manifest["shards"]} | {manifest.get("quarantine_file", QUARANTINE)}
    return names | ({manifest["head"]["weights"]} if "head" in manifest else {"head.safetensors", "head.json"})


def drop_unnamed(store: Path, manifest: dict) -> None:
    """Delete the store files of earlier generations (shards, quarantine lists, heads) the manifest no longer names."""
    keep = named_files(manifest)
    for pattern in ("part-*.parquet", "quarantine*.parquet", "head*.safetensors", "head.json"):
        for path in store.glob(pattern):
            if path.name not in keep:
                path.unlink(missing_ok=True)


def store_lora(store: str | Path, manifest: dict) -> str | None:
    """The absolute path of the store's LoRA directory (its weights checked), or None when it has none."""
    lora = manifest.get("lora")
    if not lora:
        return None
    path = Path(store).resolve() / lora["path"]
    weights = path / "adapter_model.safetensors"
    if not weights.is_file() or file_sha256(weights) != lora["weights_sha256"]:
        raise PumaError(f"prompt store {store}: its LoRA weights ({weights}) are missing or do not match the "
                        "checksum in its manifest; re-run the migration")
    return str(path)


def refuse_lora(manifest: dict, store: str | Path, flag: str, why: str) -> None:
    """A clear error for a stage that would read a LoRA-migrated store's prompts on the plain model."""
    if manifest.get("lora"):
        raise PumaError(f"{flag} {store} was migrated with LoRA co-adaptation of its model: its prompts are meant "
                        f"for the co-adapted model, and {why} uses the plain one (evaluate applies the LoRA; "
                        "migrate with lora_rank 0 for a store the plain model reads)")


def read_manifest(store: str | Path) -> dict:
    return read_required_json(Path(store) / MANIFEST, f"{store} is not a complete prompt store (no {MANIFEST}); "
                              "it was never finished or is not a store")


def verify(store: str | Path) -> dict:
    """Check every shard's row count and checksum against the manifest; returns the manifest."""
    manifest = read_manifest(store)
    for s in manifest["shards"]:
        path = Path(store) / s["name"]
        if not path.is_file() or file_sha256(path) != s["sha256"]:
            raise PumaError(f"prompt store {store}: shard {s['name']} is missing or does not match its checksum")
    return manifest


def check_model(manifest: dict, fingerprint: str, store: str | Path) -> None:
    """Refuse prompts trained for another model: they only mean something through an adapter."""
    if manifest["model"]["fingerprint"] != fingerprint:
        raise PumaError(f"prompt store {store} belongs to model {manifest['model']['name']} "
                        f"(fingerprint {manifest['model']['fingerprint'][:12]}), not to this model "
                        f"({fingerprint[:12]}): migrate it with an adapter first")


def iter_prompts(store: str | Path, batch_rows: int = 65536) -> Iterator[tuple[list[str], np.ndarray]]:
    """Stream (user ids, prompts [n, l, d] float32) shard by shard, batch by batch."""
    manifest = read_manifest(store)
    l, d = manifest["prompt_len"], manifest["dim"]
    for s in manifest["shards"]:
        for batch in pq.ParquetFile(Path(store) / s["name"]).iter_batches(batch_size=batch_rows):
            users = batch.column("user_id").to_pylist()
            flat = batch.column("prompt").values.to_numpy(zero_copy_only=False)
            yield users, flat.reshape(len(users), l, d)


def store_user_ids(store: str | Path) -> list[str]:
    """Every user id of the store in store order (only the user_id column is read)."""
    return [u for s in read_manifest(store)["shards"]
            for u in pq.read_table(Path(store) / s["name"], columns=["user_id"]).column(0).to_pylist()]


def load_prompts(store: str | Path, user_ids: list[str]) -> np.ndarray:
    """Prompts [len(user_ids), l, d] of the given users (streamed batch by batch; each batch filtered on
    user_id by Arrow, so only those rows are converted and kept, with no per-row Python).

    A user missing from the store is an error that gives the count and a few ids.
    """
    index = pd.Index(user_ids)
    if not index.is_unique:
        raise PumaError(f"load_prompts: {int(index.duplicated().sum())} user id(s) requested twice")
    wanted = pa.array(list(user_ids), pa.string())
    manifest = read_manifest(store)
    l, d = manifest["prompt_len"], manifest["dim"]
    out = np.full((len(user_ids), l, d), np.nan, dtype=np.float32)
    found = np.zeros(len(user_ids), dtype=bool)
    for s in manifest["shards"]:
        for batch in pq.ParquetFile(Path(store) / s["name"]).iter_batches(batch_size=65536):
            hit = batch.filter(pc.is_in(batch.column("user_id"), value_set=wanted))
            if hit.num_rows:
                rows = index.get_indexer(hit.column("user_id").to_numpy(zero_copy_only=False))
                out[rows] = hit.column("prompt").flatten().to_numpy(zero_copy_only=False).reshape(-1, l, d)
                found[rows] = True
    if not found.all():
        missing = index[~found].tolist()
        raise PumaError(f"prompt store {store} lacks {len(missing)} of the {len(user_ids)} requested users "
                        f"(e.g. {missing[:3]})")
    return out


def _manifest_if_any(store: str | Path) -> dict:
    return read_manifest(store) if (Path(store) / MANIFEST).is_file() else {}


def read_quarantine(store: str | Path) -> list[str]:
    """User ids the store quarantined (non-finite prompts); empty when it has none."""
    path = Path(store) / _manifest_if_any(store).get("quarantine_file", QUARANTINE)
    return pq.read_table(path).column("user_id").to_pylist() if path.is_file() else []


def read_head(store: str | Path) -> tuple[Path, dict] | None:
    """(head weights, head fields {task, lam, template, yes_minus_no}) of a store written by `prompts` or
    `migrate`, or None: named by the manifest's `head`, else the store's head.safetensors and head.json."""
    head = _manifest_if_any(store).get("head")
    if head is not None:
        path = Path(store) / head["weights"]
        return (path, {k: v for k, v in head.items() if k != "weights"}) if path.is_file() else None
    path, meta = Path(store) / "head.safetensors", Path(store) / "head.json"
    if not path.is_file() or not meta.is_file():
        return None
    return path, json.loads(meta.read_text())


def without_users(store: str | Path, out: str | Path, drop: list[str], step: dict) -> dict:
    """A copy of `store` at `out` lacking the users in `drop` (shard by shard, filtered by Arrow), with its
    head, quarantine list and lineage plus `step`; returns the new manifest. `out` must not hold a store."""
    manifest, out = verify(store), Path(out)
    if (out / MANIFEST).exists():
        raise PumaError(f"{out} already holds a prompt store; nothing was changed there")
    out.mkdir(parents=True, exist_ok=True)
    dropped = pa.array(sorted(set(drop)), pa.string())
    shards, removed = [], 0
    for s in manifest["shards"]:
        table = pq.read_table(Path(store) / s["name"])
        keep = table.filter(pc.invert(pc.is_in(table.column("user_id"), value_set=dropped)))
        removed += table.num_rows - keep.num_rows
        write_parquet_atomic(keep, out / s["name"])
        shards.append({"name": s["name"], "rows": keep.num_rows, "sha256": file_sha256(out / s["name"])})
    head = read_head(store)
    if head is not None:
        copy_atomic(head[0], out / "head.safetensors")
    return finalize(out, task=manifest["task"], prompt_len=manifest["prompt_len"], dim=manifest["dim"],
                    model=manifest["model"], lineage=manifest["lineage"] + [{**step, "removed_users": removed}],
                    dataset_fingerprint=manifest.get("dataset_fingerprint"), shards=shards,
                    quarantined=read_quarantine(store),
                    head=None if head is None else {"weights": "head.safetensors", **head[1]})
