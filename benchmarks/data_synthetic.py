# .venv/bin/python benchmarks/data_synthetic.py --users 1000000 --out /tmp/puma-bench-data
"""Throughput and memory of `puma-ray data --source synthetic` at scale (a benchmark, not a test).

Prints rows/s, users/s and the peak resident memory of the whole process tree (driver +
raylet + Ray workers), measured in one run. Results are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from memory import TreePeakRSS  # noqa: E402

from puma_ray.config import DataConfig  # noqa: E402
from puma_ray.runtime.ray_utils import init_ray  # noqa: E402
from puma_ray.runtime.runs import setup_logging  # noqa: E402
from puma_ray.stages.data import run_data  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--users-per-shard", type=int, default=20_000)
    ap.add_argument("--out", default="/tmp/puma-bench-data")
    args = ap.parse_args()
    setup_logging()
    with TreePeakRSS() as mem:
        init_ray()
        t0 = time.perf_counter()
        summary = run_data(DataConfig(source="synthetic", out=args.out, users=args.users, items=args.items,
                                      users_per_shard=args.users_per_shard))
        wall = time.perf_counter() - t0
    result = {"users": summary["users"], "rows": summary["rows"], "rows_generated": summary["rows_read"],
              "wall_s": round(wall, 1), "rows_per_s": round(summary["rows_read"] / wall),
              "users_per_s": round(args.users / wall), "peak_rss_tree_gb": round(mem.peak_bytes / 2**30, 2)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
