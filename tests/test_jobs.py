"""`ray job submit` of jobs/ entrypoints against a real Ray head (about 20 s: starts and stops a head)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_no_job_file_shadows_the_standard_library():
    # `python jobs/x.py` puts jobs/ first on sys.path: jobs/select.py broke every import of ray
    clash = [p.name for p in (REPO / "jobs").glob("*.py") if p.stem in sys.stdlib_module_names]
    assert not clash, f"jobs/ files named like standard-library modules: {clash}"


def test_ray_job_submit_runs_the_data_stage(tmp_path):
    bin_dir = Path(sys.executable).parent
    ray_cli = shutil.which("ray", path=str(bin_dir)) or "ray"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    subprocess.run([ray_cli, "start", "--head", "--port", "6391", "--dashboard-host", "127.0.0.1",
                    "--dashboard-port", "8291", "--num-cpus", "2"], env=env, check=True, capture_output=True)
    try:
        out = tmp_path / "data"
        res = subprocess.run([ray_cli, "job", "submit", "--address", "http://127.0.0.1:8291", "--working-dir",
                              str(REPO), "--", "python", "jobs/data.py", "--source", "synthetic", "--out", str(out),
                              "users=60"], env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        summary = [json.loads(line) for line in res.stdout.splitlines() if line.startswith('{"command"')][-1]
        assert summary["ok"] and summary["users"] > 0
        assert json.loads((out / "manifest.json").read_text())["users"] == summary["users"]
    finally:
        subprocess.run([ray_cli, "stop", "--force"], env=env, capture_output=True)
