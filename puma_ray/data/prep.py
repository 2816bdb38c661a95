"""Paper preprocessing on one shard of complete users (pure pandas, no Ray).

Every shard holds all rows of its users, so per-user steps (de-duplication, the
minimum-interactions filter, the most-recent cap and the chronological split) are
exact. The item filter needs global counts, which the caller computes first and
passes in as `item_text` (the kept items and their text). Every dropped row is
counted under a reason; nothing disappears silently.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from puma_ray.data.schema import INTERACTIONS

SORT_KEYS = ["user_id", "ts", "item_id", "label"]


@dataclass(frozen=True)
class Preprocessing:
    """Resolved preprocessing options (the DataConfig fields, with task defaults applied)."""

    min_item_interactions: int
    min_user_interactions: int
    max_user_interactions: int
    valid_fraction: float
    test_fraction: float
    dedup: bool


def dedup(df: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Drop repeated (user_id, item_id, ts) rows, keeping the first in sort order."""
    df = df.sort_values(SORT_KEYS, kind="stable")
    keep = ~df.duplicated(["user_id", "item_id", "ts"], keep="first")
    return df[keep], int((~keep).sum())


def split_labels(n: np.ndarray, valid_fraction: float, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-user counts of valid and test rows; at least one train row always remains."""
    n_test = np.floor(n * test_fraction + 0.5).astype(np.int64)
    n_valid = np.floor(n * valid_fraction + 0.5).astype(np.int64)
    n_test = np.minimum(n_test, np.maximum(n - 1, 0))
    n_valid = np.minimum(n_valid, np.maximum(n - 1 - n_test, 0))
    return n_valid, n_test


def finalize_shard(df: pd.DataFrame, item_text: dict[str, str], item_reason: dict[str, str],
                   prep: Preprocessing) -> tuple[pa.Table, Counter]:
    """Filter, cap and split the complete users in `df`; returns (canonical table, dropped rows by reason).

    `df` has user_id, item_id, label, ts and history_text; `item_text` maps every kept item to
    its text; rows of other items are dropped under `item_reason[item]`.
    """
    dropped: Counter = Counter()
    if prep.dedup:
        df, n = dedup(df)
        dropped["duplicate_user_item_ts"] += n
    kept_item = df["item_id"].map(item_text).notna()
    for reason, n in df.loc[~kept_item, "item_id"].map(item_reason).fillna("item_min_interactions") \
            .value_counts().items():
        dropped[reason] += int(n)
    df = df[kept_item]
    counts = df.groupby("user_id")["item_id"].transform("size")
    few = counts < prep.min_user_interactions
    dropped["user_min_interactions"] += int(few.sum())
    df = df[~few].sort_values(SORT_KEYS, kind="stable")
    from_end = df.groupby("user_id").cumcount(ascending=False).to_numpy()
    if prep.max_user_interactions:
        over = from_end >= prep.max_user_interactions
        dropped["user_cap_most_recent"] += int(over.sum())
        df, from_end = df[~over], from_end[~over]
    n = df.groupby("user_id")["item_id"].transform("size").to_numpy()
    n_valid, n_test = split_labels(n, prep.valid_fraction, prep.test_fraction)
    split = np.where(from_end < n_test, "test", np.where(from_end < n_test + n_valid, "valid", "train"))
    out = pd.DataFrame({
        "user_id": df["user_id"].to_numpy(), "item_id": df["item_id"].to_numpy(),
        "item_text": df["item_id"].map(item_text).to_numpy(), "history_text": df["history_text"].to_numpy(),
        "label": df["label"].to_numpy(np.float32), "ts": df["ts"].to_numpy(np.int64), "split": split})
    return pa.Table.from_pandas(out, schema=INTERACTIONS, preserve_index=False), +dropped
