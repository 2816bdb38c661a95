"""Prompt store contract: atomic shards with checksums, quarantine, streaming reads, model check."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from puma_ray.errors import PumaError
from puma_ray.store import prompt_store as ps

MODEL = {"name": "m", "family": "llama", "hidden_size": 4, "fingerprint": "abc123"}


def make_store(path, n=10, l=2, d=4, poison=()):
    rng = np.random.default_rng(0)
    prompts = rng.normal(size=(n, l, d)).astype(np.float32)
    for i in poison:
        prompts[i, 0, 0] = np.nan
    users = [f"u{i}" for i in range(n)]
    shards, bad = [], []
    for k, lo in enumerate(range(0, n, 4)):
        info, q = ps.write_shard(path, k, users[lo:lo + 4], prompts[lo:lo + 4])
        shards.append(info)
        bad += q
    manifest = ps.finalize(path, task="rating", prompt_len=l, dim=d, model=MODEL, lineage=[{"step": "trained"}],
                           dataset_fingerprint="data1", shards=shards, quarantined=bad)
    return users, prompts, manifest


def test_round_trip_schema_and_streaming(tmp_path):
    users, prompts, manifest = make_store(tmp_path)
    assert manifest["num_users"] == 10 and len(manifest["shards"]) == 3
    schema = pq.read_schema(tmp_path / "part-00000.parquet")
    assert schema.field("prompt").type == pa.list_(pa.float32(), 8)
    got = [(u, p) for us, ps_ in ps.iter_prompts(tmp_path, batch_rows=3) for u, p in zip(us, ps_)]
    assert [u for u, _ in got] == users
    np.testing.assert_array_equal(np.stack([p for _, p in got]), prompts)
    np.testing.assert_array_equal(ps.load_prompts(tmp_path, ["u7", "u2"]), prompts[[7, 2]])
    assert ps.verify(tmp_path)["dataset_fingerprint"] == "data1"


def test_non_finite_prompts_are_quarantined_not_stored(tmp_path):
    users, _, manifest = make_store(tmp_path, poison=(1, 6))
    assert manifest["num_users"] == 8 and manifest["quarantined"] == 2
    assert pq.read_table(tmp_path / "quarantine.parquet")["user_id"].to_pylist() == ["u1", "u6"]
    stored = [u for us, _ in ps.iter_prompts(tmp_path) for u in us]
    assert "u1" not in stored and len(stored) == 8
    with pytest.raises(PumaError, match="lacks 1 of the 2"):
        ps.load_prompts(tmp_path, ["u0", "u1"])


def test_incomplete_or_tampered_store_is_refused(tmp_path):
    make_store(tmp_path)
    (tmp_path / "part-00001.parquet").write_bytes(b"garbage")
    with pytest.raises(PumaError, match="checksum"):
        ps.verify(tmp_path)
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(PumaError, match="not a complete prompt store"):
        ps.read_manifest(tmp_path)


def test_prompts_of_another_model_are_refused(tmp_path):
    _, _, manifest = make_store(tmp_path)
    ps.check_model(manifest, "abc123", tmp_path)
    with pytest.raises(PumaError, match="migrate it with an adapter"):
        ps.check_model(manifest, "other", tmp_path)


def write_generation(path, generation, scale, finish=True):
    """A store generation: 6 users' prompts (all = scale, user u3 poisoned), a head file, then (finish) the manifest."""
    prompts = np.full((6, 1, 4), scale, dtype=np.float32)
    prompts[3, 0, 0] = np.nan
    users = [f"u{i}" for i in range(6)]
    shards, bad = [], []
    for k in (0, 1):
        info, q = ps.write_shard(path, k, users[3 * k:3 * k + 3], prompts[3 * k:3 * k + 3], generation)
        shards.append(info)
        bad += q
    weights = ps.generation_name("head.safetensors", generation)
    (path / weights).write_bytes(f"head {scale}".encode())
    if finish:
        ps.finalize(path, task="rating", prompt_len=1, dim=4, model=MODEL, lineage=[{"step": "trained"}],
                    dataset_fingerprint="data1", shards=shards, quarantined=bad, generation=generation,
                    head={"weights": weights, "task": "rating", "lam": 0.2})


def store_state(path):
    ps.verify(path)
    values = {float(p.max()) for _, prompts in ps.iter_prompts(path) for p in prompts}
    head_path, head = ps.read_head(path)
    return values, head_path.read_bytes(), head["lam"], ps.read_quarantine(path)


def test_a_store_rewritten_in_place_is_the_old_one_until_the_new_manifest_lands(tmp_path):
    write_generation(tmp_path, "a1", 1.0)
    old = store_state(tmp_path)
    assert old == ({1.0}, b"head 1.0", 0.2, ["u3"])
    write_generation(tmp_path, "b2", 2.0, finish=False)  # a run killed after writing every new file
    assert store_state(tmp_path) == old
    write_generation(tmp_path, "c3", 3.0)  # the next complete run swaps in and clears both earlier generations
    assert store_state(tmp_path) == ({3.0}, b"head 3.0", 0.2, ["u3"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "head-c3.safetensors", "manifest.json", "part-00000-c3.parquet", "part-00001-c3.parquet",
        "quarantine-c3.parquet"]


def test_stores_without_generations_keep_their_plain_head_files(tmp_path):
    make_store(tmp_path)
    assert ps.read_head(tmp_path) is None  # no head written: e.g. a store built by hand
    (tmp_path / "head.safetensors").write_bytes(b"w")
    (tmp_path / "head.json").write_text('{"task": "rating", "lam": 0.5}')
    path, head = ps.read_head(tmp_path)
    assert path.name == "head.safetensors" and head["lam"] == 0.5
