"""Faults on a multi-node cluster: a head and two worker nodes on this machine (`ray.cluster_utils.Cluster`,
each node its own raylet and object store), and a worker node killed from outside while a stage runs on it.

- `migrate`: the node running the migration actor dies after some shards; the run completes, every user
  exactly once, checksums verified.
- `adapter`: a node running a Ray Train worker dies after the first checkpoint; Ray Train restarts the
  workers from that checkpoint and the run ends within noise of the same run uninterrupted.
- a remote `--out` (S3 API on 127.0.0.1): `migrate`'s actors on both worker nodes write into the staging
  directory every node sees (here: this machine's disk), which is published whole; the same store as a path.

The head has no CPUs, so every task, actor and Train worker runs on a worker node that the tests may kill.
"""

from __future__ import annotations

import json
import threading

import psutil
import pytest
from conftest import kill_when

from puma_ray.config import MigrateConfig
from puma_ray.stages.adapter import run_adapter
from puma_ray.stages.migrate import run_migrate
from puma_ray.store.prompt_store import iter_prompts, verify

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def cluster(workspace):
    """Head (0 CPUs) + two worker nodes of 2 CPUs; this process's driver joins it. The session's local Ray is
    stopped for the module and started again after it (stages join whatever Ray the process runs)."""
    import ray
    from ray.cluster_utils import Cluster

    from puma_ray.runtime.ray_utils import init_ray

    ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for _ in range(2):
        c.add_node(num_cpus=2, object_store_memory=200 * 1024**2)
    c.wait_for_nodes()
    ray.init(address=c.address)
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()
        init_ray(num_cpus=2)


def runs(node, title: str) -> bool:
    """Whether a process of this cluster node is titled `ray::<...title...>`."""
    try:
        children = psutil.Process(node.all_processes["raylet"][0].process.pid).children(recursive=True)
    except psutil.Error:
        return False
    for p in children:
        try:
            if title in " ".join(p.cmdline()).split(" ")[0]:
                return True
        except psutil.Error:
            pass
    return False


class NodeKiller:
    """Removes (SIGKILL, no grace) the worker node whose processes include one titled `ray::<title>`."""

    def __init__(self, cluster, title: str):
        self.cluster, self.title, self.removed = cluster, title, []

    def node_running(self):
        return next((node for node in self.cluster.worker_nodes if runs(node, self.title)), None)

    def __call__(self) -> list:
        """SIGKILL every process of the node at once, as a machine that fails takes its workers with it (a
        raylet killed alone leaves its workers computing until they next call it), then the node's own."""
        node = self.node_running()
        if node is not None:
            for p in psutil.Process(node.all_processes["raylet"][0].process.pid).children(recursive=True):
                try:
                    p.kill()
                except psutil.Error:
                    pass
            self.cluster.remove_node(node, allow_graceful=False)
            self.removed.append(node)
        return []  # kill_when's own kill list: the node is gone already


def registered_checkpoints(out) -> int:
    """Checkpoints Ray Train's controller has registered (a checkpoint folder exists a moment before: a worker
    killed in that moment restarts from the checkpoint before it: the controller resumes from what it registered)."""
    for snapshot in (out / "_train").glob("*/checkpoint_manager_snapshot.json"):
        try:
            return len(json.loads(snapshot.read_text())["checkpoint_results"])
        except (ValueError, KeyError):  # being written
            return 0
    return 0


@pytest.fixture(scope="module")
def reference_adapter(cluster, workspace):
    """test_adapter.py's 2-worker adapter (trained here if that module did not run): the uninterrupted run the
    interrupted one is compared with, and the adapter `migrate` runs."""
    from test_adapter import acfg

    if not (workspace / "a2" / "adapter.json").is_file():
        run_adapter(acfg(workspace, "a2"))
    return workspace / "a2", json.loads((workspace / "a2" / "adapter.json").read_text())


