"""`puma-ray coldstart`: prompts for users a store lacks, from their nearest users' prompts."""

import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from puma_ray.config import ColdstartConfig
from puma_ray.core.coldstart import blend, interaction_matrix, nearest
from puma_ray.data.schema import copy_atomic, shard_paths
from puma_ray.errors import PumaError
from puma_ray.stages.coldstart import USERS_FILE, run_coldstart
from puma_ray.store.prompt_store import (finalize, iter_prompts, load_prompts, read_head, read_manifest, verify,
                                         write_shard)


def test_neighbours_are_the_most_similar_users_ties_by_position_and_none_without_overlap():
    # users 0-3 warm, 4-5 cold; items 0-4
    pairs = [(0, 0), (0, 1), (1, 0), (2, 2), (3, 2), (3, 3), (4, 0), (4, 1), (4, 2), (5, 4), (0, 0)]
    x = interaction_matrix(*map(np.array, zip(*pairs)), 6, 5)
    found = nearest(x[4:], x[:4], k=3, chunk=1)
    # cold 4 = {0,1,2}: user 0 {0,1} cos 2/sqrt(6); users 1 {0} and 2 {2} tie at 1/sqrt(3); user 3 {2,3} 1/sqrt(6)
    assert found.index[0].tolist() == [0, 1, 2]
    np.testing.assert_allclose(found.weight[0], [2 / math.sqrt(6), 1 / math.sqrt(3), 1 / math.sqrt(3)], rtol=1e-6)
    assert found.index[1].tolist() == [-1, -1, -1] and found.found.tolist() == [True, False]
    prompts = np.arange(12, dtype=np.float32).reshape(4, 1, 3)  # warm prompts; load all: positions = identity
    mean = np.full((1, 3), -1.0, dtype=np.float32)
    out = blend(found, prompts, np.arange(4), mean)
    w = found.weight[0].astype(np.float64)
    np.testing.assert_allclose(out[0, 0], (w[:, None] * prompts[:3, 0]).sum(0) / w.sum(), rtol=1e-6)
    np.testing.assert_array_equal(out[1], mean)


def drop_users(src: Path, out: Path, n: int) -> list[str]:
    """A copy of store `src` without its last `n` users (head kept); returns the dropped ids."""
    users, prompts = zip(*[(u, x[i]) for ids, x in iter_prompts(src) for i, u in enumerate(ids)])
    keep = len(users) - n
    m = read_manifest(src)
    info, bad = write_shard(out, 0, list(users[:keep]), np.stack(prompts[:keep]))
    path, fields = read_head(src)
    copy_atomic(path, out / "head.safetensors")
    finalize(out, task=m["task"], prompt_len=m["prompt_len"], dim=m["dim"], model=m["model"], lineage=m["lineage"],
             dataset_fingerprint=m.get("dataset_fingerprint"), shards=[info], quarantined=bad,
             head={"weights": "head.safetensors", **fields})
    return list(users[keep:])


def items_by_user(data: Path) -> dict[str, set[str]]:
    rows = [pq.read_table(p, columns=["user_id", "item_id"], filters=[("split", "==", "train")]).to_pylist()
            for p in shard_paths(data)]
    out: dict[str, set[str]] = {}
    for r in (r for part in rows for r in part):
        out.setdefault(r["user_id"], set()).add(r["item_id"])
    return out


@pytest.mark.ray
def test_cold_users_get_their_neighbours_weighted_prompt_deterministically(workspace, tmp_path):
    cold = drop_users(workspace / "src", tmp_path / "warm", 10)
    cfg = ColdstartConfig(data=str(workspace / "data"), prompts=str(tmp_path / "warm"), out=str(tmp_path / "a"),
                          neighbours=5, chunk_users=3)
    summary = run_coldstart(cfg)
    m, src = verify(tmp_path / "a"), read_manifest(workspace / "src")
    assert summary["cold_users"] == 10 and m["num_users"] == src["num_users"]
    step = m["lineage"][-1]
    assert step["step"] == "coldstart" and step["cold_users"] == 10 and step["neighbours"] == 5
    listed = pq.read_table(tmp_path / "a" / USERS_FILE).to_pandas()
    assert sorted(listed["user_id"]) == sorted(cold)
    assert (listed["made_from"] == "neighbours").sum() == summary["from_neighbours"] == 10
    # the store's own prompts are unchanged
    warm = [u for ids, _ in iter_prompts(tmp_path / "warm") for u in ids]
    np.testing.assert_array_equal(load_prompts(tmp_path / "a", warm), load_prompts(tmp_path / "warm", warm))
    # cold users' prompts, computed here from the raw interactions with Python sets (where the 5th and 6th
    # nearest are not tied: a tie there may be broken by float rounding)
    items, checked = items_by_user(workspace / "data"), 0
    for user in cold:
        mine = items.get(user, set())
        ranked = sorted(((-len(mine & items[w]) / math.sqrt(len(mine) * len(items[w])), i)
                         for i, w in enumerate(warm) if mine & items.get(w, set())))
        if len(ranked) > 5 and ranked[5][0] - ranked[4][0] < 1e-6:
            continue
        sims = ranked[:5]
        x = load_prompts(tmp_path / "warm", [warm[i] for _, i in sims]).astype(np.float64)
        w = -np.array([s for s, _ in sims])
        want = (w[:, None, None] * x).sum(0) / w.sum()
        np.testing.assert_allclose(load_prompts(tmp_path / "a", [user])[0], want, rtol=1e-5, atol=1e-6)
        checked += 1
    assert checked >= 3
    # the same inputs give the same prompts
    run_coldstart(ColdstartConfig(**{**cfg.to_dict(), "out": str(tmp_path / "b")}))
    np.testing.assert_array_equal(load_prompts(tmp_path / "a", cold), load_prompts(tmp_path / "b", cold))


def test_a_store_without_head_or_another_kind_of_out_is_refused_before_out_is_touched(workspace, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(PumaError, match="not a prompt store"):
        run_coldstart(ColdstartConfig(data=str(workspace / "data"), prompts=str(workspace / "src"),
                                      out=str(tmp_path / "out")))
    m = read_manifest(workspace / "src")
    info, _ = write_shard(tmp_path / "headless", 0, ["u"], np.zeros((1, m["prompt_len"], m["dim"])))
    finalize(tmp_path / "headless", task=m["task"], prompt_len=m["prompt_len"], dim=m["dim"], model=m["model"],
             lineage=[], dataset_fingerprint=None, shards=[info], quarantined=[])
    with pytest.raises(PumaError, match="no task head"):
        run_coldstart(ColdstartConfig(data=str(workspace / "data"), prompts=str(tmp_path / "headless"),
                                      out=str(tmp_path / "fresh")))
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"] and not (tmp_path / "fresh").exists()
