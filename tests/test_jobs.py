"""`ray job submit` of jobs/ entrypoints against a real Ray head (about 20 s: starts and stops a head)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent


def test_no_job_file_shadows_the_standard_library():
    # `python jobs/x.py` puts jobs/ first on sys.path: jobs/select.py broke every import of ray
    clash = [p.name for p in (REPO / "jobs").glob("*.py") if p.stem in sys.stdlib_module_names]
    assert not clash, f"jobs/ files named like standard-library modules: {clash}"


def free_ports(n: int) -> list[int]:
    """n TCP ports nobody listens on now (bound together, so they differ)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


@contextlib.contextmanager
def local_head(port: int, dashboard_port: int):
    """A Ray head started with `ray start` in its own temp dir; stopped by killing exactly its processes
    (`ray stop --force` would also kill the test session's own Ray)."""
    import psutil

    bin_dir = Path(sys.executable).parent
    ray_cli = shutil.which("ray", path=str(bin_dir)) or "ray"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    temp = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    # the agents' ports too: their defaults (52365 for the dashboard agent) belong to the test session's own Ray,
    # and a head whose job agent cannot bind refuses every submit with "No available agent" (seen in CI)
    agent, grpc, runtime_env, metrics = free_ports(4)
    subprocess.run([ray_cli, "start", "--head", "--port", str(port), "--dashboard-host", "127.0.0.1",
                    "--dashboard-port", str(dashboard_port), "--dashboard-agent-listen-port", str(agent),
                    "--dashboard-agent-grpc-port", str(grpc), "--runtime-env-agent-port", str(runtime_env),
                    "--metrics-export-port", str(metrics), "--num-cpus", "2", "--temp-dir", temp],
                   env=env, check=True, capture_output=True)
    try:
        yield ray_cli, env, f"http://127.0.0.1:{dashboard_port}"
    finally:
        procs = [p for p in psutil.process_iter(["cmdline"]) if temp in " ".join(p.info["cmdline"] or [])]
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(procs, timeout=30)
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_job_submit_runs_the_data_stage(tmp_path):
    with local_head(6391, 8291) as (ray_cli, env, address):
        out = tmp_path / "data"
        # the shipped runtime environment (its excludes), with the working directory given explicitly
        cmd = [ray_cli, "job", "submit", "--address", address,
               "--runtime-env", str(REPO / "cluster" / "runtime-env.yaml"), "--working-dir", str(REPO), "--",
               "python", "jobs/data.py", "--source", "synthetic", "--out", str(out), "users=60"]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        summary = [json.loads(line) for line in res.stdout.splitlines() if line.startswith('{"command"')][-1]
        assert summary["ok"] and summary["users"] > 0
        assert json.loads((out / "manifest.json").read_text())["users"] == summary["users"]
