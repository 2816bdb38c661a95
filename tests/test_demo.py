"""The README's main job, at its smallest size, end to end through Ray."""

from __future__ import annotations

import json

import pytest

from puma_ray.config import DemoConfig
from puma_ray.stages.demo import run_demo


@pytest.mark.slow  # ~4 min; every stage it chains has its own tests (bash scripts/test.sh -m slow runs it)
def test_demo_tiny_runs_every_stage(ray_local, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths, as the README's command gives them, must reach Ray workers
    summary = run_demo(DemoConfig(out="demo", size="tiny", movielens=None))
    out = tmp_path / "demo"
    report = (out / "report.md").read_text()
    assert "| synthetic |" in report and "source-llama" in report and "target-qwen2" in report
    for method in ("source model", "random init (floor)", "full retraining", "PUMA (40 users)",
                   "random selection (40 users)"):
        assert f"| {method} |" in report
    assert "x (" in report.split("| PUMA (40 users) |")[1].splitlines()[0]  # a cost ratio against retraining
    assert (out / "dataset_stats.png").stat().st_size > 10_000 and (out / "methods.png").stat().st_size > 10_000
    assert (out / "select" / "puma" / "selection.png").is_file()
    assert set(summary["models"]) == {"source-llama", "target-qwen2"}
    assert summary["methods"]["full retraining"]["closure"] == 1.0
    stages = [json.loads(line)["stage"] for p in out.rglob("costs.jsonl") for line in p.read_text().splitlines()]
    assert sorted(stages) == sorted(["data", "demo", "models", "models", "prompts", "prompts", "prompts"]
                                    + ["select", "adapter", "migrate"] * 2 + ["evaluate"] * 5)
