"""`puma-ray sweep` on tune_spaces/ci.yaml: every trial reported with metric and cost, the plots and
best.yaml written, and a sweep whose driver is killed after its first finished trial resumes
without running that trial again (the kill comes from outside: SIGKILL to the process group)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from puma_ray.config import AdapterStageConfig, SweepConfig, load_config
from puma_ray.errors import ConfigError, PumaError
from puma_ray.experiments.sweep import run_sweep, with_reference

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parent.parent


def sweep_args(ws: Path, out: Path) -> list[str]:
    return ["--data", str(ws / "data"), "--source", str(ws / "src"), "--target-model", str(ws / "qwen2"),
            "--space", str(REPO / "tune_spaces" / "ci.yaml"), "--out", str(out)]


def kill_after_first_trial(args: list[str], out: Path, address: str, timeout: float = 900) -> list[Path]:
    """Run `puma-ray sweep` as a driver of the test's Ray cluster, in its own process group; SIGKILL the
    group as soon as one trial has finished (its running trial dies with its driver). Returns the
    finished trials' result files at that moment."""
    env = {**os.environ, "RAY_ADDRESS": address}
    proc = subprocess.Popen([sys.executable, "-m", "puma_ray.cli", "sweep", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < timeout:
            done = sorted(out.glob("trials/*/result.json"))
            if done:
                return done
            if proc.poll() is not None:
                raise AssertionError(f"sweep exited ({proc.returncode}) before a trial finished: {proc.stderr.read()[-3000:]}")
            time.sleep(0.5)
        raise AssertionError("no trial finished in time")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_sweep_resumes_after_its_driver_is_killed_and_reports_every_trial(workspace, ray_local, tmp_path):
    out = tmp_path / "sweep"
    first = kill_after_first_trial(sweep_args(workspace, out), out, ray_local.get_runtime_context().gcs_address)
    stamps = {p: p.stat().st_mtime_ns for p in first}
    summary = run_sweep(SweepConfig(data=str(workspace / "data"), source=[str(workspace / "src")],
                                    target_model=str(workspace / "qwen2"), space=str(REPO / "tune_spaces" / "ci.yaml"),
                                    out=str(out)))
    df = pd.read_csv(out / "results.csv")
    assert len(df) == summary["trials"] == 2 and (df["status"] == "finished").all()
    for col in ("test_rmse", "valid_rmse", "adapter_valid_rmse", "cost_device_s", "cost_wall_s", "select_device_s",
                "adapter_device_s", "migrate_device_s", "users_trained"):
        assert df[col].notna().all() and (df[col] > 0).all(), col
    assert df["users_trained"].tolist() == [36, 36]  # 30% of 120 users
    assert sorted(df["strategy"].unique().tolist()) == ["puma", "random"]
    for p, stamp in stamps.items():  # the trial finished before the kill never ran again
        assert p.stat().st_mtime_ns == stamp
        adapter_costs = (p.parent / "adapter" / "costs.jsonl").read_text().splitlines()
        assert len(adapter_costs) == 1
    for png in ("cost_accuracy.png", "budget_curve.png"):
        assert (out / png).stat().st_size > 10_000
    pareto = pd.read_csv(out / "pareto.csv")
    assert 1 <= len(pareto) <= 2
    best = load_config(AdapterStageConfig, str(out / "best.yaml"))  # `puma-ray adapter --config best.yaml`
    chosen = df.loc[df["valid_rmse"].idxmin()]
    assert best.users.endswith(str(Path(chosen["trial_dir"]) / "select")) and best.epochs == 1 and best.width == 32
    assert (out / "best.yaml").read_text().startswith("# puma-ray adapter --config ")
    # a third run finds everything done: no stage runs again
    again = run_sweep(SweepConfig(**{**yaml.safe_load((out / "config.yaml").read_text())}))
    assert again["trials"] == 2
    assert all(len((out / "trials" / t / "adapter" / "costs.jsonl").read_text().splitlines()) == 1
               for t in df["trial_dir"])


def test_an_asha_sweep_runs_its_surviving_trials_to_migrate_and_evaluate(workspace, ray_local, tmp_path):
    """tune_spaces/ci.yaml under ASHA (one epoch, grace period one: no rung stops either trial): both trials
    report a test metric and a cost. Before the fix ASHA stopped them at max_t, ending the sweep with
    "no trial finished"."""
    summary = run_sweep(SweepConfig(data=str(workspace / "data"), source=[str(workspace / "src")],
                                    target_model=str(workspace / "qwen2"), space=str(REPO / "tune_spaces" / "ci.yaml"),
                                    out=str(tmp_path / "asha"), scheduler="asha"))
    df = pd.read_csv(tmp_path / "asha" / "results.csv")
    assert summary["trials"] == 2 and (df["status"] == "finished").all()
    assert df["test_rmse"].notna().all() and (df["cost_device_s"] > 0).all()


def test_sweep_refuses_bad_spaces_and_references_before_running(workspace, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("params:\n  strategy: puma\n  colour: red\n")
    base = dict(data=str(workspace / "data"), source=[str(workspace / "src")], target_model=str(workspace / "qwen2"),
                out=str(tmp_path / "s"))
    with pytest.raises(ConfigError, match="unknown parameter 'colour'"):
        run_sweep(SweepConfig(**base, space=str(bad)))
    ref = tmp_path / "ref"
    ref.mkdir()
    (ref / "reference.json").write_text(json.dumps({"split": "valid", "metric": "rmse", "floor": {"value": 1.3},
                                                    "retrained": {"value": 1.2}}))
    with pytest.raises(ConfigError, match="rmse on valid, the sweep reports rmse on test"):
        run_sweep(SweepConfig(**base, space=str(REPO / "tune_spaces" / "ci.yaml"), reference=str(ref)))
    with pytest.raises(PumaError, match="no reference.json"):
        run_sweep(SweepConfig(**base, space=str(REPO / "tune_spaces" / "ci.yaml"), reference=str(tmp_path)))
    assert not (tmp_path / "s").exists()  # nothing was written


def test_closure_and_cost_ratio_follow_the_reference_given_now():
    # a resumed sweep re-reports its finished trials against the --reference of this run
    df = pd.DataFrame({"test_rmse": [1.30, 1.25, 1.35], "cost_device_s": [20.0, 40.0, 10.0],
                       "test_closure": [9.0, 9.0, 9.0]})
    ref = {"split": "test", "floor": {"value": 1.34}, "retrained": {"value": 1.24, "device_s": 200.0}}
    out = with_reference(df, ref, "test_rmse", "rmse")
    assert out["test_closure"].tolist() == pytest.approx([0.4, 0.9, -0.1])
    assert out["cost_vs_retraining"].tolist() == pytest.approx([0.1, 0.2, 0.05])
    assert with_reference(df, None, "test_rmse", "rmse") is df


def test_a_corrupt_trial_marker_is_one_line_and_nothing_is_reused(tmp_path):
    from puma_ray.experiments.trial import IDENTITY, claim

    (tmp_path / IDENTITY).write_text('{"params": {"budget": 3')  # cut short by a crash
    with pytest.raises(PumaError, match="corrupt"):
        claim(tmp_path, {"params": {"budget": 3}}, "trial")
    assert (tmp_path / IDENTITY).read_text() == '{"params": {"budget": 3'


def test_the_loss_pass_is_shared_only_when_a_spaces_trials_can_draw_a_loss_strategy():
    from puma_ray.experiments.space import load_space, parse_space
    from puma_ray.experiments.sweep import space_strategies

    assert space_strategies(load_space(Path(__file__).parent.parent / "tune_spaces" / "ci.yaml")) == ["puma", "random"]
    assert space_strategies(parse_space({"params": {"budget": 20}})) == ["puma"]  # the select stage's default
    assert space_strategies(parse_space({"params": {"strategy": {"choice": ["loss", "kmeans"]}}})) == ["loss", "kmeans"]
