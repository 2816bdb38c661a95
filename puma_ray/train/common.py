"""Training pieces shared by the prompt and adapter loops (row ownership, step counts, data parts); no Ray.

Row ownership: user u's soft prompt lives on worker crc32(u) % world, and that worker
sees all of u's interactions, so prompt rows never need gradient communication. For
1M users at d = 3072 the table is 1M x 3072 x 4 B = 12.3 GB of fp32 weights plus
24.6 GB of AdamW moments (36.9 GB); split over W workers each holds 36.9/W GB (4.6 GB
on 8 workers; at d = 2048: 24.6/W GB). Only the small shared parts (rating MLP,
adapter) go through DeepSpeed ZeRO and its gradient all-reduce.
"""

from __future__ import annotations

import math
import zlib
from typing import Callable, Iterable, Iterator

import numpy as np
import pandas as pd



def owner(user_id: str, world: int) -> int:
    """The worker that owns a user's prompt row (stable across runs and processes)."""
    return zlib.crc32(user_id.encode()) % world


def cycled(make_iter: Callable[[], Iterable], steps: int) -> Iterator[tuple[object, bool]]:
    """Exactly `steps` items, restarting the iterable when it runs out; yields (item, first_pass).

    Every rank must take the same number of steps (uneven counts hang ZeRO collectives,
    ray#66085); ranks with fewer rows repeat theirs, and `first_pass` tells evaluation
    which batches to count.
    """
    done, first = 0, True
    while done < steps:
        empty = True
        for item in make_iter():
            empty = False
            yield item, first
            done += 1
            if done == steps:
                return
        if empty:  # a rank without rows still takes its steps, with None, to keep collectives in step
            for _ in range(steps - done):
                yield None, False
            return
        first = False


def steps_for(rows_per_rank: list[int], batch_size: int) -> int:
    """Steps every rank takes: enough for the rank with the most rows."""
    return max(1, math.ceil(max(rows_per_rank) / batch_size))


def epochs_for(epochs: int, min_steps: int, steps_per_epoch: int) -> int:
    """`epochs`, raised so that the run takes at least `min_steps` optimizer steps (small selections converge)."""
    return max(epochs, -(-min_steps // steps_per_epoch))


def rows_per_rank(users: pd.DataFrame, column: str, world: int) -> list[int]:
    """Rows each rank will see, from users.parquet counts (no pass over the interactions)."""
    ranks = np.fromiter((owner(u, world) for u in users["user_id"]), dtype=np.int64, count=len(users))
    return np.bincount(ranks, weights=users[column].to_numpy(), minlength=world).astype(int).tolist()


def tag_parts(batch: pd.DataFrame, world: int, train_part: str | None = None) -> pd.DataFrame:
    """Ray Data map_batches: each train/valid row with a `part` column naming the dataset it belongs to.

    `{split}_r{rank}` for the rank that owns the row's user; with `train_part`, every train row goes
    to that one part instead (the adapter's train rows are split by Ray Train, not by owner).
    Rows of other splits are dropped.
    """
    batch = batch[batch["split"].isin(["train", "valid"])]
    codes, users = pd.factorize(batch["user_id"])  # one crc32 per user of the batch, not one per row
    ranks = np.fromiter((owner(u, world) for u in users), dtype=np.int64, count=len(users))
    names = np.array([train_part or f"train_r{r}" for r in range(world)] + [f"valid_r{r}" for r in range(world)],
                     dtype=object)
    part = names[(batch["split"] == "valid").to_numpy() * world + ranks[codes]]
    return batch.drop(columns=["split"]).assign(part=part)


def read_users(path: str) -> list[str]:
    """The user ids of a users file (a selection's selected.parquet or a dataset's users.parquet), in its order:
    the row order of the adapter's source prompts, read the same way by the stage and by every worker."""
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=["user_id"]).column(0).to_pylist()
