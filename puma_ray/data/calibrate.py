"""A synthetic user population calibrated on a canonical dataset (`puma-ray data --calibrate-from DIR`).

`fit_population` reads a dataset written by `puma-ray data` and fits the parameters of
`Population`, which `synthetic.generate_shard` then samples from, shard by shard:

- activity: interactions per user = floor + floor(scale x Lomax(shape)), fitted by maximum
  likelihood with users at the dataset's cap (max_user_interactions) as right-censored;
- item popularity: an item's weight is (rank + 10)^-exponent. Users draw distinct items, so heavy users
  flatten the head of the observed curve: the exponent is the one whose simulated users (the fitted
  activity, the same catalogue size) give the observed least-squares slope of log interactions against
  log(rank + 10) (bisection, common random numbers);
- labels: each user's mean label ~ Normal(base, bias_std) and each user's label spread (std) ~
  LogNormal(spread_log_mean, spread_log_std), from users with at least MIN_LABELS labels;
- taste groups: users' label vectors, centred on the user's mean and then on the item's, reduced by a truncated SVD to the components whose
  singular values exceed those of the same matrix with its values shuffled (Horn's parallel analysis:
  structure above what chance gives), scaled to unit length, clustered with
  K-means for K in GROUP_RANGE; the K with the best silhouette gives the number of groups and their
  shares. Users of a group share its item preferences (its centre's scores of the items);
- a user's label variance splits into item quality (what every user agrees on: `quality_share`), their
  group's taste (`taste_share`) and their own noise (the rest). Two users' centred labels of one item
  share only the quality when the users are of different groups (group tastes are uncorrelated), quality
  and taste when of the same group: quality_share is the mean product of cross-group pairs, quality +
  taste that of same-group pairs, each over the mean squared centred label.
Generated labels snap to the dataset's label levels (half stars stay half stars).

Only the dataset's own numbers enter the fit; nothing is tuned toward a downstream result.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from puma_ray.data.population import Population
from puma_ray.data.synthetic import choose_items
from puma_ray.errors import PumaError

MIN_LABELS = 5
"""Users with fewer labels say little about their spread; they are left out of the label fit."""
LOG_BOUNDS = (np.log([0.05, 0.01]), np.log([1000.0, 1e7]))
"""Bounds of log(Lomax shape), log(scale): beyond shape 1000 the tail is geometric (a light-tailed
sample's fit goes there, with scale / shape its mean count above the floor)."""
GROUP_RANGE = range(2, 13)
"""Numbers of taste groups tried."""


def fit_activity(counts: np.ndarray, cap: int) -> tuple[int, float, float]:
    """(floor, shape, scale) of counts = floor + floor(scale x Lomax(shape)); counts >= cap are censored."""
    from scipy.optimize import minimize

    counts = np.asarray(counts, dtype=np.float64)
    floor = int(counts.min())
    x = counts - floor
    censored = (counts >= cap) if cap else np.zeros(len(counts), bool)
    xu, xc = x[~censored], x[censored]

    def nll(theta):  # exact for counts: P(x) = S(x) - S(x + 1), censored P(X >= x) = S(x), S(x) = (1 + x/scale)^-shape
        a, lam = np.exp(np.clip(theta, LOG_BOUNDS[0], LOG_BOUNDS[1]))
        log_s0, log_s1 = -a * np.log1p(xu / lam), -a * np.log1p((xu + 1) / lam)
        return -(np.sum(log_s0 + np.log(-np.expm1(log_s1 - log_s0))) - a * np.sum(np.log1p(xc / lam)))

    start = np.log([2.0, max(float(np.mean(x)), 1.0)])
    res = minimize(nll, start, method="Nelder-Mead", options={"xatol": 1e-6, "fatol": 1e-8, "maxiter": 4000})
    shape, scale = np.exp(np.clip(res.x, LOG_BOUNDS[0], LOG_BOUNDS[1]))
    return floor, float(shape), float(scale)


def popularity_slope(item_counts: np.ndarray) -> float:
    """Least-squares slope of log(interactions) against log(rank + 10), items by decreasing interactions."""
    counts = np.sort(np.asarray(item_counts, dtype=np.float64))[::-1]
    slope, _ = np.polyfit(np.log(np.arange(len(counts)) + 10.0), np.log(np.maximum(counts, 1.0)), 1)
    return float(slope)


def simulated_slope(exponent: float, user_counts: np.ndarray, items: int, cap: int, seed: int) -> float:
    """popularity_slope of users with these counts drawing distinct items of weight (rank + 10)^-exponent,
    of which a random `cap` are kept (the dataset's most recent; 0 = all)."""

    rng = np.random.default_rng([seed, 7])
    chosen = choose_items(rng, -exponent * np.log(np.arange(items) + 10.0), np.minimum(user_counts, items))
    kept = [rng.permutation(c)[: cap or None] for c in chosen]
    return popularity_slope(np.bincount(np.concatenate(kept), minlength=items))


def fit_popularity(item_counts: np.ndarray, activity: tuple[int, float, float], cap: int, seed: int,
                   users: int = 2000) -> float:
    """The exponent whose simulated users (activity (floor, shape, scale) as the generator draws it, capped at
    `cap` like the dataset) give the observed slope."""
    target = popularity_slope(item_counts)
    floor, shape, scale = activity
    draws = floor + np.floor(scale * np.random.default_rng([seed, 8]).pareto(shape, size=users))
    counts = np.minimum(draws, len(item_counts)).astype(np.int64)  # capped before the cast: a heavy tail overflows
    lo, hi = 0.0, 4.0
    for _ in range(14):  # the slope falls as the exponent grows
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if simulated_slope(mid, counts, len(item_counts), cap, seed) > target else (lo, mid)
    return (lo + hi) / 2


def fit_labels(rows: pd.DataFrame) -> dict:
    """Label levels, users' mean-label spread and log label-std distribution (users with >= MIN_LABELS)."""
    per_user = rows.groupby("user_id")["label"].agg(["mean", "std", "size"])
    per_user = per_user[per_user["size"] >= MIN_LABELS]
    if len(per_user) < 10:
        raise PumaError(f"--calibrate-from: calibration needs >= 10 users with >= {MIN_LABELS} labels; the dataset has "
                        f"{len(per_user)}; nothing was changed")
    log_std = np.log(per_user["std"].clip(lower=0.05))
    return {"label_levels": sorted(float(v) for v in rows["label"].unique()),
            "label_base": float(per_user["mean"].mean()), "bias_std": float(per_user["mean"].std()),
            "spread_log_mean": float(log_std.mean()), "spread_log_std": float(log_std.std())}


def centred_labels(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(each row's label less its user's mean label, user code, item code); codes in sorted id order."""
    u_codes, _ = pd.factorize(rows["user_id"], sort=True)
    i_codes, _ = pd.factorize(rows["item_id"], sort=True)
    centred = rows["label"].to_numpy(np.float64) - rows.groupby("user_id")["label"].transform("mean").to_numpy()
    return centred, u_codes, i_codes


def fit_groups(rows: pd.DataFrame, seed: int) -> tuple[list[float], float, dict]:
    """(group shares largest first, (quality share, taste share), {components, silhouette per K}) from
    K-means on users' label vectors."""
    centred, u_codes, i_codes = centred_labels(rows)
    labels, fit = cluster_users(centred, u_codes, i_codes, seed)
    shares = np.bincount(labels, minlength=labels.max() + 1) / len(labels)
    return sorted(shares.tolist(), reverse=True), variance_shares(centred, labels[u_codes], i_codes), fit


def user_groups(rows: pd.DataFrame, seed: int) -> pd.Series:
    """Each user's taste group (index: user_id, sorted) as the calibration finds it in (user_id, item_id, label)
    rows: what a real dataset, which has no generator's groups, is diagnosed by."""
    labels, _ = cluster_users(*centred_labels(rows), seed)
    return pd.Series(labels, index=pd.Index(np.sort(rows["user_id"].unique()), name="user_id"), name="group")


def cluster_users(centred: np.ndarray, u_codes: np.ndarray, i_codes: np.ndarray, seed: int) -> tuple[np.ndarray, dict]:
    """(taste group of every user code, {components, silhouette per K}): K-means on the users' centred label
    vectors (item means out), reduced to the SVD components above chance, K by the best silhouette."""
    from scipy.sparse import csr_matrix
    from sklearn.cluster import KMeans
    from sklearn.decomposition import TruncatedSVD
    from sklearn.metrics import silhouette_score

    # groups differ in taste, not in what every user agrees on: the items' mean (quality) is taken out first
    item_mean = pd.Series(centred).groupby(i_codes).transform("mean").to_numpy()
    m = csr_matrix((centred - item_mean, (u_codes, i_codes)), shape=(u_codes.max() + 1, i_codes.max() + 1))
    k = max(2, min(16, min(m.shape) - 1))
    svd = TruncatedSVD(n_components=k, random_state=seed).fit(m)
    shuffled = m.copy()
    shuffled.data = np.random.default_rng([seed, 9]).permutation(shuffled.data)
    chance = TruncatedSVD(n_components=k, random_state=seed).fit(shuffled).singular_values_
    above = svd.singular_values_ > chance
    k = max(2, int(np.argmin(above)) if not above.all() else k)  # leading components above chance
    z = svd.transform(m)[:, :k]
    z /= np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    scores, labels = {}, {}
    for n in (n for n in GROUP_RANGE if n < min(m.shape)):  # tastes need as many items as groups
        labels[n] = KMeans(n_clusters=n, n_init=4, random_state=seed).fit_predict(z)
        scores[n] = float(silhouette_score(z, labels[n], sample_size=min(len(z), 5000), random_state=seed))
    if not scores:
        raise PumaError(f"--calibrate-from: {m.shape[0]} users and {m.shape[1]} items are too few to find taste groups "
                        "(>= 3 of each); nothing was changed")
    best = max(scores, key=scores.get)
    return labels[best], {"components": k, "silhouette_by_groups": scores}


def pair_sums(centred: np.ndarray, cell: np.ndarray) -> tuple[float, float]:
    """(sum of x_i x_j over pairs of different rows in the same cell, number of such pairs); per cell the
    pairs' sum is (sum x)^2 - sum x^2."""
    cells = pd.DataFrame({"x": centred, "x2": centred ** 2}).groupby(cell).agg(
        s=("x", "sum"), s2=("x2", "sum"), n=("x", "size"))
    return float((cells["s"] ** 2 - cells["s2"]).sum()), float((cells["n"] * (cells["n"] - 1)).sum())


def variance_shares(centred: np.ndarray, group: np.ndarray, item: np.ndarray) -> tuple[float, float]:
    """(quality share, taste share) of the centred-label variance: the mean product of two users' labels of one
    item from different groups (they share only quality), and from the same group less that (quality + taste),
    each over the mean squared centred label; clipped to [0, 0.95] together."""
    total = float(np.mean(centred ** 2))
    all_sum, all_n = pair_sums(centred, item)
    in_sum, in_n = pair_sums(centred, group.astype(np.int64) * (int(item.max()) + 1) + item)
    if total <= 0 or in_n == 0 or all_n == in_n:
        return 0.0, 0.0
    quality = float(np.clip((all_sum - in_sum) / (all_n - in_n) / total, 0.0, 0.95))
    return quality, float(np.clip(in_sum / in_n / total - quality, 0.0, 0.95 - quality))


def read_rows(data_dir: Path, need_manifest: bool = True, split: str | None = None) -> pd.DataFrame:
    """(user_id, item_id, label) of every split of a canonical dataset, or of one `split` (need_manifest=False:
    one being built)."""
    files = sorted((data_dir / "interactions").glob("part-*.parquet"))
    if not files or (need_manifest and not (data_dir / "manifest.json").is_file()):
        raise PumaError(f"--calibrate-from {data_dir}: not a dataset written by `puma-ray data` (manifest.json and "
                        "interactions/part-*.parquet); nothing was changed")
    only = None if split is None else [("split", "==", split)]
    return pd.concat(pq.read_table(f, columns=["user_id", "item_id", "label"], filters=only).to_pandas()
                     for f in files)


def population_from_rows(rows: pd.DataFrame, cap: int, seed: int, fitted_from: dict) -> Population:
    """Every parameter of `Population` fitted on (user_id, item_id, label) rows; cap: the dataset's
    max_user_interactions (0 = none)."""
    items = int(rows["item_id"].nunique())
    user_counts = rows.groupby("user_id").size().to_numpy()
    floor, shape, scale = fit_activity(user_counts, min(cap, items) if cap else items)
    shares, (quality, taste), fit = fit_groups(rows, seed)
    return Population(
        floor=floor, activity_shape=shape, activity_scale=scale,
        popularity_exponent=fit_popularity(rows.groupby("item_id").size().to_numpy(), (floor, shape, scale), cap,
                                           seed),
        **fit_labels(rows), quality_share=quality, taste_share=taste, group_shares=shares, items=items,
        fitted_from={**fitted_from, "users": int(rows["user_id"].nunique()), "rows": len(rows), "cap": cap,
                     "seed": seed, "svd_components": fit["components"],
                     "silhouette_by_groups": {str(k): round(v, 4) for k, v in fit["silhouette_by_groups"].items()}})


def fit_population(data_dir: str | Path, seed: int = 0) -> Population:
    """`Population` fitted on the canonical rating dataset at `data_dir` (every split)."""
    data_dir = Path(data_dir)
    rows = read_rows(data_dir)
    manifest = json.loads((data_dir / "manifest.json").read_text())
    if manifest.get("task") != "rating":
        raise PumaError(f"--calibrate-from {data_dir}: a {manifest.get('task')} dataset; calibration fits rating data")
    cap = int(manifest.get("preprocessing", {}).get("max_user_interactions") or 0)
    return population_from_rows(rows, cap, seed, {"dataset": str(data_dir.resolve()),
                                                  "fingerprint": manifest.get("fingerprint")})
