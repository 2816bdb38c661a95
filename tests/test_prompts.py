"""`puma-ray prompts` on Ray Train with 2 CPU workers: learning, the floor, resume by run name, recovery from a killed worker, refusing foreign stores."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import kill_when, ray_processes

from puma_ray.config import DataConfig, ModelsConfig, PromptsConfig
from puma_ray.errors import PumaError
from puma_ray.stages.data import run_data
from puma_ray.stages.models import run_models
from puma_ray.stages.prompts import run_prompts
from puma_ray.store import prompt_store as ps

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def setup(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("prompts")
    run_data(DataConfig(source="synthetic", out=str(root / "data"), users=120, items=60, seed=5))
    model = run_models(ModelsConfig(family="llama", data=str(root / "data"), out=str(root / "llama"),
                                    pretrain_steps=100))
    return root, model


def cfg(root, out, **kw):
    base = dict(data=str(root / "data"), model=str(root / "llama"), out=str(root / out), workers=2, epochs=2,
                lr=0.01, batch_size=32)
    return PromptsConfig(**{**base, **kw})


def global_mean_rmse(data_dir) -> float:
    df = pd.read_parquet(data_dir / "interactions")
    mean = df.loc[df["split"] == "train", "label"].mean()
    valid = df.loc[df["split"] == "valid", "label"]
    return float(np.sqrt(((valid - mean) ** 2).mean()))


@pytest.fixture(scope="module")
def zero2(setup):
    root, _ = setup
    return run_prompts(cfg(root, "zero2", epochs=4))


def test_two_workers_learn_and_write_a_complete_store(setup, zero2):
    root, model = setup
    losses = [c["train_loss"] for c in zero2["curve"]]
    assert losses[-1] < losses[0]
    assert np.abs(np.concatenate([p for _, p in ps.iter_prompts(root / "zero2")])).max() > 0.1  # they trained
    assert zero2["valid_rmse"] < global_mean_rmse(root / "data")
    manifest = ps.verify(root / "zero2")
    assert manifest["num_users"] == 120 and manifest["quarantined"] == 0
    assert manifest["model"]["fingerprint"] == model["fingerprint"] and manifest["dim"] == 64
    assert manifest["lineage"][0]["step"] == "trained" and manifest["lineage"][0]["best_epoch"] == zero2["best_epoch"]
    assert manifest["lineage"][0]["lr"] == zero2["lr"] == 0.01  # the rate it trained at is recorded
    assert len(manifest["shards"]) == 2  # one per worker: each owns its users' rows
    assert ps.read_head(root / "zero2")[0].is_file() and ps.read_head(root / "zero2")[1]["task"] == "rating"
    cost = json.loads((root / "zero2" / "costs.jsonl").read_text().splitlines()[-1])
    assert cost["stage"] == "prompts" and cost["workers"] == 2 and cost["samples"] > 0 and cost["tokens"] > 0


def test_ray_train_on_the_local_runtime_starts_no_preemption_watcher(setup, zero2):
    """The session's Ray is a local runtime init_ray started: no node of it is ever drained, so its Ray Train runs
    start no preemption watcher actor (LOCAL_TRAIN_ENV; a cluster keeps it: test_jobs). The state API is asked at
    this session's own address: with no address it refuses to guess when another Ray runs on the machine."""
    import ray
    from ray.util.state import list_actors

    if os.environ.get("RAY_ADDRESS") and os.environ.get("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER") != "0":
        pytest.skip("the session joined a cluster (RAY_ADDRESS): Ray Train keeps its preemption watcher there")
    address = ray.get_runtime_context().gcs_address
    classes = {a.class_name for a in list_actors(address=address, limit=10000, detail=False)}
    assert "RayTrainWorker" in classes and "PreemptionWatcher" not in classes, classes


