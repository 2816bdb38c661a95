"""Shared fixtures: one local Ray instance per test session, paths to the shared real data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("PUMA_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared(name: str) -> Path:
    """A folder of ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data sample {path} is absent (set PUMA_SHARED_DATA to its folder)")
    return path


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray (2 CPUs, like CI), or the cluster in RAY_ADDRESS; shut down after the session."""
    import ray

    from puma_ray.runtime.ray_utils import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def synthetic_dataset(ray_local, tmp_path_factory) -> Path:
    """A small synthetic rating dataset (made once per session)."""
    from puma_ray.config import DataConfig
    from puma_ray.stages.data import run_data

    out = tmp_path_factory.mktemp("synthetic")
    run_data(DataConfig(source="synthetic", out=str(out), users=120, items=80, users_per_shard=50, seed=3))
    return out


@pytest.fixture(scope="session")
def text_file(tmp_path_factory) -> Path:
    """Plain text that trains a tokenizer without a dataset."""
    path = tmp_path_factory.mktemp("text") / "titles.txt"
    path.write_text("\n".join(f"The Crimson Harbor {i}\nA Night at the Opera ({1900 + i})" for i in range(60)))
    return path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, text_file) -> dict:
    """family -> (models summary, directory): one tiny model of each family, built once."""
    from puma_ray.config import ModelsConfig
    from puma_ray.core.tiny_models import FAMILIES
    from puma_ray.stages.models import run_models

    root = tmp_path_factory.mktemp("models")
    return {f: (run_models(ModelsConfig(family=f, text=str(text_file), out=str(root / f))), root / f)
            for f in FAMILIES}


@pytest.fixture(scope="session")
def workspace(ray_local, tmp_path_factory) -> Path:
    """A tiny migration workspace, built once: synthetic data (120 users), catalogue-pretrained
    llama / qwen2 / gemma3, and llama source prompts (DIR/data, DIR/<family>, DIR/src)."""
    from puma_ray.config import DataConfig, ModelsConfig, PromptsConfig
    from puma_ray.stages.data import run_data
    from puma_ray.stages.models import run_models
    from puma_ray.stages.prompts import run_prompts

    root = tmp_path_factory.mktemp("workspace")
    run_data(DataConfig(source="synthetic", out=str(root / "data"), users=120, items=60, seed=11))
    for fam in ("llama", "qwen2", "gemma3"):
        run_models(ModelsConfig(family=fam, data=str(root / "data"), out=str(root / fam), pretrain_steps=60))
    summary = run_prompts(PromptsConfig(data=str(root / "data"), model=str(root / "llama"), out=str(root / "src"),
                                        workers=2, epochs=2, lr=0.01))
    (root / "src-summary.json").write_text(json.dumps(summary))
    return root


def kill_when(ready, target, timeout: float = 600.0, poll: float = 0.2):
    """A watcher thread: once ready() is true, SIGKILL the processes target() returns (a fault injected
    from outside). Returns the thread; its `.killed` lists the pids it killed."""
    import threading
    import time

    def run() -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if ready():
                for proc in target():
                    try:
                        proc.kill()
                        thread.killed.append(proc.pid)
                    except Exception:  # gone already
                        pass
                return
            time.sleep(poll)

    thread = threading.Thread(target=run, daemon=True)
    thread.killed = []
    thread.start()
    return thread


def cli_in_ray(args: list[str]):
    """(argv, env) running `python -m puma_ray.cli ARGS` as a client of this session's Ray."""
    import os
    import sys

    import ray

    return [sys.executable, "-m", "puma_ray.cli", *args], {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}


def kill_at_first_checkpoint(cmd: list[str], env: dict, out: Path, timeout: float = 300.0) -> None:
    """Start a training stage's CLI, SIGKILL it once `out` holds a Ray Train checkpoint (mid-training: its
    output has not been rewritten yet), and wait for it to die (a fault injected from outside)."""
    kill_cli_when(cmd, env, lambda: bool(list(out.glob("_train/*/checkpoint_*"))), timeout)


def kill_cli_when(cmd: list[str], env: dict, ready, timeout: float = 300.0) -> int:
    """Start a stage's CLI, SIGKILL it once ready() holds, wait for it to die; its exit status
    (-9 when the kill landed, anything else when it ended first)."""
    import subprocess
    import time

    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()
    return proc.wait()


def ray_processes(title: str) -> list:
    """This test session's processes titled `ray::<title>` (Ray names actor processes after their class):
    descendants of this process, which started the local Ray, so other Ray instances are never touched."""
    import psutil

    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if " ".join(p.cmdline()).startswith(f"ray::{title}"):
                found.append(p)
        except psutil.Error:
            pass
    return found


def warnings_of_ours(log: str) -> list[str]:
    """Warning lines a run's console output owes to our own calls: a warning attributed to a file of the
    package (Python names the calling frame), or torch.distributed's deprecation FutureWarnings that
    DeepSpeed's collectives raise in our training loops (quieted there, so never shown)."""
    import re

    ours = re.compile(r"puma_ray/[\w/]+\.py:\d+: \w*Warning")
    return [line for line in log.splitlines()
            if ours.search(line) or ("FutureWarning" in line and "torch.distributed" in line)]


def prompt_value_strings(store, users=3, values=24) -> set[str]:
    """How a few of the store's prompt values would look if printed: rounded and truncated decimals."""
    import numpy as np

    from puma_ray.store.prompt_store import iter_prompts

    found = set()
    for i, (_, ps) in enumerate(iter_prompts(store)):
        for v in np.asarray(ps[:users]).ravel()[:values]:
            if abs(v) >= 1e-3:
                found |= {f"{abs(v):.5f}", str(np.float32(abs(v)))[:7]}
        if i == 0:
            break
    return found


BUCKET = "puma-test"


def put_tree(fs, local, path) -> str:
    """Upload a local file tree to `path` ("bucket/key") on fs; its s3:// URI."""
    from puma_ray.runtime import storage

    storage.upload(Path(local), fs, path)
    return f"s3://{path}"


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """An S3 API (moto's server on 127.0.0.1) with one bucket, BUCKET; the environment points pyarrow at it, as a
    cluster's would (processes started after this inherit it). Yields its pyarrow file system."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
           "PUMA_STORAGE_CACHE": str(tmp_path_factory.mktemp("storage-cache"))}
    from puma_ray.runtime import storage

    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield storage.filesystem(f"s3://{BUCKET}/x")[0]
    server.stop()
