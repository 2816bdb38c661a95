"""Applying a trained adapter to prompt-store shards; the Ray Data callable of `puma-ray migrate`.

One call migrates one whole source shard into the target shard of the same index,
streaming it in batches of `batch_size` prompts (memory stays at a batch, not a
shard). The target shard is written under a temporary name and renamed; then a small
progress record (rows, checksum, quarantined users) is written, also atomically. A
re-run skips every shard whose record and checksum are in place, so each user is
migrated exactly once however often the job is interrupted.

Shapes: source prompts [n, l, d_s] float32 (several stores concatenated on the last
axis) -> target prompts [n, l, d_t] float32.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file

from puma_ray.core.hf import resolve_dtype
from puma_ray.core.modules import AdapterConfig, MigrationAdapter
from puma_ray.core.scoring import prompt_matrix
from puma_ray.data.schema import file_sha256, read_required_json, write_json_atomic
from puma_ray.errors import PumaError
from puma_ray.store.prompt_store import load_prompts, prompt_schema

PROGRESS_DIR = "_progress"


def checked_weights(adapter_dir: Path, meta: dict) -> Path:
    """The adapter's weights file, after checking it against the checksum adapter.json holds."""
    weights = adapter_dir / meta.get("weights", "adapter.safetensors")  # adapters before generations: unnamed
    if not weights.is_file() or file_sha256(weights) != meta["sha256"]:
        raise PumaError(f"{weights} is missing or does not match the checksum in adapter.json: the adapter is "
                        "damaged; train it again with puma-ray adapter")
    return weights


def load_adapter(adapter_dir: str | Path, device: torch.device | str = "cpu") -> MigrationAdapter:
    """The adapter of an `adapter` output directory in eval mode (dropout off), weights checked against adapter.json."""
    adapter_dir = Path(adapter_dir)
    meta = read_required_json(adapter_dir / "adapter.json", f"{adapter_dir} holds no adapter.json")
    weights = checked_weights(adapter_dir, meta)
    module = MigrationAdapter(AdapterConfig(**meta["adapter"]))
    module.load_state_dict(load_file(weights))
    return module.to(device).eval()


def progress_path(out: str | Path, index: int) -> Path:
    return Path(out) / PROGRESS_DIR / f"part-{index:05d}.json"


def done_shard(out: str | Path, index: int) -> dict | None:
    """The progress record of a finished target shard, or None when it must be (re)done."""
    rec = progress_path(out, index)
    if not rec.is_file():
        return None
    info = json.loads(rec.read_text())
    shard = Path(out) / info["name"]
    if not shard.is_file() or file_sha256(shard) != info["sha256"]:
        return None
    return info


class ShardMigrator:
    """Ray Data callable: rows {index, path, sha256} of source shards -> their target shards' records."""

    def __init__(self, adapter_dir: str, sources: list[str], out: str, prompt_len: int, dims: list[int],
                 batch_size: int, threads: int, use_gpu: bool = False, dtype: str = "auto") -> None:
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, threads))
        self.dtype = resolve_dtype(dtype, self.device)
        self.adapter = load_adapter(adapter_dir, self.device).to(self.dtype)
        self.sources, self.out, self.l, self.dims = sources, Path(out), prompt_len, dims
        self.batch_size = batch_size
        self.target_dim = self.adapter.cfg.target_dim

    def __call__(self, batch: dict) -> dict:
        records = [self.migrate_shard(int(i), str(p), str(s)) for i, p, s in
                   zip(batch["index"], batch["path"], batch["sha256"])]
        return {"record": np.asarray([json.dumps(r) for r in records], dtype=object)}

    @torch.no_grad()
    def migrate_shard(self, index: int, path: str, sha256: str) -> dict:
        t0 = time.perf_counter()
        if file_sha256(Path(path)) != sha256:
            raise PumaError(f"source shard {path} does not match its manifest checksum; the store changed or is damaged")
        name = f"part-{index:05d}.parquet"
        final = self.out / name
        tmp = final.with_name(name + ".tmp")
        width = self.l * self.target_dim
        rows, bad = 0, []
        with pq.ParquetWriter(tmp, prompt_schema(width), compression="zstd") as writer:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=self.batch_size):
                users = batch.column("user_id").to_pylist()
                x = prompt_matrix(batch.column("prompt"), self.l * self.dims[0]).reshape(len(users), self.l, -1)
                if len(self.sources) > 1:  # aggregated: the same users' prompts from every other store
                    x = np.concatenate([x] + [load_prompts(s, users) for s in self.sources[1:]], axis=-1)
                y = self.adapter(torch.from_numpy(x).to(self.device, self.dtype)).float().cpu().numpy().reshape(len(users), -1)
                ok = np.isfinite(x.reshape(len(users), -1)).all(axis=1) & np.isfinite(y).all(axis=1)
                bad += [u for u, good in zip(users, ok) if not good]
                kept = np.flatnonzero(ok)
                values = pa.array(y[kept].reshape(-1), type=pa.float32())
                writer.write_table(pa.table({"user_id": pa.array([users[i] for i in kept], pa.string()),
                                             "prompt": pa.FixedSizeListArray.from_arrays(values, width)},
                                            schema=prompt_schema(width)))
                rows += len(kept)
        os.replace(tmp, final)
        record = {"name": name, "rows": rows, "sha256": file_sha256(final), "quarantined": bad,
                  "source_rows": rows + len(bad), "seconds": round(time.perf_counter() - t0, 3)}
        write_json_atomic(progress_path(self.out, index), record)
        return record
