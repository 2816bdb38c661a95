"""`ray job submit` of jobs/ entrypoints against a real Ray cluster started with `ray start` (a head and two worker
nodes on this machine): the whole migration chain as jobs, about 5.5 minutes; and a remote --out refused on a
cluster one of whose nodes does not see the staging directory."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import BUCKET, put_tree

from puma_ray.runtime import storage
from puma_ray.runtime.ray_utils import LOCAL_TRAIN_ENV


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


def ray_start(ray_cli: str, env: dict, temp: str, *args: str, wrap: list[str] = ()) -> None:
    """`ray start ARGS` with its own temp dir and free ports for its agents: their defaults (52365 for the
    dashboard agent) belong to the test session's own Ray, and a head whose job agent cannot bind refuses
    every submit with "No available agent" (seen in CI)."""
    agent, grpc, runtime_env, metrics = free_ports(4)
    subprocess.run([*wrap, ray_cli, "start", *args, "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port",
                    str(grpc), "--runtime-env-agent-port", str(runtime_env), "--metrics-export-port", str(metrics),
                    "--temp-dir", temp], env=env, check=True, capture_output=True)


@contextlib.contextmanager
def local_cluster(port: int, dashboard_port: int, head_cpus: int = 2, worker_nodes: tuple[int, ...] = ()):
    """A Ray head started with `ray start --head` (head_cpus CPUs) and one `ray start --address` worker node per
    entry of worker_nodes (its CPUs), each in its own temp dir; stopped by killing exactly their processes
    (`ray stop --force` would also kill the test session's own Ray). Yields (ray CLI, env, dashboard URL,
    add_private_node)."""
    import psutil

    bin_dir = Path(sys.executable).parent
    ray_cli = shutil.which("ray", path=str(bin_dir)) or "ray"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    for key in ("RAY_ADDRESS", *LOCAL_TRAIN_ENV):  # a cluster runs with Ray's own settings, not a local runtime's
        env.pop(key, None)
    temps = [tempfile.mkdtemp(prefix="rh", dir="/tmp") for _ in range(1 + len(worker_nodes))]  # short: Ray's
    # socket paths must fit 107 bytes
    try:
        ray_start(ray_cli, env, temps[0], "--head", "--port", str(port), "--dashboard-host", "127.0.0.1",
                  "--dashboard-port", str(dashboard_port), "--num-cpus", str(head_cpus))
        for temp, cpus in zip(temps[1:], worker_nodes):
            ray_start(ray_cli, env, temp, "--address", f"127.0.0.1:{port}", "--num-cpus", str(cpus))

        def add_private_node(hidden: Path) -> None:
            """One more worker node (0 CPUs) started in its own mount namespace with an empty file system over
            `hidden`: on that node the directory is not the one the others see, as on a machine of its own."""
            temps.append(tempfile.mkdtemp(prefix="rh", dir="/tmp"))
            hidden.mkdir(parents=True, exist_ok=True)
            ray_start(ray_cli, env, temps[-1], "--address", f"127.0.0.1:{port}", "--num-cpus", "0",
                      wrap=["unshare", "--mount", "sh", "-c", 'mount -t tmpfs puma-private "$0" && exec "$@"',
                            str(hidden)])

        yield ray_cli, env, f"http://127.0.0.1:{dashboard_port}", add_private_node
    finally:
        procs = [p for p in psutil.process_iter(["cmdline"])
                 if any(t in " ".join(p.info["cmdline"] or []) for t in temps)]
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(procs, timeout=30)
        for temp in temps:
            shutil.rmtree(temp, ignore_errors=True)


def run_job(ray_cli: str, env: dict, address: str, logs: list[str], job: str, *args: str):
    """`ray job submit` of jobs/<job>.py with the shipped runtime environment (its excludes) and the checkout as
    working directory; appends what the submitter saw (the job's logs) to `logs`. The finished process."""
    cmd = [ray_cli, "job", "submit", "--address", address, "--runtime-env", str(REPO / "cluster" / "runtime-env.yaml"),
           "--working-dir", str(REPO), "--", "python", f"jobs/{job}.py", *args]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    logs.append(res.stdout + res.stderr)
    return res


def submit(ray_cli: str, env: dict, address: str, logs: list[str], job: str, *args: str) -> dict:
    """run_job(); asserts the job SUCCEEDED and returns the JSON summary its entrypoint printed."""
    res = run_job(ray_cli, env, address, logs, job, *args)
    tail = f"{job}: " + res.stdout[-3000:] + res.stderr[-3000:]
    assert res.returncode == 0 and re.search(r"Job '[^']+' succeeded", res.stdout), tail
    summary = [json.loads(line) for line in res.stdout.splitlines() if line.startswith('{"command"')][-1]
    assert summary["ok"], tail
    return summary


def ray_list(ray_cli: str, env: dict, address: str, kind: str, where: str) -> list[dict]:
    """`ray list KIND --filter WHERE --detail` (Ray's state API, finished ones included) as records."""
    res = subprocess.run([ray_cli, "list", kind, "--address", address, "--filter", where, "--detail", "--format",
                          "json", "--limit", "1000"], env=env, capture_output=True, text=True, timeout=120, check=True)
    return json.loads(res.stdout)


def storage_copies(ray_cli: str, env: dict, address: str) -> set[str]:
    """Node ids that ran a `mirror` task (the per-node copy of a remote input)."""
    return {task["node_id"] for task in ray_list(ray_cli, env, address, "tasks", "func_or_class_name=mirror")}


def actor_nodes(ray_cli: str, env: dict, address: str, class_name: str) -> dict[str, set[str]]:
    """job id -> the node ids its actors of this class ran on."""
    nodes: dict[str, set[str]] = {}
    for actor in ray_list(ray_cli, env, address, "actors", f"class_name={class_name}"):
        nodes.setdefault(actor["job_id"], set()).add(actor["node_id"])
    return nodes


def test_the_migration_chain_runs_as_jobs_on_a_head_and_two_worker_nodes(tmp_path, s3):
    """data -> models (source, target) -> prompts -> select -> adapter -> migrate -> evaluate, each a `ray job
    submit` to a head started with `ray start --head` (no CPUs: nothing computes there) joined by two worker
    nodes started with `ray start --address` (3 CPUs each). Every job SUCCEEDED, each stage's output is the
    next one's input (evaluate's given as URIs: the dataset as s3:// on an S3 API every node reaches, copied
    onto each node before scoring; the rest as file://), and each Ray Train run's two workers (2 CPUs each: one fits a node) ran on different nodes.
    What the jobs logged (driver and forwarded worker lines) holds no prompt value, no item title and no
    warning our code caused."""
    import pandas as pd
    from conftest import prompt_value_strings, warnings_of_ours

    d, logs = tmp_path, []
    with local_cluster(6391, 8291, head_cpus=0, worker_nodes=(3, 3)) as (ray_cli, env, address, _):
        data = submit(ray_cli, env, address, logs, "data", "--source", "synthetic", "--out", str(d / "data"), "users=60",
                      "items=40")
        assert data["users"] == 60 and json.loads((d / "data" / "manifest.json").read_text())["users"] == 60
        for family in ("llama", "qwen2"):
            submit(ray_cli, env, address, logs, "models", "--family", family, "--data", str(d / "data"), "--out",
                   str(d / family), "pretrain_steps=20")
        train = ["--workers", "2", "--cpus-per-worker", "2", "--epochs", "1"]
        prompts = submit(ray_cli, env, address, logs, "prompts", "--data", str(d / "data"), "--model", str(d / "llama"),
                         "--out", str(d / "src"), *train)
        assert prompts["users"] == 60
        select = submit(ray_cli, env, address, logs, "select_users", "--data", str(d / "data"), "--prompts", str(d / "src"),
                        "--out", str(d / "sel"), "--strategy", "puma", "--budget", "20", "clusters=2",
                        "min_per_cluster=2")
        assert select["selected"] == 20
        adapter = submit(ray_cli, env, address, logs, "adapter", "--data", str(d / "data"), "--source", str(d / "src"),
                         "--target-model", str(d / "qwen2"), "--users", str(d / "sel"), "--out", str(d / "adapter"),
                         *train, "min_steps=0", "width=32")
        assert adapter["users"] == 20
        # the migrated store built in the staging directory the nodes share (this disk), published to S3
        target = f"s3://{BUCKET}/jobs/target"
        migrate = submit(ray_cli, env, address, logs, "migrate", "--adapter", str(d / "adapter"), "--source", str(d / "src"),
                         "--out", target, "workers=2")
        assert migrate["users"] == 60 and migrate["out"] == target
        # URIs: the dataset and prompts from S3 (each node reads its own copy), the rest file:// (the same paths)
        data_uri = put_tree(s3, d / "data", f"{BUCKET}/jobs/data")
        evaluate = submit(ray_cli, env, address, logs, "evaluate", "--data", data_uri, "--model",
                          (d / "qwen2").as_uri(), "--prompts", target, "--out", (d / "eval").as_uri())
        assert evaluate["rmse"] > 0 and (d / "eval" / "metrics.json").is_file()
        assert f"data: {data_uri}" in (d / "eval" / "config.yaml").read_text()  # what it was given, not a copy
        copies = storage_copies(ray_cli, env, address)
        assert len(copies) == 3, copies  # one mirror task on each node (all three share this disk, so one copy)
        runs = actor_nodes(ray_cli, env, address, "RayTrainWorker")
        assert len(runs) == 2 and all(len(nodes) == 2 for nodes in runs.values()), runs
        # on a cluster Ray Train keeps its preemption watcher (a local runtime of ours starts none: test_prompts)
        assert actor_nodes(ray_cli, env, address, "PreemptionWatcher").keys() == runs.keys()
    storage.download(s3, f"{BUCKET}/jobs/target", storage.listing(s3, f"{BUCKET}/jobs/target"), d / "target")
    log = "\n".join(logs)
    values = prompt_value_strings(d / "src") | prompt_value_strings(d / "target")
    assert all(f"{job}:" in log for job in ("data", "migrate", "evaluate")) and len(values) > 20
    assert not warnings_of_ours(log)
    leaked = sorted(v for v in values if v in log)
    assert not leaked, f"prompt values in the job logs: {leaked[:5]}"
    titles = set(pd.read_parquet(d / "data" / "items.parquet")["item_text"])  # what histories and rows are made of
    shown = sorted(t for t in titles if t in log)
    assert len(titles) > 20 and not shown, f"item titles in the job logs: {shown[:5]}"


def private_mounts_work() -> bool:
    """Whether this process may start a process in its own mount namespace and mount a tmpfs there."""
    with tempfile.TemporaryDirectory() as d:
        try:
            return subprocess.run(["unshare", "--mount", "mount", "-t", "tmpfs", "probe", d],
                                  capture_output=True, timeout=30).returncode == 0
        except (OSError, subprocess.SubprocessError):
            return False


@pytest.mark.skipif(not private_mounts_work(), reason="needs `unshare --mount` and tmpfs mounts (root here)")
def test_a_remote_out_is_refused_when_a_node_does_not_see_the_staging_directory(s3):
    """A head (1 CPU) and a worker node started in its own mount namespace with an empty file system over the
    staging directory (as on a machine that lacks the shared mount): `data --out s3://...` is refused before
    anything runs, naming the variable; nothing reaches S3."""
    logs: list[str] = []
    with local_cluster(6392, 8292, head_cpus=1) as (ray_cli, env, address, add_private_node):
        add_private_node(storage.staging_root())
        res = run_job(ray_cli, env, address, logs, "data", "--source", "synthetic", "--out",
                      f"s3://{BUCKET}/jobs/refused", "users=20", "items=10")
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "1 of this cluster's 2 nodes do not see that directory" in out, out[-3000:]
    assert "set PUMA_OUT_STAGING" in out
    assert storage.listing(s3, f"{BUCKET}/jobs/refused") == [] == storage.listing(s3, f"{BUCKET}/jobs/refused.partial")