def test_rerunning_a_finished_run_resumes_instead_of_training_again(setup, zero2):
    root, _ = setup
    checkpoints = sorted(p.name for p in (root / "zero2" / "_train").rglob("checkpoint_*"))
    again = run_prompts(cfg(root, "zero2", epochs=4))
    assert again["run_name"] == zero2["run_name"]
    assert again["valid_rmse"] == pytest.approx(zero2["valid_rmse"])
    # resumed after the last epoch: nothing new was trained or checkpointed
    assert sorted(p.name for p in (root / "zero2" / "_train").rglob("checkpoint_*")) == checkpoints


def test_resuming_with_another_world_size_is_refused_and_keeps_the_store(setup, zero2):
    root, _ = setup
    with pytest.raises(PumaError, match="trained with 2 worker.*--workers 2"):
        run_prompts(cfg(root, "zero2", epochs=4, workers=1))
    assert ps.verify(root / "zero2")["num_users"] == 120  # the finished store is untouched


def test_a_model_that_does_not_load_leaves_the_store_untouched(setup, zero2):
    root, _ = setup
    before = (root / "zero2" / "manifest.json").read_bytes()
    with pytest.raises(PumaError, match="cannot load the tokenizer of"):
        run_prompts(cfg(root, "zero2", model=str(root / "no-such-model")))
    assert (root / "zero2" / "manifest.json").read_bytes() == before


