# .venv/bin/python benchmarks/select_scale.py --users 1000000 --dim 2048 --compare-users 100000 --work /tmp/puma-bench-select
"""`puma-ray select` at scale (a benchmark, not a test).

1. Builds (once, cached in --work) a synthetic dataset of --users users and a prompt store
   of d = --dim prompts drawn around 16 hidden centres.
2. Times `puma-ray select --strategy puma --budget B` on it in a child process (with its
   own local Ray) and samples the peak resident memory of that whole process tree
   (driver + raylet + GCS + dashboard + Ray workers).
3. At --compare-users users: the same selection against scikit-learn's KMeans fitted on
   the full in-memory prompt matrix (the reference code's approach; run in a child
   process so its memory is its own), with the ratios and the agreement of the two
   clusterings (adjusted Rand index).
Results are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from memory import run_cli_measured  # noqa: E402

from puma_ray.store.prompt_store import finalize, iter_prompts, write_shard  # noqa: E402

GB = 1e9


def cli(*args: str) -> dict:
    """Run a puma-ray command in its own process (and its own local Ray); return its JSON summary."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-m", "puma_ray.cli", *args], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"puma-ray {args[0]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def make_dataset(out: Path, users: int) -> None:
    if not (out / "manifest.json").is_file():
        cli("data", "--source", "synthetic", "--out", str(out), f"users={users}", "items=2000",
            "mean_interactions=10", "min_user_interactions=2", "min_item_interactions=0", "users_per_shard=50000",
            "seed=1")


def make_store(out: Path, data: Path, dim: int, seed: int, shard_users: int = 20000) -> None:
    """Prompts [n, 1, dim] float32 around 16 random centres, in store order of users.parquet."""
    if (out / "manifest.json").is_file():
        return
    ids = pq.read_table(data / "users.parquet", columns=["user_id"]).column(0).to_pylist()
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(16, dim)).astype(np.float32)
    shards = []
    for i, start in enumerate(range(0, len(ids), shard_users)):
        chunk = ids[start:start + shard_users]
        x = centres[rng.integers(0, 16, len(chunk))] + rng.normal(scale=0.7, size=(len(chunk), dim)).astype(np.float32)
        shards.append(write_shard(out, i, chunk, x[:, None, :])[0])
    model = {"name": f"synthetic-{dim}", "family": "synthetic", "hidden_size": dim, "fingerprint": "bench"}
    finalize(out, task="rating", prompt_len=1, dim=dim, model=model, lineage=[{"step": "trained"}],
             dataset_fingerprint=None, shards=shards, quarantined=[])


def timed_select(data: Path, store: Path, out: Path, budget: int) -> dict:
    summary, wall, mem = run_cli_measured("select", "--data", str(data), "--prompts", str(store), "--out", str(out),
                                           "--strategy", "puma", f"budget={budget}", "clusters=10", "seed=0")
    return {"wall_s": wall, "peak_rss_gb": mem.peak_bytes / GB, "timings_s": summary["timings_s"],
            "stage_wall_s": summary["wall_s"]}


def sklearn_child(store: str, labels_out: str) -> None:
    """Child process: the reference's approach, every prompt in memory then KMeans.fit."""
    from sklearn.cluster import KMeans

    t0 = time.perf_counter()
    ids, parts = [], []
    for users, x in iter_prompts(store):
        ids += users
        parts.append(x.reshape(len(users), -1))
    matrix = np.concatenate(parts)
    t_load = time.perf_counter() - t0
    labels = KMeans(n_clusters=10, random_state=0, n_init=1).fit_predict(matrix)
    wall = time.perf_counter() - t0
    import pyarrow as pa

    pq.write_table(pa.table({"user_id": ids, "cluster": labels.astype(np.int64)}), labels_out)
    print(json.dumps({"wall_s": wall, "load_s": t_load, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--budget", type=int, default=2000)
    ap.add_argument("--compare-users", type=int, default=100_000, help="0 skips the scikit-learn comparison")
    ap.add_argument("--work", default="/tmp/puma-bench-select")
    ap.add_argument("--sklearn-child", nargs=2, metavar=("STORE", "LABELS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.sklearn_child:
        return sklearn_child(*args.sklearn_child)
    work = Path(args.work)
    results = {}
    for n in [args.users] + ([args.compare_users] if args.compare_users else []):
        data, store = work / f"data-{n}", work / f"store-{n}-{args.dim}"
        t0 = time.perf_counter()
        make_dataset(data, n)
        make_store(store, data, args.dim, seed=n)
        print(f"[bench] inputs for {n} users ready ({time.perf_counter() - t0:.0f} s, cached in {work})", flush=True)
        results[n] = timed_select(data, store, work / f"select-{n}", args.budget)
        r = results[n]
        print(f"[bench] select puma {args.budget} of {n:,} users, d={args.dim}: {r['wall_s']:.1f} s "
              f"(process start to exit; the stage itself {r['stage_wall_s']:.1f} s), "
              f"peak RSS (process tree) {r['peak_rss_gb']:.2f} GB, stages {r['timings_s']}", flush=True)
    if args.compare_users:
        n = args.compare_users
        labels = work / f"sklearn-labels-{n}.parquet"
        child = subprocess.run([sys.executable, __file__, "--sklearn-child", str(work / f"store-{n}-{args.dim}"),
                                str(labels)], capture_output=True, text=True, check=True)
        sk = json.loads(child.stdout.strip().splitlines()[-1])
        from sklearn.metrics import adjusted_rand_score

        ours = pq.read_table(work / f"select-{n}" / "assignments.parquet").to_pandas().set_index("user_id")
        theirs = pq.read_table(labels).to_pandas().set_index("user_id")
        ari = adjusted_rand_score(theirs["cluster"], ours.loc[theirs.index, "cluster"])
        r = results[n]
        km = r["timings_s"]["kmeans"]
        print(f"[bench] {n:,} users: scikit-learn KMeans on the in-memory matrix {sk['wall_s']:.1f} s "
              f"(load {sk['load_s']:.1f} s), peak RSS {sk['peak_rss_gb']:.2f} GB")
        print(f"[bench] {n:,} users: streamed mini-batch K-means {km:.1f} s (whole select {r['wall_s']:.1f} s, "
              f"peak RSS {r['peak_rss_gb']:.2f} GB incl. Ray)")
        print(f"[bench] ratio scikit-learn / ours: K-means time {sk['wall_s'] / km:.2f}x, "
              f"whole select {sk['wall_s'] / r['wall_s']:.2f}x, memory {sk['peak_rss_gb'] / r['peak_rss_gb']:.2f}x; "
              f"clusterings agree (adjusted Rand) {ari:.3f}")


if __name__ == "__main__":
    main()
