"""The user/item index and fingerprint of a canonical dataset, computed from its final shards
(one shard in memory at a time). Used by the data stage and by user subsets."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from puma_ray.data.schema import ITEMS, SPLITS, USERS, file_sha256, write_parquet_atomic


def write_index(out: Path, kept_text: dict[str, str]) -> dict:
    """users.parquet and items.parquet from the final shards (one shard in memory at a time)."""
    shards = sorted((out / "interactions").glob("part-*.parquet"))
    user_tables, offset = [], 0
    items: Counter = Counter()
    per_split = {s: {"rows": 0, "users": 0, "items": set()} for s in SPLITS}
    for path in shards:
        df = pq.read_table(path, columns=["user_id", "item_id", "split"]).to_pandas()
        counts = pd.crosstab(df["user_id"], df["split"]).reindex(columns=list(SPLITS), fill_value=0)
        user_tables.append(pd.DataFrame({"user_id": counts.index.to_numpy(),
                                         "user_idx": np.arange(offset, offset + len(counts), dtype=np.int64),
                                         **{f"n_{s}": counts[s].to_numpy(np.int64) for s in SPLITS}}))
        offset += len(counts)
        items.update(df["item_id"].value_counts().to_dict())
        for s in SPLITS:
            part = df[df["split"] == s]
            per_split[s]["rows"] += len(part)
            per_split[s]["users"] += int((counts[s] > 0).sum())
            per_split[s]["items"].update(part["item_id"].unique())
    users = pd.concat(user_tables) if user_tables else pd.DataFrame({c: [] for c in USERS.names})
    write_parquet_atomic(pa.Table.from_pandas(users, schema=USERS, preserve_index=False), out / "users.parquet")
    ids = sorted(items)
    write_parquet_atomic(pa.table({"item_id": ids, "item_idx": np.arange(len(ids), dtype=np.int64),
                                   "item_text": [kept_text[i] for i in ids], "interactions": [items[i] for i in ids]},
                                  schema=ITEMS), out / "items.parquet")
    shard_info = [{"name": p.name, "rows": pq.ParquetFile(p).metadata.num_rows, "sha256": file_sha256(p)}
                  for p in shards]
    return {"users": offset, "items": len(ids), "shards": shard_info,
            "splits": {s: {"rows": v["rows"], "users": v["users"], "items": len(v["items"])}
                       for s, v in per_split.items()}}
