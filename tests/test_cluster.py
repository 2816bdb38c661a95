"""The cluster files, checked statically (no docker, no cloud here): they parse, pin the Ray version the
package runs on, scale and share storage for real, and every entrypoint in them names a job that exists
and whose flags and config load."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import ray
import yaml
from packaging.requirements import Requirement

from puma_ray.cli import COMMANDS, job_file, parse_command
from puma_ray.errors import ConfigError
from puma_ray.runtime.job_paths import job_paths, split_root

REPO = Path(__file__).resolve().parent.parent
CLUSTER = REPO / "cluster"


def entrypoints(text: str) -> list[str]:
    """Every `python .../jobs/<file>.py ...` command line in a file."""
    return [m.group(0) for m in re.finditer(r"python3? (?:/app/)?jobs/\w+\.py[^\n`']*", text)]


def load_entrypoint(command: str):
    """The stage config a job entrypoint would run with, not run: as cli.main(job=True) builds it from the
    checkout's root ("$PWD" of the submitting shell), relative paths resolved against --root or checked."""
    words = [w.replace("/app/", f"{REPO}/").replace("$PWD", str(REPO)) for w in shlex.split(command)]
    script = next(i for i, w in enumerate(words) if w.endswith(".py"))
    job = Path(words[script]).relative_to(REPO).as_posix() if words[script].startswith(str(REPO)) else words[script]
    name = next(n for n in COMMANDS if job_file(n) == job)
    root, rest = split_root(words[script + 1:])
    return job_paths(parse_command([name, *rest])[1](), root, cwd=REPO)


def test_every_cluster_file_parses_and_pins_the_installed_ray():
    ray_req = next(Requirement(r) for r in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
                   ["dependencies"] if Requirement(r).name == "ray")
    assert ray_req.specifier.contains(ray.__version__)
    image = re.search(r"^FROM rayproject/ray:([\d.]+)-", (CLUSTER / "Containerfile").read_text(), re.M)
    assert image and image.group(1) == ray.__version__, "Containerfile's Ray image differs from the installed Ray"
    for name in KUBERAY:
        assert kuberay_cluster(name)["rayVersion"] == ray.__version__, name


KUBERAY = ["kuberay-rayjob.yaml", "kuberay-raycluster.yaml"]
LAUNCHERS = ["cluster-launcher.yaml", "cluster-launcher-gcp.yaml"]


def kuberay_cluster(name: str) -> dict:
    """The RayCluster spec of a KubeRay file (a RayCluster's own spec, a RayJob's rayClusterSpec)."""
    doc = yaml.safe_load((CLUSTER / name).read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] in ("RayCluster", "RayJob"), name
    return doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]


STAGING = {"name": "PUMA_OUT_STAGING", "value": "/mnt/puma/.puma-staging"}


@pytest.mark.parametrize("name", KUBERAY)
def test_kuberay_autoscales_gpu_workers_on_shared_storage(name):
    spec = kuberay_cluster(name)
    assert spec["enableInTreeAutoscaling"] is True  # without it min/max replicas change nothing
    groups = spec["workerGroupSpecs"]
    assert all(g["minReplicas"] < g["maxReplicas"] for g in groups)
    limits = [g["template"]["spec"]["containers"][0]["resources"]["limits"] for g in groups]
    assert any(int(lim.get("nvidia.com/gpu", 0)) >= 1 for lim in limits)
    pods = [spec["headGroupSpec"]["template"]["spec"], *(g["template"]["spec"] for g in groups)]
    assert all(p["containers"][0]["volumeMounts"][0]["mountPath"] == "/mnt/puma" for p in pods)
    claims = {v["persistentVolumeClaim"]["claimName"] for p in pods for v in p["volumes"]}
    assert claims == {"puma-shared"}
    # a remote --out is built where every node sees it (storage.staging_root), on that volume
    assert all(STAGING in p["containers"][0]["env"] for p in pods)


@pytest.mark.parametrize("name", LAUNCHERS)
def test_the_launcher_is_valid_for_ray_and_mounts_shared_storage_or_fails_loudly(name):
    import json

    import jsonschema

    cfg = yaml.safe_load((CLUSTER / name).read_text())
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(cfg, schema)  # the cluster launcher's own schema of the installed Ray
    assert cfg["head_node_type"] in cfg["available_node_types"]
    assert any(t.get("max_workers", 0) > 0 for t in cfg["available_node_types"].values())
    mount = next(c for c in cfg["setup_commands"] if "/mnt/puma" in c)
    assert "|| true" not in mount and mount.rstrip().endswith("mountpoint -q /mnt/puma")
    starts = [c for c in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2 and all(c.startswith(f"PUMA_OUT_STAGING={STAGING['value']} ray start") for c in starts)
    assert all(t["node_config"].get("InstanceType") or t["node_config"].get("machineType")  # AWS / GCP
               for t in cfg["available_node_types"].values())


def test_the_image_leaves_local_state_out():
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "runs"} <= ignored


def test_the_job_runtime_env_uploads_the_checkout_without_local_state():
    """Ray's own parser accepts the file (test_jobs.py submits a job with it), and it leaves local state out."""
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load((CLUSTER / "runtime-env.yaml").read_text())
    RuntimeEnv(**env)  # a malformed field raises (a misspelt key would pass: the next line checks ours)
    assert env["working_dir"] == "." and {".git/", ".venv/", "runs/"} <= set(env["excludes"])


