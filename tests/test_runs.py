"""Run directories and cost records."""

from __future__ import annotations

import json

import pytest

from puma_ray.config import DataConfig
from puma_ray.runtime.runs import COSTS_FILE, CostMeter, config_hash, open_run, read_costs


def test_open_run_writes_a_reloadable_resolved_config(tmp_path):
    from puma_ray.config import load_config

    cfg = DataConfig(out=str(tmp_path / "r"), users=42)
    out = open_run(cfg.out, "data", cfg)
    assert load_config(DataConfig, str(out / "config.yaml")) == cfg


def test_cost_meter_appends_one_full_record_per_run(tmp_path):
    cfg = DataConfig(out=str(tmp_path))
    for samples in (10, 20):
        with CostMeter(tmp_path, "data", cfg, workers=2) as meter:
            meter.samples, meter.tokens, meter.flops = samples, 3 * samples, 1e6
    lines = (tmp_path / COSTS_FILE).read_text().splitlines()
    assert len(lines) == 2
    rec = json.loads(lines[1])
    assert rec["stage"] == "data" and rec["samples"] == 20 and rec["tokens"] == 60 and rec["workers"] == 2
    assert rec["device_seconds"] == pytest.approx(2 * rec["wall_s"], abs=0.01)
    assert rec["peak_memory_bytes"] > 0 and rec["device_kind"] in ("cpu",) or rec["device_kind"].startswith("cuda")
    assert rec["config_hash"] == config_hash(cfg)


def test_failed_run_writes_no_cost_and_read_costs_walks_subdirs(tmp_path):
    cfg = DataConfig(out=str(tmp_path))
    with pytest.raises(RuntimeError):
        with CostMeter(tmp_path / "a", "data", cfg):
            raise RuntimeError("boom")
    (tmp_path / "b").mkdir()
    with CostMeter(tmp_path / "b", "models", cfg):
        pass
    records = read_costs(tmp_path)
    assert [(r["stage"], r["run"]) for r in records] == [("models", "b")]


def test_config_hash_is_stable_and_sensitive():
    assert config_hash(DataConfig(out="x")) == config_hash(DataConfig(out="x"))
    assert config_hash(DataConfig(out="x")) != config_hash(DataConfig(out="x", seed=1))
