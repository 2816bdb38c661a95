"""Connecting to Ray the same way from a laptop, a `ray job submit` job and a test."""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager

import ray
import ray.data


LOCAL_TRAIN_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_TRAIN_METRICS_ENABLED": "0"}
"""Ray Train settings of a local runtime this process starts: no autoscaler ever drains its one node
(the watcher is an extra actor process per run) and no Prometheus scrapes its Train metrics; together
~3.5 s of every Ray Train run's start-up on 2 CPUs. A value the operator set wins; a cluster keeps Ray's."""


def init_ray(num_cpus: int | None = None, dashboard: bool = True) -> float:
    """Join the cluster named by RAY_ADDRESS (as `ray job submit` sets it), else start a local one
    (with LOCAL_TRAIN_ENV).

    Returns the seconds it took (0.0 when this process already runs Ray: a multi-stage run such
    as demo, bench or sweep starts Ray once and every stage joins it). The local dashboard
    (bound to 127.0.0.1) is on for training stages: without it Train V2 logs a warning every
    second. Stages without Ray Train start without it (about 0.7 GB less).
    """
    if ray.is_initialized():
        return 0.0
    t0 = time.perf_counter()
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], logging_level=logging.WARNING, log_to_driver=True)
    else:
        for key, value in LOCAL_TRAIN_ENV.items():
            os.environ.setdefault(key, value)
        ray.init(num_cpus=num_cpus, include_dashboard=dashboard, dashboard_host="127.0.0.1",
                 logging_level=logging.WARNING, log_to_driver=True)
    quiet_ray_data_console()
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = True
    return time.perf_counter() - t0


def quiet_ray_data_console() -> None:
    """Ray Data logs every dataset's plan at INFO on the console; keep that in its log file only.

    Call it in each process that runs datasets (the driver, Ray Train workers)."""
    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False


def read_columns(paths: list[str], columns: list[str]) -> ray.data.Dataset:
    """Parquet files read as a dataset of `columns` (Ray Data prunes the others at read time)."""
    return ray.data.read_parquet(paths).select_columns(columns)


def dataset_parts(tagged: ray.data.Dataset, names: list[str], cache: bool) -> dict[str, ray.data.Dataset]:
    """One dataset per name, the rows whose `part` column holds it.

    With `cache` the tagged rows are materialized once (object store, spilling to disk) and one task
    per block splits it into its parts, which become the parts' blocks: one read of the shards and one
    Ray Data execution serve every part (an execution per part cost ~0.5-1 s each on 2 CPUs, several
    seconds of every training run's start), and an epoch iterates blocks without re-running a filter.
    Rows never pass through the driver. Without it, every part streams from the files each time it
    is iterated.
    """
    from ray.data.expressions import col

    if not cache:
        return {n: tagged.filter(expr=col("part").is_in([n])).drop_columns(["part"]) for n in names}
    split = _split_block.options(num_returns=len(names))
    per_block = [split.remote(block, names) for block in tagged.materialize().to_arrow_refs()]
    per_block = [refs if len(names) > 1 else [refs] for refs in per_block]
    return {n: ray.data.from_arrow_refs([refs[i] for refs in per_block]) for i, n in enumerate(names)}


@ray.remote(num_cpus=1)
def _split_block(block, names: list[str]):
    """A block's rows per part (in `names` order), the `part` column dropped; one table per name.

    One CPU, like Ray Data's own tasks: at most one task per CPU, run by the worker processes the
    materialization left idle. (With a fraction, Ray started several new worker processes at once; in
    one demo run two of them hung while starting and the next Ray Train run waited 4 minutes for them.)"""
    import pyarrow.compute as pc

    parts = tuple(block.filter(pc.equal(block["part"], n)).drop_columns(["part"]) for n in names)
    return parts if len(names) > 1 else parts[0]


def split_is(*splits: str):
    """Ray Data predicate expression: the row's `split` is one of `splits`."""
    from ray.data.expressions import col

    return col("split").is_in(list(splits))


def actor_pool(size: int):
    """compute= for Ray Data actors (map_batches(concurrency=...) is deprecated since Ray 2.51)."""
    return ray.data.ActorPoolStrategy(size=size)


def actor_cpus(per_actor: float, actors: int) -> float:
    """CPUs each of `actors` Ray Data actors may reserve, leaving one CPU of the cluster free.

    Actors that reserve every CPU starve Ray Data's own read and shuffle tasks and the
    dataset hangs (ray-project/ray#44687); on small machines the actors get a fraction.
    """
    free = float(ray.cluster_resources().get("CPU", 1.0)) - 1.0
    if per_actor * actors <= free:
        return per_actor
    share = max(free / actors, 0.25 / actors) if free > 0 else 0.25 / actors
    logging.getLogger("puma_ray").warning(
        "%d actor(s) x %.2g CPU would leave Ray Data no CPU to read with; reserving %.2g CPU each",
        actors, per_actor, share)
    return share


@contextmanager
def sort_shuffle():
    """Ray Data shuffles (groupby, sort) inside the block use the sort-based strategy: no aggregator
    actors to start, which Ray 2.60's default hash shuffle needs (~3 s per small groupby on 2 CPUs).
    Used by `data`'s de-duplication (measured on 2 CPUs: a tiny fixture 8.6 -> 2.0 s, ml-100k
    9.6 -> 4.1 s, 3,000,000 ratings 69.1 -> 63.3 s with the strategy set for the whole run) and
    `evaluate`'s AUC. Not around joins: Ray Data then plans a hash join whose aggregator actors,
    beside a scoring actor pool, left a 2-CPU node with no CPU to finish on."""
    from ray.data.context import ShuffleStrategy

    ctx = ray.data.DataContext.get_current()
    before, ctx.shuffle_strategy = ctx.shuffle_strategy, ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    try:
        yield
    finally:
        ctx.shuffle_strategy = before
