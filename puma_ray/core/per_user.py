"""Per-user metrics of scored rows, by hash buckets of users: memory is one bucket, whatever the rows.

`evaluate` writes its scored rows as Parquet files in any order. Two passes make them per-user rows:
`split_into_buckets` writes each file's rows into `buckets` files by a stable hash of the user (every
row of a user lands in the same bucket, whichever file it came from), then `fold_bucket` reads one
bucket's files and writes one row per (split, user) with `metrics.user_row`. Each call is a plain
function on files (the stage runs them as Ray tasks): no Ray, no torch, testable alone.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from puma_ray.core.metrics import user_row

GROUP_COLUMNS = ("split", "user_id", "finite", "pred", "label", "loss")
"""Columns of the scored rows the per-user metrics read."""


def user_buckets(users: pa.Array | pa.ChunkedArray, buckets: int) -> np.ndarray:
    """Bucket of each row's user: crc32 of the user id modulo `buckets` (one crc32 per distinct user)."""
    codes = pc.dictionary_encode(users).combine_chunks() if isinstance(users, pa.ChunkedArray) \
        else pc.dictionary_encode(users)
    distinct = np.array([zlib.crc32(u.encode()) % buckets for u in codes.dictionary.to_pylist()], dtype=np.int64)
    return distinct[codes.indices.to_numpy(zero_copy_only=False)] if len(distinct) else np.zeros(0, np.int64)


def bucket_path(scratch: str | Path, bucket: int, part: int) -> Path:
    return Path(scratch) / f"b{bucket:05d}" / f"part-{part:05d}.parquet"


def split_into_buckets(src: str, buckets: int, scratch: str, part: int) -> int:
    """Rows of the Parquet file `src` -> scratch/b<bucket>/part-<part>.parquet for each bucket that has rows.
    Returns the rows read."""
    table = pq.read_table(src, columns=list(GROUP_COLUMNS))
    which = user_buckets(table.column("user_id"), buckets)
    order = np.argsort(which, kind="stable")
    table, which = table.take(pa.array(order)), which[order]
    starts = np.flatnonzero(np.r_[True, which[1:] != which[:-1]]) if len(which) else np.zeros(0, dtype=int)
    for a, b in zip(starts, np.r_[starts[1:], len(which)]):
        path = bucket_path(scratch, int(which[a]), part)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.slice(a, b - a), path)
    return table.num_rows


def user_groups(rows: pa.Table, task: str, chunk: int = 65536) -> Iterator[dict]:
    """Scored rows (in memory) -> per-user rows of metrics.user_row (plus split and user_id), `chunk` users a
    batch, in (split, user) order."""
    rows = rows.sort_by([("split", "ascending"), ("user_id", "ascending")])
    cols = {c: rows.column(c).to_numpy(zero_copy_only=False) for c in GROUP_COLUMNS}
    key = np.char.add(cols["split"].astype(str), np.char.add("\0", cols["user_id"].astype(str)))
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else np.zeros(0, dtype=int)
    bounds = np.r_[starts, len(key)]
    for first in range(0, len(starts), chunk):
        users = [one_user(task, {k: v[a:b] for k, v in cols.items()})
                 for a, b in zip(bounds[first:first + chunk], bounds[first + 1:first + chunk + 1])]
        yield {k: np.concatenate([u[k] for u in users]) for k in users[0]}


def one_user(task: str, g: dict) -> dict:
    """One (split, user)'s scored rows (column arrays) -> its per-user row, as length-1 arrays."""
    row = user_row(task, g["finite"], g["pred"], g["label"], g["loss"])
    return {"split": g["split"][:1], "user_id": g["user_id"][:1], **{k: np.array([v]) for k, v in row.items()}}


def fold_bucket(files: list[str], task: str, out: str) -> int:
    """One bucket's row files -> `out`, a Parquet file with one per-user row per (split, user). Returns
    the per-user rows written."""
    rows = pa.concat_tables([pq.read_table(f) for f in files])
    parts = [pa.table(batch) for batch in user_groups(rows, task)]
    if not parts:
        return 0
    table = pa.concat_tables(parts)
    pq.write_table(table, out)
    return table.num_rows