ENTRYPOINTS = sorted({(p.relative_to(REPO).as_posix(), c) for p in [*CLUSTER.iterdir(), REPO / "README.md"]
                      if p.is_file() for c in entrypoints(p.read_text())})


GPU_CLUSTERS = {f"cluster/{n}" for n in KUBERAY + LAUNCHERS}  # they request GPU workers


def test_the_cluster_files_hold_entrypoints():
    files = {f for f, _ in ENTRYPOINTS}
    assert GPU_CLUSTERS | {"cluster/local-start.sh", "README.md"} <= files


@pytest.mark.parametrize("where,command", ENTRYPOINTS)
def test_every_entrypoint_names_a_job_whose_flags_and_config_load(where, command):
    job = next(w for w in shlex.split(command) if w.endswith(".py")).removeprefix("/app/")
    assert (REPO / job).is_file(), f"{where}: {job} does not exist"
    cfg = load_entrypoint(command)
    if where in GPU_CLUSTERS and "use_gpu" in vars(cfg):
        assert cfg.use_gpu, f"{where}: the cluster requests GPUs but its entrypoint leaves use_gpu off"


SUBMITS = sorted({(p.relative_to(REPO).as_posix(), m.group(0))
                  for p in [*CLUSTER.iterdir(), *(REPO / "configs").glob("*.yaml"), *(REPO / "jobs").glob("*.py"),
                            *(REPO / "tune_spaces").glob("*.yaml"), REPO / "README.md"]
                  if p.is_file() for m in re.finditer(r"ray job submit [^\n`]*", p.read_text())})


@pytest.mark.parametrize("where,command", SUBMITS)
def test_every_shipped_job_command_reserves_a_cpu_and_runs_as_written(where, command):
    """Each `ray job submit` line shipped gives its driver a CPU (it does K-means, pretraining, dequantisation) and
    names paths a job can use: absolute, URIs, or relative with --root "$PWD" (issue 46: the old headers wrote
    into the job's temporary copy and read ../shared, which is not there)."""
    assert "--entrypoint-num-cpus" in command, f"{where}: no --entrypoint-num-cpus"
    load_entrypoint(command.split(" -- ", 1)[1])  # raises a ConfigError naming the flag otherwise


def test_cluster_heads_schedule_nothing_and_gpu_node_types_declare_their_gpus():
    for name in KUBERAY:
        assert kuberay_cluster(name)["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", name
    job = yaml.safe_load((CLUSTER / "kuberay-rayjob.yaml").read_text())["spec"]
    assert job["entrypointNumCpus"] >= 1
    for name in LAUNCHERS:
        cfg = yaml.safe_load((CLUSTER / name).read_text())
        assert cfg["available_node_types"][cfg["head_node_type"]]["resources"] == {"CPU": 0}, name
        assert all("--num-cpus=0" in c for c in cfg["head_start_ray_commands"] if "ray start" in c), name
        if cfg["provider"]["type"] == "gcp":  # GCP, unlike AWS, does not detect accelerators
            gpu = [t for t in cfg["available_node_types"].values() if t["node_config"].get("guestAccelerators")]
            assert gpu and all(t["resources"].get("GPU") == t["node_config"]["guestAccelerators"][0]
                               ["acceleratorCount"] for t in gpu), name


def test_relative_paths_of_a_job_resolve_against_its_root_or_are_refused(tmp_path):
    from puma_ray.config import SweepConfig

    cfg = SweepConfig(data="runs/d", source=["runs/s", "s3://b/s"], target_model="Org/model", space="tune_spaces/ci.yaml",
                      out="runs/sweep")
    resolved = job_paths(cfg, str(tmp_path))
    assert resolved.out == str(tmp_path / "runs" / "sweep") and resolved.data == str(tmp_path / "runs" / "d")
    assert resolved.source == [str(tmp_path / "runs" / "s"), "s3://b/s"]
    with pytest.raises(ConfigError, match="^--out runs/sweep: a relative output path"):
        job_paths(cfg, None, cwd=REPO)
    with pytest.raises(ConfigError, match="^--data runs/d: a relative path that is not in the job's copy"):
        job_paths(SweepConfig(**{**cfg.to_dict(), "out": "/abs/sweep"}), None, cwd=REPO)
    kept = job_paths(SweepConfig(**{**cfg.to_dict(), "out": "/abs/sweep", "data": "/abs/d", "source": ["s3://b/s"]}),
                     None, cwd=REPO)
    assert kept.space == "tune_spaces/ci.yaml" and kept.target_model == "Org/model"  # in the checkout; a hub id
    assert split_root(["--root", "/r", "--out", "x"]) == ("/r", ["--out", "x"])
    # kept with a root too: a file only the uploaded checkout holds, a hub id, `users: all`; and an optional input
    rooted = job_paths(SweepConfig(**{**cfg.to_dict(), "data": "d"}), str(tmp_path), cwd=REPO)
    assert rooted.space == "tune_spaces/ci.yaml" and rooted.target_model == "Org/model"
    from puma_ray.config import AdapterStageConfig, DemoConfig

    adapter = AdapterStageConfig(data="/abs/d", source=["/abs/s"], target_model="/abs/m", out="/abs/a", users="all")
    assert job_paths(adapter, None, cwd=REPO).users == "all" and job_paths(adapter, str(tmp_path)).users == "all"
    assert job_paths(DemoConfig(out="/abs/demo"), None, cwd=tmp_path).movielens == "../shared/data/ml-100k"
