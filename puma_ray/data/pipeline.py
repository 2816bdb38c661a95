"""Ray Data passes that turn a source into canonical shards with bounded memory per process.

Real sources, three passes:
  1. parse   : lines -> rows (or drop reasons), streamed by Ray Data into temporary parquet;
  2. bucket  : rows hashed by user into buckets of ~rows_per_shard, de-duplicated per bucket,
               written one file per bucket; each bucket returns partial item counts, the
               candidate text of each item and its drop-reason counts;
  3. finalize: on the driver, the (small) item table decides which items stay; each bucket
               is then filtered, capped, split and written as one final shard, in parallel.
Synthetic: each shard is generated from (seed, shard), so pass 2 is a cheap counting pass
and pass 3 regenerates the shard, with no shuffle at all.
Only per-item and per-reason tables ever reach the driver.
"""

from __future__ import annotations

import json
import math
import zlib
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from puma_ray.data.prep import Preprocessing, dedup, finalize_shard
from puma_ray.data.schema import shard_name, write_parquet_atomic
from puma_ray.data.sources import LineSource
from puma_ray.data.population import Population
from puma_ray.data.synthetic import Catalogue, generate_shard

PARSED = pa.schema([("user_id", pa.string()), ("item_id", pa.string()), ("label", pa.float32()),
                    ("ts", pa.int64()), ("item_text", pa.string()), ("history_text", pa.list_(pa.string())),
                    ("drop_reason", pa.string())])


def parse_batch(batch: pd.DataFrame, source: LineSource, titles_ref, seed: int) -> pa.Table:
    """Ray Data map_batches: a batch of lines ("text") -> PARSED rows, drops kept with a reason."""
    titles = ray.get(titles_ref)
    out = {name: [] for name in PARSED.names}
    for line in batch["text"]:
        for row in source.parse(line, titles, seed):
            if isinstance(row, str):
                row = {"drop_reason": row}
            for name in PARSED.names:
                out[name].append(row.get(name, [] if name == "history_text" else None))
    return pa.table(out, schema=PARSED)


def bucket_of(user_ids: pd.Series, n_buckets: int) -> np.ndarray:
    """Stable user -> bucket (crc32, independent of PYTHONHASHSEED and of Ray's partitioning)."""
    return np.fromiter((zlib.crc32(u.encode()) % n_buckets if isinstance(u, str) else 0 for u in user_ids),
                       dtype=np.int64, count=len(user_ids))


def item_partials(df: pd.DataFrame) -> pd.DataFrame:
    """Per item in `df`: count, earliest ts and the text of the earliest row that has one."""
    g = df.groupby("item_id", sort=True)
    with_text = df[df["item_text"].notna()].sort_values(["item_id", "ts", "item_text"], kind="stable")
    first_text = with_text.drop_duplicates("item_id").set_index("item_id")
    part = pd.DataFrame({"n": g.size()})
    part["ts"] = first_text["ts"].reindex(part.index).fillna(-1).astype(np.int64)
    part["text"] = first_text["item_text"].reindex(part.index)
    return part.reset_index().rename(columns={"item_id": "key"}).assign(kind="item")


PARTIALS = pa.schema([("kind", pa.string()), ("key", pa.string()), ("n", pa.int64()), ("ts", pa.int64()),
                      ("text", pa.string())])


def bucket_and_dedup(group: pd.DataFrame, tmp_dir: str, do_dedup: bool) -> pa.Table:
    """Ray Data map_groups over one bucket: write its good rows de-duplicated; return partials."""
    bucket = int(group["bucket"].iloc[0])
    bad = group["drop_reason"].notna()
    drops = Counter(group.loc[bad, "drop_reason"])
    good = group[~bad].drop(columns=["drop_reason", "bucket"])
    if do_dedup:
        good, n = dedup(good)
        drops["duplicate_user_item_ts"] += n
    if len(good):
        write_parquet_atomic(pa.Table.from_pandas(good, schema=PARSED.remove(6), preserve_index=False),
                             Path(tmp_dir) / shard_name(bucket))
    reasons = pd.DataFrame({"key": list(drops), "n": list(drops.values()), "kind": "drop", "ts": -1, "text": None})
    # users never span buckets, so per-bucket distinct counts add up to the global count
    users = pd.DataFrame({"key": [""], "n": [good["user_id"].nunique()], "kind": "users", "ts": -1, "text": None})
    parts = pd.concat([p for p in (item_partials(good), reasons, users) if len(p)])
    return pa.Table.from_pandas(parts[PARTIALS.names], schema=PARTIALS, preserve_index=False)


