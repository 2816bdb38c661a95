"""evaluate's distributed aggregation against the same metrics computed from every scored row at once."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save_file

from puma_ray.config import DataConfig, EvaluateConfig, ModelsConfig
from puma_ray.core.hf import describe_model
from puma_ray.core.metrics import auc, uauc
from puma_ray.core.tasks import TASKS
from puma_ray.stages.data import run_data
from puma_ray.stages.evaluate import run_evaluate
from puma_ray.stages.models import run_models
from puma_ray.core.baselines import dataset_baselines
from puma_ray.data.schema import shard_paths
from puma_ray.store.prompt_store import finalize, write_shard


def random_store(root, task: str, template: str):
    """Synthetic `task` data (40 users), a tiny llama, random prompts for all but 3 users, one of them NaN."""
    run_data(DataConfig(source="synthetic", task=task, out=str(root / "data"), users=40, items=60, seed=5))
    model = run_models(ModelsConfig(family="llama", data=str(root / "data"), pretrain_steps=0, out=str(root / "m")))
    desc = describe_model(model["path"])
    users = sorted(pq.read_table(root / "data" / "users.parquet").column("user_id").to_pylist())[3:]
    prompts = np.random.default_rng(0).uniform(-0.1, 0.1, (len(users), 1, desc["hidden_size"])).astype(np.float32)
    prompts[0] = np.nan
    shard, quarantined = write_shard(root / "store", 0, users, prompts)
    torch.manual_seed(0)
    yes_minus_no = task == "click"
    save_file(TASKS[task].head(0.2, yes_minus_no).state_dict(), root / "store" / "head.safetensors")
    finalize(root / "store", task=task, prompt_len=1, dim=desc["hidden_size"], model=desc, lineage=[],
             dataset_fingerprint=None, shards=[shard], quarantined=quarantined,
             head={"weights": "head.safetensors", "task": task, "lam": 0.2, "template": template,
                   "yes_minus_no": yes_minus_no})
    return root, model["path"], users


@pytest.fixture(scope="module")
def click_store(ray_local, tmp_path_factory):
    return random_store(tmp_path_factory.mktemp("click"), "click", "click_mind")


@pytest.fixture(scope="module")
def rating_store(ray_local, tmp_path_factory):
    return random_store(tmp_path_factory.mktemp("rating"), "rating", "rating_amazon")


@pytest.mark.parametrize("one_task_rows", [0, 200_000], ids=["pipeline", "one-task"])
def test_click_metrics_from_groups_equal_metrics_over_all_rows(click_store, tmp_path, one_task_rows):
    root, model, users = click_store
    out = run_evaluate(EvaluateConfig(data=str(root / "data"), model=model, prompts=str(root / "store"),
                                      split=["valid", "test"], out=str(tmp_path / "ev"), workers=1,
                                      one_task_rows=one_task_rows))
    cost = json.loads((tmp_path / "ev" / "costs.jsonl").read_text().splitlines()[-1])
    assert cost["extra"]["path"] == ("one task" if one_task_rows else "pipeline")
    rows = pq.read_table(tmp_path / "ev" / "rows.parquet").to_pandas()
    for split in ("valid", "test"):
        m, part = out["splits"][split], rows[(rows["split"] == split) & rows["finite"]]
        assert m["n"] == len(part) and m["users"] == part["user_id"].nunique()
        assert m["auc"] == pytest.approx(auc(part["pred"].to_numpy(), part["label"].to_numpy()))
        value, used, skipped = uauc(part["user_id"].to_numpy(), part["pred"].to_numpy(), part["label"].to_numpy())
        assert (m["uauc"], m["uauc_users"], m["uauc_users_skipped"]) == (pytest.approx(value), used, skipped)
        assert m["loss"] == pytest.approx(part["loss"].mean(), rel=1e-6)
        per_user = pq.read_table(tmp_path / "ev" / split / "per_user.parquet").to_pandas().set_index("user_id")
        assert per_user["n"].sum() == m["n"] and len(per_user) == m["users"]
        assert m["quarantined_users"] == 1 and m["missing_users"] == 3  # users[0] is NaN; 3 have no prompt
        assert m["quarantined_rows_skipped"] == (rows[(rows["split"] == split)]["finite"] == 0).sum()
    assert (tmp_path / "ev" / "test" / "report.md").is_file()
    # the baselines are scored on the scored users' rows (no quarantined user, no user without a prompt)
    scored = set(users[1:])
    for split in ("valid", "test"):
        found = out["splits"][split]["baselines"]
        assert found == dataset_baselines(shard_paths(root / "data"), "click", split, users=scored)
        assert found["rows"] == out["splits"][split]["n"] and set(found) >= {"item_popularity", "user_rate"}
    assert "baseline: item popularity" in (tmp_path / "ev" / "test" / "report.md").read_text()


def test_one_task_and_pipeline_give_the_same_rating_metrics_and_per_user_rows(rating_store, tmp_path):
    root, model, users = rating_store
    runs = {}
    for name, rows in (("pipeline", 0), ("one-task", 200_000)):
        runs[name] = run_evaluate(EvaluateConfig(data=str(root / "data"), model=model, prompts=str(root / "store"),
                                                 split=["test"], out=str(tmp_path / name), one_task_rows=rows))
    for key in ("rmse", "mae", "accuracy", "loss", "n", "users", "quarantined_users", "missing_users"):
        assert runs["one-task"][key] == pytest.approx(runs["pipeline"][key], rel=1e-6), key
    found = runs["pipeline"]["baselines"]
    assert list(found)[3:] == ["global_mean", "user_mean", "item_mean", "user_item_bias"]
    assert found["rows"] == runs["pipeline"]["n"] and found == runs["one-task"]["baselines"]
    a, b = (pq.read_table(tmp_path / n / "per_user.parquet").to_pandas().sort_values("user_id")
            .reset_index(drop=True) for n in ("one-task", "pipeline"))
    assert len(a) == runs["pipeline"]["users"] and list(a["user_id"]) == list(b["user_id"])
    np.testing.assert_allclose(a[["n", "loss", "rmse", "mae"]], b[["n", "loss", "rmse", "mae"]], rtol=1e-6)
    assert pq.read_table(tmp_path / "one-task" / "rows.parquet").num_rows == \
        pq.read_table(tmp_path / "pipeline" / "rows.parquet").num_rows
