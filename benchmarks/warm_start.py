# .venv/bin/python benchmarks/warm_start.py --bench runs/bench/warm [--png docs/img/warm-start-curve.png]
"""PUMA plus a few epochs of per-user tuning vs full retraining (issue 18, item 2): a reading of a finished
`puma-ray bench ... --warm-epochs N` directory, not a test.

Per seed: full retraining's valid curve (every user, per epoch, from random prompts) and the warm start's
(epoch 0 = the migrated store's valid metric, then each epoch of `prompts --init-from` that store), both against
cumulative device-seconds (retraining: its measured cost spread evenly over its epochs; warm start: the
migration's cost, then the tuning's per epoch). Valid is the curve the runs chose their epochs on; the
comparison that counts is on test (which chooses nothing): the tuned store's test metric minus full
retraining's, paired over seeds with a 95% t-interval, and its cost as a fraction of retraining's. One JSON line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from recycled_init import bench_reading, curve  # noqa: E402
from puma_ray.experiments.stats import mean_std, paired_interval  # noqa: E402

RETRAINED = "full retraining"


def one_seed(runs: pd.DataFrame, seed: int, warm: str, metric: str, split: str) -> dict:
    rows = runs[runs["seed"] == seed].set_index("method")
    trial = Path(rows.loc[warm, "trial_path"])
    full = curve(trial.parent / "retrained" / "store", f"valid_{metric}")  # the seed's directory holds both
    step = json.loads((Path(rows.loc[warm, "warm_store"]) / "manifest.json").read_text())["lineage"][-1]
    tuned = [row[f"valid_{metric}"] for row in step.get("curve", []) if row["epoch"] >= 0]
    start = next((row[f"valid_{metric}"] for row in step.get("curve", []) if row["epoch"] == -1), None)
    if start is None or not tuned:  # a store of an earlier version: no start in its curve
        start = json.loads((trial / "eval" / "valid" / "metrics.json").read_text())[metric]
        tuned = curve(Path(rows.loc[warm, "warm_store"]), f"valid_{metric}")
    migration = rows.loc[warm, "cost_device_s"] - rows.loc[warm, "tuning_device_s"]
    per_full, per_tune = rows.loc[RETRAINED, "cost_device_s"] / len(full), rows.loc[warm, "tuning_device_s"] / len(tuned)
    return {"seed": seed,
            "retrained": {"device_s": [round(per_full * (i + 1), 1) for i in range(len(full))], "valid": full},
            "warm": {"device_s": [round(migration + per_tune * i, 1) for i in range(len(tuned) + 1)],
                     "valid": [start] + tuned, "best_epoch": step.get("best_epoch")},
            f"{split}_{metric}": {"warm": rows.loc[warm, f"{split}_{metric}"],
                                  "retrained": rows.loc[RETRAINED, f"{split}_{metric}"]},
            "cost_device_s": {"warm": rows.loc[warm, "cost_device_s"], "retrained": rows.loc[RETRAINED, "cost_device_s"]}}


def plot(seeds: list[dict], metric: str, warm: str, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.subplots()
    for s in seeds:
        first = s is seeds[0]
        ax.plot(s["retrained"]["device_s"], s["retrained"]["valid"], color="#c44e52", marker="o", ms=3,
                label="full retraining, per epoch" if first else None)
        ax.plot(s["warm"]["device_s"], s["warm"]["valid"], color="#4c72b0", marker="s", ms=3,
                label=f"{warm}: migrated, then per epoch" if first else None)
    ax.set_xlabel("cumulative device-seconds")
    ax.set_ylabel(f"valid {metric}, every user")
    ax.set_title(f"PUMA + per-user tuning vs full retraining ({len(seeds)} seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    args, metric, runs = bench_reading(__doc__, "puma-ray bench --warm-epochs K")
    bench = Path(args.bench)
    split = "test"
    warm = next((m for m in runs["method"].unique() if m.endswith(" tuning")), None)
    if warm is None:
        raise SystemExit(f"{bench}: no tuned migration (run the bench with --warm-epochs N)")
    seeds = [one_seed(runs, int(s), warm, metric, split) for s in sorted(runs["seed"].unique())]
    out = {"bench": str(bench), "metric": metric, "split": split, "method": warm, "seeds": [s["seed"] for s in seeds],
           "per_seed": seeds}
    for key in (f"{split}_{metric}", "cost_device_s"):
        for who in ("warm", "retrained"):
            m, sd, n = mean_std([s[key][who] for s in seeds])
            out[f"{key}_{who}"] = {"mean": round(m, 4), "std": round(sd, 4), "seeds": n}
    d = paired_interval([s[f"{split}_{metric}"]["warm"] for s in seeds], [s[f"{split}_{metric}"]["retrained"] for s in seeds])
    out[f"{split}_{metric}_warm_minus_retrained"] = {"mean": round(d.mean, 4), "low": round(d.low, 4),
                                                    "high": round(d.high, 4), "excludes_zero": d.excludes_zero}
    out["cost_fraction_of_retraining"] = round(out["cost_device_s_warm"]["mean"] / out["cost_device_s_retrained"]["mean"], 3)
    if args.png:
        plot(seeds, metric, warm, Path(args.png))
    print(json.dumps(out, default=float))


if __name__ == "__main__":
    main()