def test_migrate_to_s3_on_three_nodes_publishes_the_store_its_actors_wrote_on_both_workers(cluster, workspace,
                                                                                          reference_adapter, s3,
                                                                                          tmp_path):
    """First in the module: both worker nodes are alive (the fault tests below remove one)."""
    import ray
    from conftest import BUCKET
    from test_migration import restore

    from puma_ray.runtime import storage

    assert len([n for n in ray.nodes() if n["Alive"]]) == 3
    adapter, _ = reference_adapter
    store = restore(workspace / "src", tmp_path / "s", shards=8)
    cfg = dict(adapter=str(adapter), source=[str(store)], workers=2, batch_size=8)
    plain = run_migrate(MigrateConfig(**cfg, out=str(tmp_path / "plain")))
    seen: set[int] = set()  # worker nodes (by index) on which a migration actor's process was seen
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.05):
            seen.update(i for i, node in enumerate(cluster.worker_nodes) if runs(node, "ShardMigrator"))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        remote = run_migrate(MigrateConfig(**cfg, out=f"s3://{BUCKET}/multinode/target"))
    finally:
        stop.set()
        watcher.join()
    assert remote["users"] == plain["users"] and remote["out"] == f"s3://{BUCKET}/multinode/target"
    assert seen == {0, 1}, f"migration actors ran on worker nodes {seen}, not on both"
    local = tmp_path / "published"
    storage.download(s3, f"{BUCKET}/multinode/target", storage.listing(s3, f"{BUCKET}/multinode/target"), local)
    assert verify(local)["num_users"] == plain["users"]  # every shard the manifest names, checksums verified
    got = {u: p.tobytes() for us, ps in iter_prompts(local) for u, p in zip(us, ps)}
    want = {u: p.tobytes() for us, ps in iter_prompts(tmp_path / "plain") for u, p in zip(us, ps)}
    assert got == want
    assert storage.listing(s3, f"{BUCKET}/multinode/target.partial") == []


def test_a_killed_worker_node_during_migrate_moves_every_user_exactly_once(cluster, workspace, reference_adapter,
                                                                           tmp_path):
    from test_migration import restore

    adapter, _ = reference_adapter
    store = restore(workspace / "src", tmp_path / "s", shards=40)  # many small shards: the kill lands mid-run
    out = tmp_path / "m"
    killer = NodeKiller(cluster, "ShardMigrator")
    done_at_kill = []

    def ready() -> bool:
        done = len(list((out / "_progress").glob("part-*.json")))
        if done >= 2 and killer.node_running() is not None:
            done_at_kill.append(done)
            return True
        return False

    watcher = kill_when(ready, killer, timeout=300, poll=0.05)
    res = run_migrate(MigrateConfig(adapter=str(adapter), source=[str(store)], out=str(out), batch_size=8))
    watcher.join(timeout=5)
    assert killer.removed, "no node was killed"
    assert done_at_kill[0] < 40, "the node died after the migration had finished: not a mid-run fault"
    assert len(cluster.worker_nodes) == 1
    m = verify(out)  # every shard's checksum
    users = [u for us, _ in iter_prompts(out) for u in us]
    source_users = [u for us, _ in iter_prompts(store) for u in us]
    assert len(users) == len(set(users)) == m["num_users"] == res["users"] and sorted(users) == sorted(source_users)
    assert not list(out.glob("*.tmp")) and not (out / "_progress").exists()


def test_a_killed_worker_node_during_adapter_training_resumes_from_its_checkpoint(cluster, workspace,
                                                                                  reference_adapter, tmp_path):
    from test_adapter import acfg

    if len(cluster.worker_nodes) < 2:
        cluster.add_node(num_cpus=2, object_store_memory=200 * 1024**2)
        cluster.wait_for_nodes()
    reference_dir, reference = reference_adapter
    out = tmp_path / "adapter"
    killer = NodeKiller(cluster, "RayTrainWorker")
    watcher = kill_when(lambda: registered_checkpoints(out) >= 1 and killer.node_running() is not None, killer,
                        timeout=300)
    res = run_adapter(acfg(workspace, out, max_failures=1))  # the reference's settings, plus one failure allowed
    watcher.join(timeout=5)
    assert killer.removed, "no node was killed"
    assert [c["epoch"] for c in res["curve"]] == [0, 1]
    # epoch 0 ran before the kill and came back from its checkpoint; epoch 1 ran on workers started after it
    last = max((out / "_train").rglob("state.json"), key=lambda p: json.loads(p.read_text())["epoch"])
    history = json.loads(last.read_text())
    first, second = (h["ready_unix"] for h in history["history"])
    assert first < second, "the restarted workers trained epoch 0 again instead of resuming from its checkpoint"
    # each rank checkpointed its own optimizer state (its ZeRO-2 partition), which the restarted ranks loaded
    assert sorted(p.name for p in last.parent.glob("adapter-opt-r*.pt")) == ["adapter-opt-r00000.pt",
                                                                               "adapter-opt-r00001.pt"]
    meta = json.loads((out / "adapter.json").read_text())
    assert meta["adapter"] == reference["adapter"] and meta["users"] == reference["users"]
    # within noise of the uninterrupted run (same seed; dropout draws and data order after a restart differ)
    assert abs(meta["valid_rmse"] - reference["valid_rmse"]) <= 0.02 * reference["valid_rmse"], \
        (meta["valid_rmse"], reference["valid_rmse"])
