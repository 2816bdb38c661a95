# .venv/bin/python benchmarks/migrate_throughput.py --prompts 1000000 --work /tmp/puma-bench-migrate [--dtype float32 bfloat16]
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
With several --dtype (default float32 and bfloat16) each is measured in the same run, the
bfloat16 prompts are compared with the float32 ones of the same shards (relative L2 error per
prompt), and the last line is one JSON object with every rate and the bf16 / fp32 speedup.
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

from puma_ray.core.modules import AdapterConfig, MigrationAdapter, RatingHead, adapter_param_count  # noqa: E402
from puma_ray.data.schema import file_sha256  # noqa: E402
from puma_ray.migrate.migration import ShardMigrator  # noqa: E402
from puma_ray.runtime.runs import setup_logging  # noqa: E402
from puma_ray.store.prompt_store import finalize, read_manifest, write_shard  # noqa: E402

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


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def matmul_limit(batch: int, threads: int, dtype: str, seconds: float = 10.0) -> float:
    """Sustained FLOP/s of torch.mm over the adapter's 8 linear shapes at this batch size, in `dtype`."""
    torch.set_num_threads(threads)
    shapes = [(DS, WIDTH), (WIDTH, DS), (DS, WIDTH), (WIDTH, DT), (DT, WIDTH), (WIDTH, DT), (DT, WIDTH), (WIDTH, DT)]
    mats = [(torch.randn(batch, a).to(DTYPES[dtype]), torch.randn(a, b).to(DTYPES[dtype])) for a, b in shapes]
    flops_per_round = sum(2.0 * batch * a * b for a, b in shapes)
    for x, w in mats:  # warm-up
        torch.mm(x, w)
    rounds, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for x, w in mats:
            torch.mm(x, w)
        rounds += 1
    return rounds * flops_per_round / (time.perf_counter() - t0)


def single_process(adapter: Path, store: Path, out: Path, shards: int, batch: int, threads: int,
                   dtype: str) -> tuple[int, float]:
    """The same ShardMigrator, called directly on the first `shards` shards: (prompts, seconds)."""
    shutil.rmtree(out, ignore_errors=True)
    (out / "_progress").mkdir(parents=True)
    m = read_manifest(store)
    mig = ShardMigrator(str(adapter), [str(store)], str(out), 1, [DS], batch, threads, dtype=dtype)
    t0, rows = time.perf_counter(), 0
    for i, s in enumerate(m["shards"][:shards]):
        rows += mig.migrate_shard(i, str(store / s["name"]), s["sha256"])["source_rows"]
    return rows, time.perf_counter() - t0


def shard_prompts(out: Path, shards: int) -> np.ndarray:
    """The migrated prompts of the first `shards` target shards, in row order."""
    import pyarrow.parquet as pq

    return np.concatenate([pq.read_table(out / f"part-{i:05d}.parquet").column("prompt").combine_chunks()
                           .values.to_numpy().reshape(-1, DT) for i in range(shards)])


def measure(args, work: Path, params: int, threads: int, dtype: str) -> dict:
    """Matmul limit, single-process and Ray Data rates of one dtype (printed as it goes)."""
    flop_per_prompt = 2.0 * params
    limit = matmul_limit(args.batch_size, threads, dtype)
    print(f"[bench] {dtype}: matmul limit at the adapter's shapes (batch {args.batch_size}, {threads} threads): "
          f"{limit / 1e9:.1f} GFLOP/s = {limit / flop_per_prompt:.0f} prompts/s", flush=True)
    rows, secs = single_process(work / "adapter", work / "source", work / f"single-{dtype}", args.single_shards,
                                args.batch_size, threads, dtype)
    single = rows / secs
    print(f"[bench] {dtype}: single process, {rows:,} prompts: {single:.0f} prompts/s, "
          f"{single * flop_per_prompt / 1e9:.1f} GFLOP/s", flush=True)
    shutil.rmtree(work / "target", ignore_errors=True)
    # in a child process with its own local Ray: the peak RSS covers exactly the migration's process tree
    out, wall, mem = run_cli_measured("migrate", "--adapter", str(work / "adapter"), "--source", str(work / "source"),
                                       "--out", str(work / "target"), "workers=1", f"cpus_per_worker={threads}",
                                       f"batch_size={args.batch_size}", f"dtype={dtype}")
    rate = out["users"] / wall
    achieved = rate * flop_per_prompt
    print(f"[bench] {dtype}: Ray Data migrate of {out['users']:,} prompts 2048->3072 (child process, Ray start "
          f"included): {wall:.0f} s, {rate:.0f} prompts/s, {achieved / 1e9:.1f} GFLOP/s achieved; achieved / matmul "
          f"limit = {achieved / limit:.2f}; Ray Data overhead vs the single-process pass = "
          f"{100 * (single / rate - 1):.1f}%; peak RSS (process tree) {mem.peak_bytes / 1e9:.2f} GB", flush=True)
    return {"prompts": out["users"], "wall_s": round(wall, 1), "prompts_per_s": round(rate, 1),
            "single_process_prompts_per_s": round(single, 1), "achieved_gflops": round(achieved / 1e9, 1),
            "matmul_limit_gflops": round(limit / 1e9, 1), "fraction_of_matmul_limit": round(achieved / limit, 3),
            "peak_rss_gb": round(mem.peak_bytes / 1e9, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prompts", type=int, default=1_000_000)
    ap.add_argument("--shard-rows", type=int, default=20_000)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--single-shards", type=int, default=3, help="shards of the single-process reference pass")
    ap.add_argument("--dtype", nargs="+", choices=list(DTYPES), default=["float32", "bfloat16"])
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
    results = {d: measure(args, work, params, threads, d) for d in args.dtype}
    line = {"bench": "migrate_throughput", "adapter_params": params, "threads": threads, **results}
    if {"float32", "bfloat16"} <= set(results):
        y32, y16 = (shard_prompts(work / f"single-{d}", args.single_shards) for d in ("float32", "bfloat16"))
        rel = np.linalg.norm(y16 - y32, axis=1) / np.linalg.norm(y32, axis=1)
        line.update({"speedup_bf16_vs_fp32": round(results["bfloat16"]["prompts_per_s"] /
                                                   results["float32"]["prompts_per_s"], 2),
                     "bf16_rel_l2_error_mean": float(f"{rel.mean():.3g}"),
                     "bf16_rel_l2_error_max": float(f"{rel.max():.3g}"), "compared_prompts": int(len(rel))})
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
