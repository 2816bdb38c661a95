# .venv/bin/python benchmarks/heldout_movielens.py --out /tmp/ml-heldout [--users 800] [--seed 20261207] \
#     [--movielens ../shared/data/ml-100k]
"""A MovieLens "latest"-format dataset that no development run has seen (issue 45's held-out check).

Users calibrated on MovieLens 100k (`puma-ray data --calibrate-from`, a seed no development run used) are
written as MovieLens latest files: OUT/ratings.csv (userId,movieId,rating,timestamp) with half-star ratings
(a whole-star label L is written as L or L - 0.5, seeded, which the movielens source reads back as L by
rounding up) and OUT/movies.csv (movieId,title,genres; titles with commas are quoted). Read it with
`puma-ray data --source movielens --input OUT`. Work files go to OUT/.work. The data stays on this machine:
it is derived from MovieLens, whose licence forbids redistribution.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from puma_ray.config import DataConfig  # noqa: E402
from puma_ray.runtime.runs import setup_logging  # noqa: E402
from puma_ray.stages.data import run_data  # noqa: E402


def half_stars(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Whole-star labels 1..5 as MovieLens latest ratings: L or L - 0.5, each with probability one half."""
    return labels - 0.5 * (rng.random(len(labels)) < 0.5)


def write_latest(calibrated: Path, out: Path, seed: int) -> dict:
    """OUT/ratings.csv and OUT/movies.csv from a calibrated dataset's rows (every split)."""
    rows = pd.concat([pd.read_parquet(p, columns=["user_id", "item_id", "item_text", "label", "ts"])
                      for p in sorted((calibrated / "interactions").glob("part-*.parquet"))], ignore_index=True)
    rng = np.random.default_rng(seed)
    users = {u: k + 1 for k, u in enumerate(sorted(rows["user_id"].unique()))}
    items = {i: k + 1 for k, i in enumerate(sorted(rows["item_id"].unique()))}
    ratings = pd.DataFrame({"userId": rows["user_id"].map(users), "movieId": rows["item_id"].map(items),
                            "rating": half_stars(rows["label"].to_numpy(np.float64), rng),
                            "timestamp": rows["ts"] // 1 if rows["ts"].max() < 1e11 else rows["ts"] // 1000})
    ratings.sort_values(["userId", "timestamp"]).to_csv(out / "ratings.csv", index=False, float_format="%.1f")
    movies = rows.drop_duplicates("item_id")[["item_id", "item_text"]]
    pd.DataFrame({"movieId": movies["item_id"].map(items), "title": movies["item_text"], "genres": "(no genres listed)"}) \
        .sort_values("movieId").to_csv(out / "movies.csv", index=False, quoting=csv.QUOTE_MINIMAL)
    return {"ratings": len(ratings), "users": len(users), "movies": len(items),
            "half_star_share": float((ratings["rating"] % 1 != 0).mean())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--users", type=int, default=800)
    p.add_argument("--seed", type=int, default=20261207)
    p.add_argument("--movielens", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k"))
    args = p.parse_args()
    setup_logging()
    out = Path(args.out).resolve()
    work = out / ".work"
    work.mkdir(parents=True, exist_ok=True)
    real, calibrated = work / "ml-100k", work / "calibrated"
    if not (real / "manifest.json").is_file():
        run_data(DataConfig(source="movielens", input=args.movielens, out=str(real)))
    if not (calibrated / "manifest.json").is_file():
        run_data(DataConfig(source="synthetic", calibrate_from=str(real), users=args.users, seed=args.seed,
                            out=str(calibrated)))
    print(json.dumps({"out": str(out), "seed": args.seed, **write_latest(calibrated, out, args.seed)}))


if __name__ == "__main__":
    main()