class ItemTable:
    """Driver-side reduction of item partials: counts and one deterministic text per item."""

    def __init__(self) -> None:
        self.count: Counter = Counter()
        self.text: dict[str, tuple[int, str]] = {}
        self.drops: Counter = Counter()
        self.users = 0

    def add(self, part: pd.DataFrame) -> None:
        for kind, key, n, ts, text in part[["kind", "key", "n", "ts", "text"]].itertuples(index=False):
            if kind == "drop":
                self.drops[key] += int(n)
                continue
            if kind == "users":
                self.users += int(n)
                continue
            self.count[key] += int(n)
            if isinstance(text, str) and (key not in self.text or (ts, text) < self.text[key]):
                self.text[key] = (int(ts), text)

    def decide(self, min_count: int, missing_title: str, titles: dict[str, str] | None = None):
        """(kept item -> text, dropped item -> reason, number of kept items that fell back to their id)."""
        kept, reason, fallback = {}, {}, 0
        for item, n in self.count.items():
            text = (titles or {}).get(item) or self.text.get(item, (0, None))[1]
            if n < min_count:
                reason[item] = "item_min_interactions"
            elif text is None and missing_title == "drop":
                reason[item] = "item_without_title"
            else:
                fallback += text is None
                kept[item] = text if text is not None else item
        return kept, reason, fallback


def finalize_bucket(row: dict, tmp_dir: str, out_dir: str, item_text_ref, item_reason_ref, prep: dict) -> dict:
    """Ray Data map over bucket ids: filter, cap and split one bucket; write its final shard."""
    bucket = int(row["bucket"])
    src = Path(tmp_dir) / shard_name(bucket)
    if not src.exists():
        return {"bucket": bucket, "stats": json.dumps({"rows": 0, "dropped": {}})}
    df = pq.read_table(src).to_pandas()
    table, dropped = finalize_shard(df, ray.get(item_text_ref), ray.get(item_reason_ref), Preprocessing(**prep))
    return _write_final(bucket, table, dropped, out_dir)


def _write_final(shard: int, table: pa.Table, dropped: Counter, out_dir: str) -> dict:
    if table.num_rows:
        write_parquet_atomic(table, Path(out_dir) / shard_name(shard))
    return {"bucket": shard, "stats": json.dumps({"rows": table.num_rows, "dropped": dict(dropped)})}


def synthetic_counts(row: dict, seed: int, shard_users: list[int], cat_ref, task: str, floor: int,
                     mean: float, history_len: int, population: dict | None) -> dict:
    """Pass 2 of the synthetic path: item counts of one generated shard."""
    s = int(row["id"])
    rows, _ = generate_shard(seed, s, shard_users[s], shard_users[s + 1] - shard_users[s], ray.get(cat_ref), task,
                             floor, mean, history_len, Population(**population) if population else None)
    counts = rows["item_id"].value_counts()
    return {"id": s, "counts": json.dumps(dict(zip(counts.index, counts.tolist()))), "rows": len(rows)}


def synthetic_finalize(row: dict, seed: int, shard_users: list[int], cat_ref, task: str, floor: int,
                       mean: float, history_len: int, population: dict | None, out_dir: str, item_text_ref,
                       item_reason_ref, prep: dict) -> dict:
    """Pass 3 of the synthetic path: regenerate the shard, then filter, split and write it."""
    s = int(row["id"])
    cat: Catalogue = ray.get(cat_ref)
    rows, latents = generate_shard(seed, s, shard_users[s], shard_users[s + 1] - shard_users[s], cat, task,
                                   floor, mean, history_len, Population(**population) if population else None)
    latent_dir = Path(out_dir).parent / "latents"
    write_parquet_atomic(pa.Table.from_pandas(latents.assign(latent=[np.asarray(v) for v in latents["latent"]]),
                                              preserve_index=False), latent_dir / f"users-{s:05d}.parquet")
    table, dropped = finalize_shard(rows, ray.get(item_text_ref), ray.get(item_reason_ref), Preprocessing(**prep))
    return _write_final(s, table, dropped, out_dir)


def prep_dict(prep: Preprocessing) -> dict:
    return asdict(prep)


def n_buckets_for(rows: int, rows_per_shard: int) -> int:
    return max(1, math.ceil(rows / rows_per_shard))
