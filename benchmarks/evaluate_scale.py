# .venv/bin/python benchmarks/evaluate_scale.py --users 1000000 --work /tmp/puma-bench-eval [--workers 2] [--split test]
"""`puma-ray evaluate` of a large prompt store over every interaction (a benchmark, not a test).

Builds (or reuses, same --users) synthetic data at --users users (`puma-ray data --source
synthetic`: ~35 interactions per user), a tiny llama of the catalogue (`puma-ray models`, no
pretraining: speed and memory do not depend on its weights) and a store of seeded random
prompts for every user with a rating head; then times `evaluate` over the train, valid and
test splits in one pass, as a user runs it: `puma-ray evaluate` in a child process with its
own local Ray, sampling the memory of that whole process tree (driver + raylet + GCS + Ray
workers) every second. Prints one JSON line with rows, rows_per_s, wall_s, peak_rss_tree_gb
(resident pages summed over processes: the object store's shared pages count once per process
that maps them), peak_pss_tree_gb (proportional: each shared page counted once) and each kind
of process's peak PSS (only the evaluate run is sampled).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import ray  # noqa: E402
from memory import run_cli_measured  # noqa: E402
from puma_ray.config import DataConfig, ModelsConfig  # noqa: E402
from puma_ray.core.hf import describe_model  # noqa: E402
from puma_ray.core.modules import RatingHead  # noqa: E402
from puma_ray.runtime.ray_utils import init_ray  # noqa: E402
from puma_ray.runtime.runs import setup_logging  # noqa: E402
from puma_ray.stages.data import run_data  # noqa: E402
from puma_ray.stages.models import run_models  # noqa: E402
from puma_ray.store.prompt_store import finalize, read_manifest, write_shard  # noqa: E402


def make_store(out: Path, data: Path, model: str, shard_rows: int = 50_000, seed: int = 0) -> int:
    """Seeded uniform(-0.1, 0.1) prompts (the paper's init) for every user of `data`, with a rating head."""
    users = pq.read_table(data / "users.parquet", columns=["user_id"]).column("user_id").to_pylist()
    if (out / "manifest.json").is_file() and read_manifest(out)["num_users"] == len(users):
        return len(users)
    shutil.rmtree(out, ignore_errors=True)
    desc = describe_model(model)
    rng = np.random.default_rng(seed)
    shards = []
    for i, lo in enumerate(range(0, len(users), shard_rows)):
        part = users[lo:lo + shard_rows]
        x = rng.uniform(-0.1, 0.1, (len(part), 1, desc["hidden_size"])).astype(np.float32)
        shards.append(write_shard(out, i, part, x)[0])
    torch.manual_seed(seed)
    save_file(RatingHead().state_dict(), out / "head.safetensors")
    finalize(out, task="rating", prompt_len=1, dim=desc["hidden_size"], model=desc, lineage=[{"step": "random"}],
             dataset_fingerprint=None, shards=shards, quarantined=[],
             head={"weights": "head.safetensors", "task": "rating", "lam": 0.2, "template": "rating_amazon",
                   "yes_minus_no": False})
    return len(users)


def synthetic_workspace(work: Path, users: int) -> tuple[Path, str]:
    """(data, model) of a scale benchmark, reused when there: synthetic data of `users` users (~35 interactions
    each) and a tiny llama of its catalogue without pretraining (speed and memory do not depend on weights).
    Starts logging and Ray."""
    setup_logging()
    init_ray()
    data = work / f"data-{users}"
    if not (data / "manifest.json").is_file():
        run_data(DataConfig(source="synthetic", out=str(data), users=users, items=2000))
    return data, run_models(ModelsConfig(family="llama", data=str(data), pretrain_steps=0,
                                         out=str(work / "model")))["path"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--work", default="/tmp/puma-bench-eval")
    ap.add_argument("--workers", type=int, default=2, help="scoring actors")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--split", nargs="+", default=["train", "valid", "test"], choices=["train", "valid", "test"],
                    help="splits scored (all three: every interaction; test alone: the per-user part of the memory "
                         "at a fraction of the rows)")
    args = ap.parse_args()
    work = Path(args.work)
    data, model = synthetic_workspace(work, args.users)
    users = make_store(work / f"store-{args.users}", data, model)
    ray.shutdown()  # the evaluation starts its own Ray, as `puma-ray evaluate` does
    shutil.rmtree(work / "eval", ignore_errors=True)
    summary, wall, mem = run_cli_measured(
        "evaluate", "--data", str(data), "--model", model, "--prompts", str(work / f"store-{args.users}"),
        "--split", *args.split, "--out", str(work / "eval"), f"workers={args.workers}",
        f"batch_size={args.batch_size}", pss=True, interval=1.0)
    splits = summary.get("splits") or {args.split[0]: summary}  # one split: its report is the summary
    rows = sum(s["n"] for s in splits.values())
    print(json.dumps({"users": users, "splits": args.split, "rows": rows, "workers": args.workers,
                      "wall_s": round(wall, 1),
                      "rows_per_s": round(rows / wall), "peak_rss_tree_gb": round(mem.peak_bytes / 2**30, 2),
                      "peak_pss_tree_gb": round(mem.peak_pss_bytes / 2**30, 2),
                      "peak_pss_gb_by_process": by_kind(mem.peak_process_pss),
                      "rmse": {k: v["rmse"] for k, v in splits.items()}}), flush=True)


def by_kind(peaks: dict[str, int]) -> dict[str, float]:
    """Largest peak (GB) per kind of process: its program's name (`ray::ReportingScorer`, raylet, ...), for
    Python its script or module (puma_ray.cli = the driver)."""
    kinds: dict[str, float] = {}
    for title, peak in peaks.items():
        words = [w.rsplit("/", 1)[-1] for w in title.split()] or ["?"]
        kind = next((w for w in words[1:] if not w.startswith("-")), words[0]) if "python" in words[0] else words[0]
        kinds[kind] = max(kinds.get(kind, 0.0), round(peak / 2**30, 2))
    return kinds

if __name__ == "__main__":
    main()
