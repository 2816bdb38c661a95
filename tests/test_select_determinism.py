"""Every selection strategy gives the same users for the same seed, run through the stage twice on a store
large enough that Ray Data splits its work (3,000 users in 6 shards): issue 46 found `ffn` choosing sets with
26 users in common, its features written back in whatever order the actors finished."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from puma_ray.config import DataConfig, ModelsConfig, SelectConfig
from puma_ray.core.hf import describe_model
from puma_ray.select.strategies import STRATEGIES
from puma_ray.stages.data import run_data
from puma_ray.stages.models import run_models
from puma_ray.stages.select import run_select
from puma_ray.store.prompt_store import finalize, write_shard

pytestmark = pytest.mark.ray
USERS, SHARDS = 3000, 6


@pytest.fixture(scope="module")
def big_store(ray_local, tmp_path_factory):
    """3,000 synthetic users, a tiny llama (no pretraining), seeded random prompts in 6 shards, seeded losses."""
    root = tmp_path_factory.mktemp("select3000")
    run_data(DataConfig(source="synthetic", out=str(root / "data"), users=USERS, items=200, seed=11))
    model = run_models(ModelsConfig(family="llama", data=str(root / "data"), pretrain_steps=0, out=str(root / "m")))
    desc = describe_model(model["path"])
    users = sorted(pq.read_table(root / "data" / "users.parquet").column("user_id").to_pylist())
    rng = np.random.default_rng(0)
    prompts = rng.uniform(-0.1, 0.1, (len(users), 1, desc["hidden_size"])).astype(np.float32)
    shards = []
    for i, chunk in enumerate(np.array_split(np.arange(len(users)), SHARDS)):
        shards.append(write_shard(root / "store", i, [users[j] for j in chunk], prompts[chunk])[0])
    finalize(root / "store", task="rating", prompt_len=1, dim=desc["hidden_size"], model=desc, lineage=[],
             dataset_fingerprint=None, shards=shards, quarantined=[])
    (root / "losses").mkdir()
    pd.DataFrame({"user_id": users, "loss": rng.gamma(2.0, 0.5, len(users))}).to_parquet(
        root / "losses" / "per_user.parquet")
    return root


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_strategy_selects_the_same_users_for_the_same_seed(big_store, tmp_path, strategy):
    root = big_store
    picked = []
    for run in ("a", "b"):
        run_select(SelectConfig(data=str(root / "data"), prompts=str(root / "store"), out=str(tmp_path / run),
                                strategy=strategy, budget=250, clusters=5, seed=7, batch_size=256, batch_rows=500,
                                losses=str(root / "losses"), workers=2))
        picked.append(sorted(pq.read_table(tmp_path / run / "selected.parquet").column("user_id").to_pylist()))
    assert len(picked[0]) == 250 and picked[0] == picked[1]


def test_ffn_features_come_back_in_the_stores_order_every_time(big_store, tmp_path):
    """What K-means reads: one feature file per store shard, rows in the store's order. Before the fix Ray Data's
    write kept no order (measured: 2 runs in 5 came back shuffled), so the same seed clustered other users."""
    from puma_ray.stages.select import eligible_users, ffn_features
    from puma_ray.store.prompt_store import store_user_ids, verify

    root = big_store
    cfg = SelectConfig(data=str(root / "data"), prompts=str(root / "store"), out=str(tmp_path / "x"), strategy="ffn",
                       budget=250, workers=2)
    store = verify(cfg.prompts)
    users = eligible_users(cfg.data, cfg.prompts, store)
    want = list(store_user_ids(cfg.prompts))
    for run in range(3):
        files = ffn_features(cfg, store, users, tmp_path / str(run))
        got = [u for f in files.paths for u in pq.read_table(f, columns=["user_id"]).column("user_id").to_pylist()]
        assert got == want, f"run {run}: FFN features came back in another order"