def test_a_worker_error_is_one_line_with_the_workers_own_message(setup, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    root, _ = setup
    # from outside: a model directory whose final norm has the wrong shape. The driver only reads the config,
    # tokenizer and embedding, so the fault surfaces inside the Ray Train workers when they load the weights.
    bad = tmp_path / "bad-llama"
    shutil.copytree(root / "llama", bad)
    weights = load_file(bad / "model.safetensors")
    name = next(k for k in weights if k.endswith("norm.weight") and "layers" not in k)
    weights[name] = weights[name][: weights[name].numel() // 2].clone()
    save_file(weights, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(PumaError) as err:
        run_prompts(cfg(root, "bad", model=str(bad), epochs=1))
    message = str(err.value)
    assert message.startswith("prompt training failed: rank ") and "\n" not in message
    assert "worker logs:" in message and ("size" in message.lower() or "shape" in message.lower()), message
    assert not (root / "bad" / "manifest.json").exists()


@pytest.mark.slow  # in CI: test_multinode.py kills a worker node under the same FailureConfig wiring, and
# test_a_rerun_killed_mid_training_leaves_the_old_store_whole resumes this loop from its checkpoint
def test_killed_worker_resumes_from_its_checkpoint(setup):
    root, _ = setup
    # from outside: once the first epoch's checkpoint exists, SIGKILL one Ray Train worker process
    watcher = kill_when(lambda: any((root / "killed" / "_train").rglob("checkpoint_*")),
                        lambda: ray_processes("RayTrainWorker")[:1])
    res = run_prompts(cfg(root, "killed", epochs=3, max_failures=1))
    watcher.join(timeout=5)
    assert watcher.killed, "no worker was killed"
    assert res["users"] == 120 and [c["epoch"] for c in res["curve"]] == [0, 1, 2]


def test_freeze_prompts_is_the_floor(setup, zero2):
    root, _ = setup
    res = run_prompts(cfg(root, "floor", freeze_prompts=True, epochs=3))
    prompts = np.concatenate([p for _, p in ps.iter_prompts(root / "floor")])
    assert np.abs(prompts).max() <= 0.1  # still the uniform(-0.1, 0.1) initialisation
    assert ps.read_manifest(root / "floor")["lineage"][0]["freeze_prompts"] is True
    assert res["users"] == 120
    # the LM runs over the training rows in the first epoch only; the head trains on the kept logits after it
    floor, full = (json.loads((root / d / "costs.jsonl").read_text().splitlines()[-1]) for d in ("floor", "zero2"))
    assert floor["samples"] > 0 and floor["tokens"] / floor["samples"] < 0.5 * full["tokens"] / full["samples"]
    # (its train loss need not fall: a fresh head starts about the train mean, issue 45)


def test_freeze_prompts_on_clicks_trains_nothing_and_scores_the_random_prompts(setup, tmp_path):
    """The click floor: frozen prompts under the click head (no weights) leave nothing to train; every epoch
    scores the same random prompts (the same valid AUC), and the store holds them (it used to fail on backward)."""
    root, _ = setup
    run_data(DataConfig(source="synthetic", task="click", out=str(tmp_path / "clicks"), users=40, items=30, seed=2))
    res = run_prompts(PromptsConfig(data=str(tmp_path / "clicks"), model=str(root / "llama"), out=str(tmp_path / "floor"),
                                    workers=2, epochs=2, freeze_prompts=True))
    assert [c["epoch"] for c in res["curve"]] == [0, 1] and res["users"] == 40
    assert res["curve"][0]["valid_auc"] == res["curve"][1]["valid_auc"] == res["valid_auc"]
    assert np.abs(np.concatenate([p for _, p in ps.iter_prompts(tmp_path / "floor")])).max() <= 0.1


def test_a_warm_start_begins_from_the_given_stores_prompts_and_head_and_keeps_them_when_tuning_only_hurts(setup, zero2):
    """--init-from: every worker starts from the store's prompts and its head (the start, scored first as a
    candidate like any epoch, has the store's own quality); a step that wrecks them (lr 5.0) is not kept: the
    store written is the start, exactly. The lineage continues the store's with the new step and its curve."""
    from safetensors.torch import load_file

    root, _ = setup
    res = run_prompts(cfg(root, "hurt", init_from=str(root / "zero2"), epochs=1, lr=5.0))
    old, new = ps.read_manifest(root / "zero2")["lineage"], ps.read_manifest(root / "hurt")["lineage"]
    assert new[:-1] == old and new[-1]["init_from"] == str((root / "zero2").resolve())
    step = new[-1]
    assert [c["epoch"] for c in step["curve"]] == [-1, 0]
    assert step["curve"][0]["valid_rmse"] == pytest.approx(zero2["valid_rmse"], abs=1e-4)  # the store's own quality
    assert step["curve"][1]["valid_rmse"] > step["curve"][0]["valid_rmse"] and res["best_epoch"] == step["best_epoch"] == -1
    assert res["valid_rmse"] == min(c["valid_rmse"] for c in step["curve"])
    users = [u for ids, _ in ps.iter_prompts(root / "zero2") for u in ids]
    np.testing.assert_allclose(ps.load_prompts(root / "hurt", users), ps.load_prompts(root / "zero2", users), atol=1e-6)
    (a, _), (b, _) = ps.read_head(root / "zero2"), ps.read_head(root / "hurt")
    for k, v in load_file(a).items():
        np.testing.assert_allclose(load_file(b)[k].numpy(), v.numpy(), atol=1e-6)


def test_store_of_another_model_is_refused(setup, zero2, tmp_path):
    root, _ = setup
    other = run_models(ModelsConfig(family="qwen2", data=str(root / "data"), out=str(tmp_path / "q"),
                                    pretrain_steps=0))
    with pytest.raises(PumaError, match="migrate it with an adapter"):
        run_prompts(cfg(root, "warm", model=other["path"], init_from=str(root / "zero2")))


def test_a_rerun_killed_mid_training_leaves_the_old_store_whole(setup, zero2, tmp_path):
    """SIGKILL of the `prompts` driver while it re-trains an existing store: the old store is still complete
    and unchanged; the next run finishes (resuming) and swaps in a new, complete one."""
    import shutil
    import subprocess

    from conftest import REPO, cli_in_ray, kill_at_first_checkpoint, warnings_of_ours

    root, _ = setup
    out = tmp_path / "store"
    shutil.copytree(root / "zero2", out, ignore=shutil.ignore_patterns("_train"))  # a store, no run to resume
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name.startswith(("part-", "quarantine", "head",
                                                                                    "manifest", "config"))}
    old = ps.verify(out)
    cmd, env = cli_in_ray(["prompts", "--data", str(root / "data"), "--model", str(root / "llama"), "--out", str(out),
                           "--workers", "2", "--epochs", "2", "--lr", "0.02"])
    kill_at_first_checkpoint(cmd, env, out)  # mid-training: an epoch's checkpoint exists, the store is not rewritten
    assert ps.verify(out) == old and len(before) >= 5
    assert all((out / name).read_bytes() == data for name, data in before.items())
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert not warnings_of_ours(done.stdout + done.stderr)  # no deprecated call of ours, no collective warnings
    new = ps.verify(out)
    assert new["shards"] != old["shards"] and ps.read_head(out)[1]["lam"] == 0.2
    assert not any((out / name).exists() for name in before if name not in ("manifest.json", "config.yaml"))
    assert "lr: 0.02" in (out / "config.yaml").read_text()  # the config of the store now there


def test_a_bfloat16_frozen_model_trains_and_scores_like_float32(setup, zero2, tmp_path):
    """dtype=bfloat16 (the AMX/GPU fast path) only rounds the frozen model's arithmetic: the same run in
    float32 (zero2) reaches the same validation RMSE within 2%, and evaluating the bf16-trained store
    in either dtype agrees within 1%."""
    from puma_ray.config import EvaluateConfig
    from puma_ray.stages.evaluate import run_evaluate

    root, _ = setup
    bf16 = run_prompts(cfg(root, "bf16", epochs=4, dtype="bfloat16"))
    assert bf16["curve"][-1]["train_loss"] < bf16["curve"][0]["train_loss"]
    assert bf16["lm_dtype"] == "bfloat16" and zero2["lm_dtype"] == "float32"
    assert bf16["valid_rmse"] == pytest.approx(zero2["valid_rmse"], rel=0.02)
    assert bf16["valid_rmse"] != zero2["valid_rmse"]  # it did run in another dtype
    evals = {d: run_evaluate(EvaluateConfig(data=str(root / "data"), model=str(root / "llama"),
                                            prompts=str(root / "bf16"), out=str(tmp_path / d), dtype=d))
             for d in ("bfloat16", "float32")}
    assert [evals[d]["lm_dtype"] for d in ("bfloat16", "float32")] == ["bfloat16", "float32"]
    scores = {d: e["rmse"] for d, e in evals.items()}
    assert scores["bfloat16"] == pytest.approx(scores["float32"], rel=0.01) and scores["bfloat16"] != scores["float32"]
    assert scores["float32"] == pytest.approx(bf16["valid_rmse"], rel=0.01)


def test_an_epoch_draws_each_batch_from_many_users_and_every_row_once(ray_local):
    import ray

    from puma_ray.train.epoch import epoch_batches

    rows = pd.DataFrame({"user_id": np.repeat([f"u{k:03d}" for k in range(100)], 30), "n": np.arange(3000)})
    # stored user by user, as the data stage writes them, in one-user blocks: Ray Data's shuffle buffer takes
    # whole blocks, so small blocks are where its size decides how many users a batch mixes
    shard = ray.data.from_pandas(rows).repartition(100).materialize()
    config = {"batch_size": 32, "shuffle_rows": 1024, "seed": 7}

    def users_per_batch(cfg, epoch):
        batches = list(epoch_batches(shard, SimpleNamespace(**cfg), epoch))  # the loop config's three fields
        assert sorted(np.concatenate([b["n"] for b in batches]).tolist()) == list(range(3000))  # each row once
        return np.mean([len(set(b["user_id"])) for b in batches]), [b["n"].tolist() for b in batches]

    mixed, order = users_per_batch(config, 0)
    assert mixed >= 20  # of 32 rows; ~34 users sit in the 1,024-row buffer
    assert users_per_batch({**config, "shuffle_rows": 128}, 0)[0] < mixed  # the old 4-batch buffer mixed less
    assert users_per_batch(config, 0)[1] == order and users_per_batch(config, 1)[1] != order  # seeded per epoch
    assert users_per_batch({**config, "shuffle_rows": 0}, 0)[0] <= 2  # stored order: one or two users a batch
