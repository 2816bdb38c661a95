"""A canonical dataset restricted to a seeded sample of its users (how `bench` measures cost at several sizes).

Shard by shard (one shard in memory at a time): every row of a chosen user is kept with its
split unchanged, so a user's history and held-out rows are exactly those of the full dataset.
The manifest records what it is a subset of (fingerprint, users, seed).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from puma_ray.data.index import write_index
from puma_ray.data.schema import MANIFEST, fingerprint, read_manifest, shard_paths, write_json_atomic, write_parquet_atomic
from puma_ray.errors import PumaError


def choose_users(users_parquet: Path, n: int, seed: int) -> pa.Array:
    """`n` user ids drawn without replacement (numpy Generator seeded with `seed`)."""
    ids = pq.read_table(users_parquet, columns=["user_id"]).column(0)
    if n > len(ids):
        raise PumaError(f"a subset of {n} users was asked of a dataset with {len(ids)}")
    pick = np.sort(np.random.default_rng(seed).choice(len(ids), size=n, replace=False))
    return ids.take(pa.array(pick))


def subset_dataset(src: str | Path, n: int, seed: int, out: str | Path) -> dict:
    """Write the `n`-user subset of dataset `src` to `out` (reused when already complete); returns its manifest."""
    src, out = Path(src), Path(out)
    base = read_manifest(src)
    if (out / MANIFEST).is_file():
        m = read_manifest(out)
        if m.get("subset_of") == {"fingerprint": base["fingerprint"], "users": n, "seed": seed}:
            return m
        raise PumaError(f"{out} already holds another dataset; choose another directory")
    keep = choose_users(src / "users.parquet", n, seed)
    (out / "interactions").mkdir(parents=True, exist_ok=True)
    for path in shard_paths(src):
        table = pq.read_table(path)
        part = table.filter(pc.is_in(table.column("user_id"), value_set=keep))
        if part.num_rows:
            write_parquet_atomic(part, out / "interactions" / path.name)
    items = pq.read_table(src / "items.parquet", columns=["item_id", "item_text"]).to_pydict()
    index = write_index(out, dict(zip(items["item_id"], items["item_text"])))
    rows = sum(s["rows"] for s in index["shards"])
    manifest = {**base, "rows": rows, "users": index["users"], "items": index["items"], "splits": index["splits"],
                "shards": index["shards"], "fingerprint": fingerprint(out, index["shards"]),
                "subset_of": {"fingerprint": base["fingerprint"], "users": n, "seed": seed},
                "notes": {**base.get("notes", {}), "subset": f"{n} of {base['users']} users of {src} (seed {seed})"}}
    write_json_atomic(out / MANIFEST, manifest)
    (out / "subset.json").write_text(json.dumps(manifest["subset_of"]) + "\n")
    return manifest
