# .venv/bin/python benchmarks/mf_reference.py --data DIR [--ranks 2 4 8] [--reg 5 15] [--sweeps 15]
"""How learnable a rating dataset is without any LLM: a biased matrix factorisation (label ~ g + b_u + b_i + p_u.q_i,
ridge-regularised, fitted by alternating least squares on the train rows), scored on valid and test. A reference
for what per-user prompts could reach (issue 45: the tiny test models must learn more than a table of means).
One JSON line per (rank, reg). numpy only; every user's and item's solve is exact."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from puma_ray.data.schema import shard_paths  # noqa: E402


def solve_rows(keys: np.ndarray, other: np.ndarray, resid: np.ndarray, n: int, reg: float) -> tuple[np.ndarray, ...]:
    """Per key: ridge solve of resid ~ bias + other_factors . p (the bias unregularised): (biases, factors)."""
    k = other.shape[1]
    bias, factors = np.zeros(n), np.zeros((n, k))
    order = np.argsort(keys, kind="stable")
    bounds = np.searchsorted(keys[order], np.arange(n + 1))
    penalty = reg * np.eye(k + 1)
    penalty[0, 0] = 1e-6
    for key in range(n):
        rows = order[bounds[key]:bounds[key + 1]]
        if len(rows):
            x = np.c_[np.ones(len(rows)), other[rows]]
            sol = np.linalg.solve(x.T @ x + penalty, x.T @ resid[rows])
            bias[key], factors[key] = sol[0], sol[1:]
    return bias, factors


def fit_and_score(df: pd.DataFrame, rank: int, reg: float, sweeps: int, seed: int) -> dict:
    u, i, y = df["u"].to_numpy(), df["i"].to_numpy(), df["label"].to_numpy(np.float64)
    train = df["split"].to_numpy() == "train"
    n_u, n_i = u.max() + 1, i.max() + 1
    g = y[train].mean()
    rng = np.random.default_rng(seed)
    b_u, b_i = np.zeros(n_u), np.zeros(n_i)
    p, q = rng.normal(0, 0.1, (n_u, rank)), rng.normal(0, 0.1, (n_i, rank))
    ut, it, yt = u[train], i[train], y[train]
    for _ in range(sweeps):
        b_u, p = solve_rows(ut, q[it], yt - g - b_i[it], n_u, reg)
        b_i, q = solve_rows(it, p[ut], yt - g - b_u[ut], n_i, reg)
    pred = np.clip(g + b_u[u] + b_i[i] + (p[u] * q[i]).sum(1), 1, 5)
    out = {"rank": rank, "reg": reg, "sweeps": sweeps}
    for split in ("valid", "test"):
        m = df["split"].to_numpy() == split
        out[f"{split}_rmse"] = float(np.sqrt(np.mean((pred[m] - y[m]) ** 2)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True)
    ap.add_argument("--ranks", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--reg", type=float, nargs="+", default=[5.0, 15.0])
    ap.add_argument("--sweeps", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    df = pd.concat([pd.read_parquet(p, columns=["user_id", "item_id", "label", "split"]) for p in shard_paths(args.data)],
                   ignore_index=True)
    df["u"], df["i"] = df["user_id"].astype("category").cat.codes, df["item_id"].astype("category").cat.codes
    for rank in args.ranks:
        for reg in args.reg:
            print(json.dumps({"data": args.data, **fit_and_score(df, rank, reg, args.sweeps, args.seed)}), flush=True)


if __name__ == "__main__":
    main()
