# .venv/bin/python benchmarks/migrate_throughput.py --prompts 1000000 --work /tmp/puma-bench-migrate
"""Throughput of `puma-ray migrate` on CPU (a benchmark, not a test).

Migrates --prompts synthetic prompts d_s = 2048 -> d_t = 3072 with the paper-size adapter
(width 4096, 88.1 M parameters, random weights) and prints, all measured in this run:
  - prompts/s and achieved FLOP/s of the migration through Ray Data (`run_migrate`);
  - the machine's matmul FLOP/s at the adapter's own shapes (torch.mm, same threads):
    the physical limit, and the ratio achieved / limit;
  - a single-process pass over the same kind of shards (no Ray) and Ray Data's overhead;
  - the peak resident memory of the migration's whole process tree (a child process with
    its own local Ray: driver + raylet + GCS + the actor).
The source store is built once in --work (--prompts x 8 KB) and reused.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from memory import run_cli_measured  # noqa: E402

from puma_ray.data.schema import file_sha256  # noqa: E402
from puma_ray.migration import ShardMigrator  # noqa: E402
from puma_ray.modules import AdapterConfig, MigrationAdapter, RatingHead, adapter_param_count  # noqa: E402
from puma_ray.prompt_store import finalize, read_manifest, write_shard  # noqa: E402
from puma_ray.runs import setup_logging  # noqa: E402

DS, DT, WIDTH = 2048, 3072, 4096


def make_store(out: Path, n: int, shard_rows: int, seed: int = 0) -> None:
    if (out / "manifest.json").is_file() and read_manifest(out)["num_users"] == n:
        return
    shutil.rmtree(out, ignore_errors=True)
    rng = np.random.default_rng(seed)
    shards = []
    for i, start in enumerate(range(0, n, shard_rows)):
        rows = min(shard_rows, n - start)
        x = rng.standard_normal((rows, 1, DS), dtype=np.float32)
        shards.append(write_shard(out, i, [f"u{j:09d}" for j in range(start, start + rows)], x)[0])
    model = {"name": "synthetic-2048", "family": "synthetic", "hidden_size": DS, "fingerprint": "bench-2048"}
    finalize(out, task="rating", prompt_len=1, dim=DS, model=model, lineage=[{"step": "trained"}],
             dataset_fingerprint=None, shards=shards, quarantined=[])


def make_adapter(out: Path, store_model: dict) -> int:
    out.mkdir(parents=True, exist_ok=True)
    cfg = AdapterConfig(DS, DT, width=WIDTH)
    torch.manual_seed(0)
    save_file(MigrationAdapter(cfg).state_dict(), out / "adapter.safetensors")
    save_file(RatingHead().state_dict(), out / "head.safetensors")
    meta = {"adapter": cfg.to_dict(), "task": "rating", "template": "rating_amazon", "prompt_len": 1, "lam": 0.2,
            "yes_minus_no": False, "lora": None,
            "target": {"name": "synthetic-3072", "family": "synthetic", "hidden_size": DT, "fingerprint": "bench-3072"},
            "sources": [{"path": "-", "model": store_model, "dim": DS, "lineage": []}],
            "sha256": file_sha256(out / "adapter.safetensors")}
    (out / "adapter.json").write_text(json.dumps(meta, indent=2))
    return adapter_param_count(cfg)


def matmul_limit(batch: int, threads: int, seconds: float = 10.0) -> float:
    """Sustained FLOP/s of torch.mm over the adapter's 8 linear shapes at this batch size."""
    torch.set_num_threads(threads)
    shapes = [(DS, WIDTH), (WIDTH, DS), (DS, WIDTH), (WIDTH, DT), (DT, WIDTH), (WIDTH, DT), (DT, WIDTH), (WIDTH, DT)]
    mats = [(torch.randn(batch, a), torch.randn(a, b)) for a, b in shapes]
    flops_per_round = sum(2.0 * batch * a * b for a, b in shapes)
    for x, w in mats:  # warm-up
        torch.mm(x, w)
    rounds, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for x, w in mats:
            torch.mm(x, w)
        rounds += 1
    return rounds * flops_per_round / (time.perf_counter() - t0)


def single_process(adapter: Path, store: Path, out: Path, shards: int, batch: int, threads: int) -> tuple[int, float]:
    """The same ShardMigrator, called directly on the first `shards` shards: (prompts, seconds)."""
    shutil.rmtree(out, ignore_errors=True)
    (out / "_progress").mkdir(parents=True)
    m = read_manifest(store)
    mig = ShardMigrator(str(adapter), [str(store)], str(out), 1, [DS], batch, threads)
    t0, rows = time.perf_counter(), 0
    for i, s in enumerate(m["shards"][:shards]):
        rows += mig.migrate_shard(i, str(store / s["name"]), s["sha256"])["source_rows"]
    return rows, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prompts", type=int, default=1_000_000)
    ap.add_argument("--shard-rows", type=int, default=20_000)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--single-shards", type=int, default=3, help="shards of the single-process reference pass")
    ap.add_argument("--work", default="/tmp/puma-bench-migrate")
    args = ap.parse_args()
    setup_logging()
    work = Path(args.work)
    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    make_store(work / "source", args.prompts, args.shard_rows)
    params = make_adapter(work / "adapter", read_manifest(work / "source")["model"])
    print(f"[bench] source store of {args.prompts:,} prompts ready ({time.perf_counter() - t0:.0f} s); adapter "
          f"{params / 1e6:.1f} M parameters", flush=True)
    flop_per_prompt = 2.0 * params
    limit = matmul_limit(args.batch_size, threads)
    print(f"[bench] matmul limit at the adapter's shapes (batch {args.batch_size}, {threads} threads): "
          f"{limit / 1e9:.1f} GFLOP/s = {limit / flop_per_prompt:.0f} prompts/s", flush=True)
    rows, secs = single_process(work / "adapter", work / "source", work / "single", args.single_shards,
                                args.batch_size, threads)
    single = rows / secs
    print(f"[bench] single process, {rows:,} prompts: {single:.0f} prompts/s, "
          f"{single * flop_per_prompt / 1e9:.1f} GFLOP/s", flush=True)
    shutil.rmtree(work / "target", ignore_errors=True)
    # in a child process with its own local Ray: the peak RSS covers exactly the migration's process tree
    out, wall, peak = run_cli_measured("migrate", "--adapter", str(work / "adapter"), "--source", str(work / "source"),
                                       "--out", str(work / "target"), "workers=1", f"cpus_per_worker={threads}",
                                       f"batch_size={args.batch_size}")
    rate = out["users"] / wall
    achieved = rate * flop_per_prompt
    print(f"[bench] Ray Data migrate of {out['users']:,} prompts 2048->3072 (child process, Ray start included): "
          f"{wall:.0f} s, {rate:.0f} prompts/s, "
          f"{achieved / 1e9:.1f} GFLOP/s achieved")
    print(f"[bench] achieved / matmul limit = {achieved / limit:.2f} (goal >= 0.7); Ray Data overhead vs the "
          f"single-process pass = {100 * (single / rate - 1):.1f}% ; peak RSS (process tree) "
          f"{peak / 1e9:.2f} GB (goal < 2 GB)")


if __name__ == "__main__":
    main()
