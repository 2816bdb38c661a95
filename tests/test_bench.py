"""`puma-ray bench`: the table, paired differences and cost fits on a fixed runs table (no Ray), and one
small end-to-end run on the tiny workspace (a seeded user subset, one seed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from puma_ray.core.baselines import dataset_baselines
from puma_ray.data.schema import shard_paths
from puma_ray.config import BenchConfig
from puma_ray.data.schema import read_manifest
from puma_ray.store.prompt_store import read_manifest as read_store_manifest
from puma_ray.data.subset import subset_dataset
from puma_ray.errors import ConfigError, PumaError
from puma_ray.experiments.bench import run_bench
from puma_ray.experiments.bench_cost import AdapterWork, fit_components, projection
from puma_ray.experiments.bench_methods import FLOOR, RECYCLED, RETRAINED, SOURCE, methods_of
from puma_ray.experiments.bench_report import paired_rows, summary_table


def fixed_runs() -> pd.DataFrame:
    """Two sizes x two seeds of every method, with costs that are exactly fixed + per-user."""
    rows = []
    for size in (100, 400):
        rows.append({"size": size, "seed": 0, "method": SOURCE, "strategy": "", "users_trained": size,
                     "test_rmse": 1.10, "cost_device_s": 50 + 0.5 * size, "paid": True})
        for seed, noise in ((0, 0.0), (1, 0.01)):
            rows.append({"size": size, "seed": seed, "method": FLOOR, "strategy": "", "users_trained": size,
                         "test_rmse": 1.30 + noise, "test_closure": 0.0, "cost_device_s": 40 + 0.3 * size,
                         "prompts_device_s": 40 + 0.3 * size, "prompts_startup_device_s": 20, "paid": False})
            rows.append({"size": size, "seed": seed, "method": RETRAINED, "strategy": "", "users_trained": size,
                         "test_rmse": 1.20 + noise, "test_closure": 1.0, "cost_device_s": 60 + 0.5 * size,
                         "prompts_device_s": 60 + 0.5 * size, "prompts_startup_device_s": 30,
                         "prompts_samples": 100 * size, "paid": False})
            for name, strategy, budget, rmse in (("puma (20)", "puma", 20, 1.21), ("random (20)", "random", 20, 1.23),
                                                 ("random (60)", "random", 60, 1.215)):
                rows.append({"size": size, "seed": seed, "method": name, "strategy": strategy, "users_trained": budget,
                             "test_rmse": rmse + noise, "test_closure": (1.30 - rmse) / 0.10,
                             "select_device_s": (5 if strategy == "puma" else 1) + 0.01 * size,
                             # min_steps: small budgets run more, shorter epochs (seed 1 one more)
                             "adapter_epochs": (epochs := (10 if budget == 20 else 4) + seed),
                             "adapter_samples": (samples := epochs * budget * 10),
                             "adapter_device_s": 30 + 2.0 * epochs + 0.01 * samples, "migrate_device_s": 3 + 0.002 * size,
                             "migrate_startup_device_s": 3.0,
                             "cost_device_s": 0.0, "paid": False})
    return pd.DataFrame(rows)


def test_bench_tables_pair_by_seed_and_fit_exact_costs():
    runs = fixed_runs()
    cfg = BenchConfig(data="d", source_model="a", target_model="b", budget=20, seeds=[0, 1], out="o")
    assert [m[0] for m in methods_of(cfg)] == ["puma (20)", "random (20)", "random (60)"]
    warm = BenchConfig(**{**cfg.to_dict(), "recycle": True, "recycled_init": True})
    assert methods_of(warm)[-1] == ("puma (20), recycled init", {"strategy": "puma", "budget": 20, "init": "recycled"})
    with pytest.raises(ConfigError, match="recycled_init: needs --recycle"):
        BenchConfig(**{**cfg.to_dict(), "recycled_init": True})
    table = summary_table(runs, "rmse", "test")
    puma = table[(table["size"] == 100) & (table["method"] == "puma (20)")].iloc[0]
    assert puma["rmse_mean"] == pytest.approx(1.215) and puma["seeds"] == 2 and puma["closure_mean"] == pytest.approx(0.9)
    paired = {(p["size"], p["b"]): p for p in paired_rows(runs, cfg, "rmse")}
    d = paired[(400, "random (20)")]
    # the same difference in both seeds: a zero-width interval at -0.02, which excludes zero
    assert d["mean"] == pytest.approx(-0.02) and d["low"] == pytest.approx(-0.02) == d["high"]
    assert d["seeds"] == 2 and d["excludes_zero"] is True
    spread = paired[(100, "random (60)")]  # 1.21 - 1.215 in both seeds (noise cancels in the pair)
    assert spread["mean"] == pytest.approx(-0.005)
    fits = fit_components(runs)
    assert fits["prompts"].fixed == pytest.approx(60) and fits["prompts"].per_unit == pytest.approx(0.5)
    a = fits["adapter"]  # recovered exactly; above the floor (retraining: 0.5 / 100 = 0.005 per sample)
    assert (a.fixed, a.per_epoch, a.per_sample, a.floored) == (pytest.approx(30), pytest.approx(2.0),
                                                                pytest.approx(0.01), False)
    assert fits["select/puma"].per_unit == pytest.approx(0.01) and fits["migrate"].per_unit == pytest.approx(0.002)
    work = AdapterWork(rows_per_user=10, epochs=4, min_steps=200, batch_size=32, workers=2)
    assert work.at(20) == (50, 10000) and work.at(2000) == (4, 80000)  # 20 users: 4 steps/epoch, 50 epochs for 200
    p = projection(fits, "puma", 1_000_000, 2000, work)
    want = (5 + 0.01e6) + (30 + 2.0 * 4 + 0.01 * 80000) + (3 + 0.002e6)
    assert p["device_s"] == pytest.approx(want) and p["ratio"] == pytest.approx(want / (60 + 0.5e6))


def test_adapter_per_sample_cost_is_floored_at_retrainings():
    runs = fixed_runs()
    runs["adapter_device_s"] = 30 + 2.0 * runs["adapter_epochs"]  # the fit sees no cost per sample at all
    a = fit_components(runs)["adapter"]
    assert a.floored and a.per_sample == pytest.approx(0.5 / 100)  # retraining's marginal cost per sample
    assert a.max_rel_residual > 0


def test_one_size_splits_retraining_cost_into_start_up_and_per_user():
    runs = fixed_runs()
    fits = fit_components(runs[runs["size"] == 100])
    assert fits["prompts"].fixed == pytest.approx(30) and fits["prompts"].per_unit == pytest.approx((110 - 30) / 100)
    assert fits["migrate"].fixed == 3 and fits["migrate"].per_unit == pytest.approx(0.002)
    assert fits["select/puma"].fixed == 0  # no start-up measured: all of it counted per user


def test_user_subset_keeps_whole_users_and_records_its_origin(workspace, tmp_path):
    m = subset_dataset(workspace / "data", 50, 3, tmp_path / "s")
    full = read_manifest(workspace / "data")
    assert m["users"] == 50 and m["subset_of"] == {"fingerprint": full["fingerprint"], "users": 50, "seed": 3}
    rows = pd.concat(pd.read_parquet(p) for p in (tmp_path / "s" / "interactions").glob("*.parquet"))
    all_rows = pd.concat(pd.read_parquet(p) for p in (workspace / "data" / "interactions").glob("*.parquet"))
    mine = all_rows[all_rows["user_id"].isin(set(rows["user_id"]))]
    assert len(rows) == len(mine) == m["rows"] and rows["split"].value_counts().equals(mine["split"].value_counts())
    assert subset_dataset(workspace / "data", 50, 3, tmp_path / "s")["fingerprint"] == m["fingerprint"]  # reused
    with pytest.raises(PumaError, match="another dataset"):
        subset_dataset(workspace / "data", 40, 3, tmp_path / "s")


@pytest.mark.ray
def test_bench_end_to_end_on_a_user_subset(workspace, tmp_path):
    cfg = BenchConfig(data=str(workspace / "data"), source_model=str(workspace / "llama"),
                      target_model=str(workspace / "qwen2"), budget=8, seeds=[0], sizes=[60], strategies=["random"],
                      out=str(tmp_path / "b"), prompt_epochs=1, adapter_epochs=1, adapter_min_steps=0, adapter_width=32,
                      adapter_lr=3e-3,
                      clusters=2, recycle=True, recycled_init=True, warm_epochs=1, coldstart_fraction=0.2, workers=1)
    summary = run_bench(cfg)
    table = pd.read_csv(tmp_path / "b" / "table.csv")
    cold_name = "random (8), 20% of users cold-start"
    assert table["method"].tolist() == [SOURCE, FLOOR, RETRAINED, RECYCLED, "random (8)", "random (8) + 1 epoch tuning",
                                        cold_name, "random (24)", "random (8), recycled init"]
    assert table.loc[table["method"] == RECYCLED, "users_trained"].item() == 0
    runs = pd.read_csv(tmp_path / "b" / "runs.csv").set_index("method")
    warm, plain = runs.loc["random (8) + 1 epoch tuning"], runs.loc["random (8)"]
    assert warm["cost_device_s"] == pytest.approx(plain["cost_device_s"] + warm["tuning_device_s"], abs=1e-2)
    tuned = read_store_manifest(warm["warm_store"])["lineage"][-1]
    assert tuned["init_from"] == str(Path(plain["trial_path"]) / "store") and [c["epoch"] for c in tuned["curve"]] == [-1, 0]
    started = json.loads((Path(runs.loc["random (8), recycled init", "trial_path"]) / "adapter" / "adapter.json").read_text())
    assert started["init"]["kind"] == "recycled" and started["init"]["store"].endswith("recycled/store")
    assert runs.loc["random (8), recycled init", "cost_device_s"] == pytest.approx(
        runs.loc["random (8), recycled init", ["select_device_s", "adapter_device_s", "migrate_device_s",
                                               "recycle_device_s"]].sum(), abs=1e-2)
    cold = runs.loc[cold_name]
    assert cold["cold_users"] == 12 and cold["cost_device_s"] == pytest.approx(
        plain["cost_device_s"] + cold["coldstart_device_s"], abs=1e-2)
    lineage = read_store_manifest(cold["coldstart_store"])["lineage"]
    assert [s["step"] for s in lineage[-2:]] == ["held_out", "coldstart"] and lineage[-1]["cold_users"] == 12
    assert lineage[-2]["removed_users"] == 12 and read_store_manifest(cold["coldstart_store"])["num_users"] == 60
    assert all(cold[f"cold_{k}test_rmse"] > 0 for k in ("", "migrated_", "floor_", "retrained_"))
    assert {(p["a"], p["b"]) for p in summary["paired"]} >= {("random (8), recycled init", "random (8)"),
                                                             ("random (8) + 1 epoch tuning", RETRAINED),
                                                             (cold_name, "random (8)"),
                                                             ("cold users only (rmse): coldstart prompts",
                                                              "their migrated prompts"),
                                                             ("cold users only (rmse): coldstart prompts",
                                                              "the floor's random init")}
    assert table["rmse_mean"].notna().all() and (table["device_s_mean"] > 0).all()
    assert table.loc[table["method"] == "random (24)", "users_trained"].item() == 24
    ref = json.loads((tmp_path / "b" / "n60" / "reference.json").read_text())
    assert ref["split"] == "test" and ref["floor"]["value"] > 0 and ref["retrained"]["device_s"] > 0
    # baselines on the subset's test rows, the rows full retraining was scored on
    assert summary["baselines"] == ref["baselines"] == dataset_baselines(
        shard_paths(tmp_path / "b" / "n60" / "data"), "rating", "test")
    said = summary["personalization"]["60"]
    assert said == "learned" or said.startswith("no personalization learned")
    assert "| 60 | baseline: per-user mean | 0 |" in (tmp_path / "b" / "report.md").read_text()
    assert summary["projected"][-1]["users"] == 1_000_000 and summary["projected"][-1]["ratio"] > 0
    report = (tmp_path / "b" / "report.md").read_text()
    assert "projected" in report and "| component |" in report
    assert "![cold-start users](coldstart.png)" in report
    for png in ("metrics.png", "cost.png", "coldstart.png"):
        assert (tmp_path / "b" / png).stat().st_size > 10_000
    with pytest.raises(PumaError, match="3 x budget"):
        run_bench(BenchConfig(**{**cfg.to_dict(), "budget": 30, "out": str(tmp_path / "c")}))
    # the same --out with other adapter settings: refused, not silently reused
    before = (tmp_path / "b" / "table.csv").read_bytes()
    with pytest.raises(PumaError, match="holds a trial with other settings"):
        run_bench(BenchConfig(**{**cfg.to_dict(), "adapter_lr": 1e-2}))
    assert (tmp_path / "b" / "table.csv").read_bytes() == before


def test_closure_says_over_how_many_seeds_it_is_defined():
    from puma_ray.experiments.bench_report import _closure

    runs = fixed_runs()
    runs.loc[(runs["seed"] == 1) & (runs["size"] == 100), "test_closure"] = float("nan")  # retraining lost there
    table = summary_table(runs, "rmse", "test").set_index(["size", "method"])
    assert _closure(table.loc[(100, "puma (20)")]) == "0.90 (1 of 2 seeds)"
    assert _closure(table.loc[(400, "puma (20)")]).startswith("0.90 ± ")


def test_a_recycled_start_is_paired_with_the_same_strategy_started_at_random():
    cfg = BenchConfig(data="d", source_model="a", target_model="b", budget=20, seeds=[0, 1, 2], out="o",
                      recycle=True, recycled_init=True)
    runs = pd.DataFrame([{"size": 100, "seed": s, "method": m, "test_rmse": v}
                         for s, (p, w) in enumerate([(1.20, 1.18), (1.22, 1.19), (1.21, 1.20)])
                         for m, v in (("puma (20)", p), ("puma (20), recycled init", w))])
    (d,) = paired_rows(runs, cfg, "rmse")
    assert (d["a"], d["b"], d["seeds"]) == ("puma (20), recycled init", "puma (20)", 3)
    assert d["mean"] == pytest.approx(-0.02) and d["low"] < d["mean"] < d["high"]


def test_cold_start_users_are_drawn_from_the_unselected_ones_and_scored_alone(tmp_path):
    from puma_ray.store.prompt_store import finalize, iter_prompts, write_shard, without_users
    from puma_ray.experiments.bench import cold_users_of, users_metric

    users = [f"u{i:02d}" for i in range(20)]
    info, _ = write_shard(tmp_path / "s", 0, users, np.arange(20 * 6, dtype=np.float32).reshape(20, 2, 3))
    finalize(tmp_path / "s", task="rating", prompt_len=2, dim=3, model={"fingerprint": "f"}, lineage=[],
             dataset_fingerprint=None, shards=[info], quarantined=[])
    pd.DataFrame({"user_id": users[:5]}).to_parquet(tmp_path / "selected.parquet")
    cold = cold_users_of(str(tmp_path / "s"), str(tmp_path / "selected.parquet"), 0.25, seed=3)
    assert len(cold) == 5 and not set(cold) & set(users[:5])
    assert cold == cold_users_of(str(tmp_path / "s"), str(tmp_path / "selected.parquet"), 0.25, seed=3)
    m = without_users(tmp_path / "s", tmp_path / "w", cold, {"step": "held_out"})
    kept = {u: x for ids, xs in iter_prompts(tmp_path / "w") for u, x in zip(ids, xs)}
    assert m["num_users"] == 15 and set(kept) == set(users) - set(cold) and m["lineage"][-1]["removed_users"] == 5
    assert all((kept[u] == np.arange(6, dtype=np.float32).reshape(2, 3) + 6 * users.index(u)).all() for u in kept)
    with pytest.raises(PumaError, match="already holds"):
        without_users(tmp_path / "s", tmp_path / "w", cold, {"step": "held_out"})
    with pytest.raises(PumaError, match="no unselected user"):
        cold_users_of(str(tmp_path / "s"), str(tmp_path / "selected.parquet"), 0.01, seed=3)
    pd.DataFrame({"user_id": ["a", "b", "c"], "n": [1, 3, 4], "rmse": [1.0, 2.0, 9.0]}).to_parquet(tmp_path / "pu.parquet")
    assert users_metric(tmp_path / "pu.parquet", ["a", "b"], "rmse") == pytest.approx(np.sqrt((1 + 3 * 4) / 4))


def test_validation_names_the_coldstart_flag():
    with pytest.raises(PumaError, match="coldstart_fraction"):
        BenchConfig(data="d", source_model="a", target_model="b", out="o", coldstart_fraction=1.0).validate()
