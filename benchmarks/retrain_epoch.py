# .venv/bin/python benchmarks/retrain_epoch.py --users 100000 --work /tmp/puma-bench-retrain [--workers 2]
"""One epoch of full retraining (`puma-ray prompts`) over every user of a synthetic dataset (a benchmark,
not a test): the baseline every cost figure is divided by, at scale.

Builds (or reuses, same --users) synthetic data (`puma-ray data --source synthetic`, ~35 interactions per
user) and a tiny llama of the catalogue (no pretraining: speed and memory do not depend on its weights),
then runs `puma-ray prompts --epochs 1` on --workers Ray Train workers while sampling the resident memory
of every process of the tree every 0.25 s. Prints one JSON line: train rows, wall and training seconds
(wall less the run's measured start-up), train rows/s, the cost record's per-process peaks (driver and
largest worker, from each process's own getrusage) and the sampled peaks (tree sum; largest process
of each kind).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from evaluate_scale import synthetic_workspace  # noqa: E402
from memory import TreePeakRSS  # noqa: E402
from puma_ray.config import PromptsConfig  # noqa: E402
from puma_ray.runtime.runs import read_costs  # noqa: E402
from puma_ray.stages.prompts import run_prompts  # noqa: E402

GB = 2**30


def by_kind(peaks: dict[str, int]) -> dict[str, float]:
    """Largest sampled RSS (GB) per kind of process: Ray Train worker, controller, Ray Data/idle worker, driver."""
    kinds = {"train_worker": "RayTrainWorker", "train_controller": "TrainController", "driver": "retrain_epoch"}
    out = {k: round(max((v for t, v in peaks.items() if needle in t), default=0) / GB, 2)
           for k, needle in kinds.items()}
    out["largest_any"] = round(max(peaks.values(), default=0) / GB, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--work", default="/tmp/puma-bench-retrain")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    work = Path(args.work)
    data, model = synthetic_workspace(work, args.users)
    out = work / f"prompts-{time.time_ns():x}"
    with TreePeakRSS() as mem:
        t0 = time.perf_counter()
        summary = run_prompts(PromptsConfig(data=str(data), model=model, out=str(out), workers=args.workers,
                                            epochs=1, lr=5e-3))
        wall = time.perf_counter() - t0
    cost = read_costs(out)[-1]
    train_s = wall - cost["startup_s"]
    print(json.dumps({
        "users": args.users, "workers": args.workers, "train_rows": cost["samples"], "wall_s": round(wall, 1),
        "startup_s": round(cost["startup_s"], 1), "train_rows_per_s": round(cost["samples"] / train_s),
        "driver_peak_rss_gb": round(cost["extra"]["driver_peak_memory_bytes"] / GB, 2),
        "worker_peak_rss_gb": round(cost["extra"]["worker_peak_memory_bytes"] / GB, 2),
        "sampled_peak_rss_gb": by_kind(mem.peak_process_bytes), "peak_rss_tree_gb": round(mem.peak_bytes / GB, 2),
        "valid_rmse": summary["valid_rmse"]}), flush=True)


if __name__ == "__main__":
    main()
