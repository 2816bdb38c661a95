# .venv/bin/python benchmarks/recycled_init.py --bench runs/demo/bench/synthetic [--png docs/img/recycled-init-curve.png]
"""What a recycled start saves the adapter (issue 18, item 1): a reading of a finished `puma-ray bench ... --recycle
--recycled-init` directory, not a test.

Per seed it pairs the first strategy's trial at the budget started at random ("puma (B)") with the same trial
started from the recycled prompts ("puma (B), recycled init": same selection, seed and data order). From each
adapter's per-epoch validation curve (the selected users' valid rows, the split that picks the adapter's
epoch) it reads how many epochs each start needs to reach the random start's best, and what that is in the
adapter's device-seconds (its measured cost per epoch). The figures that count come from the bench's test
split (which chooses nothing): test metric and gap closure of both, their paired difference over seeds with a
95% t-interval, and each start's full cost (the recycled start includes the recycle stage's). One JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from puma_ray.experiments.stats import mean_std, paired_interval  # noqa: E402


def curve(run_dir: Path, metric: str) -> list[float]:
    """A training run's valid metric per epoch (an adapter directory or a prompt store): adapter.json's curve,
    the store's last lineage step's, else its last Ray Train checkpoint's history (runs of earlier versions)."""
    for name, read in (("adapter.json", lambda m: m.get("curve")), ("manifest.json", lambda m: m["lineage"][-1].get("curve"))):
        if (run_dir / name).is_file() and (found := read(json.loads((run_dir / name).read_text()))):
            return [row[metric] for row in found]
    states = sorted((run_dir / "_train").glob("*/checkpoint_*/state.json"))
    if not states:
        raise SystemExit(f"{run_dir}: no per-epoch curve (none recorded and no checkpoint is left)")
    return [row[metric] for row in json.loads(states[-1].read_text())["history"]]


def epochs_to(values: list[float], target: float, lower_is_better: bool) -> int | None:
    """1-based epoch at which `values` first reaches `target`; None if never."""
    for i, v in enumerate(values):
        if (v <= target) if lower_is_better else (v >= target):
            return i + 1
    return None


def one_seed(runs: pd.DataFrame, seed: int, plain: str, warm: str, metric: str, split: str) -> dict:
    rows = runs[runs["seed"] == seed].set_index("method")
    lower = metric == "rmse"
    a, b = (Path(rows.loc[m, "trial_path"]) / "adapter" for m in (plain, warm))
    ca, cb = curve(a, f"valid_{metric}"), curve(b, f"valid_{metric}")
    best = min(ca) if lower else max(ca)
    per_epoch = rows.loc[plain, "adapter_device_s"] / rows.loc[plain, "adapter_epochs"]
    ea, eb = epochs_to(ca, best, lower), epochs_to(cb, best, lower)
    return {"seed": seed, "curve_random": ca, "curve_recycled": cb,
            "epochs_to_random_best": {"random": ea, "recycled": eb},
            "adapter_device_s_per_epoch": round(float(per_epoch), 2),
            "epochs_saved": None if eb is None else ea - eb,
            f"{split}_{metric}": {"random": rows.loc[plain, f"{split}_{metric}"], "recycled": rows.loc[warm, f"{split}_{metric}"]},
            "closure": {"random": rows.loc[plain, f"{split}_closure"], "recycled": rows.loc[warm, f"{split}_closure"]},
            "cost_device_s": {"random": rows.loc[plain, "cost_device_s"], "recycled": rows.loc[warm, "cost_device_s"]}}


def plot(seeds: list[dict], metric: str, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for s in seeds:
        for key, color, label in (("curve_random", "#4c72b0", "random start"), ("curve_recycled", "#dd8452",
                                                                                 "recycled start")):
            ys = s[key]
            ax.plot(range(1, len(ys) + 1), ys, color=color, marker="o", ms=3, alpha=0.8,
                    label=label if s is seeds[0] else None)
    tail = [v for s in seeds for key in ("curve_random", "curve_recycled") for v in s[key][1:]]
    if tail:  # the first epoch's validation sits far above the rest: keep the scale where the runs differ
        pad = 0.1 * (max(tail) - min(tail))
        ax.set_ylim(min(tail) - pad, max(tail) + pad)
    ax.set_xlabel("adapter epoch (epoch 1 is above the axis where it is cut)")
    ax.set_ylabel(f"valid {metric} of the selected users")
    ax.set_title(f"Adapter training from a random vs a recycled start ({len(seeds)} seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def bench_reading(doc: str, made_by: str) -> tuple[argparse.Namespace, str, pd.DataFrame]:
    """The command line of a bench reader (--bench DIR [--size N] [--png FILE]); returns its arguments, the bench's
    metric and the runs of the chosen size (default: the largest)."""
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--bench", required=True, help=f"a finished `{made_by}` directory")
    ap.add_argument("--size", type=int, default=None, help="the bench size to read (default: its largest)")
    ap.add_argument("--png", default=None, help="where to draw the curves")
    args = ap.parse_args()
    bench = Path(args.bench)
    metric, runs = json.loads((bench / "bench.json").read_text())["metric"], pd.read_csv(bench / "runs.csv")
    return args, metric, runs[runs["size"] == (args.size or runs["size"].max())]


def main() -> None:
    args, metric, runs = bench_reading(__doc__, "puma-ray bench --recycle --recycled-init")
    bench = Path(args.bench)
    split = "test"
    warm = next((m for m in runs["method"].unique() if m.endswith(", recycled init")), None)
    if warm is None:
        raise SystemExit(f"{bench}: no recycled-init trial (run the bench with --recycle --recycled-init)")
    plain = warm.removesuffix(", recycled init")
    seeds = [one_seed(runs, int(s), plain, warm, metric, split) for s in sorted(runs["seed"].unique())]
    out = {"bench": str(bench), "metric": metric, "split": split, "methods": [plain, warm],
           "seeds": [s["seed"] for s in seeds], "per_seed": seeds}
    for key in (f"{split}_{metric}", "closure", "cost_device_s"):
        for start in ("random", "recycled"):
            m, sd, n = mean_std([s[key][start] for s in seeds])
            out[f"{key}_{start}"] = {"mean": round(m, 4), "std": round(sd, 4), "seeds": n}
        d = paired_interval([s[key]["recycled"] for s in seeds], [s[key]["random"] for s in seeds])
        out[f"{key}_recycled_minus_random"] = {"mean": round(d.mean, 4), "low": round(d.low, 4),
                                               "high": round(d.high, 4), "excludes_zero": d.excludes_zero}
    saved = [s["epochs_saved"] for s in seeds]
    out["epochs_saved"] = saved
    out["device_s_saved"] = [None if e is None else round(e * s["adapter_device_s_per_epoch"], 1)
                             for e, s in zip(saved, seeds)]
    if args.png:
        plot(seeds, metric, Path(args.png))
    print(json.dumps(out, default=lambda v: None if isinstance(v, float) and np.isnan(v) else float(v)))


if __name__ == "__main__":
    main()
