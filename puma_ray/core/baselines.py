"""Trivial baselines: what a model must beat before any of its figures means anything.

Fitted on a dataset's `train` rows, scored on the same rows a model is scored on:
- ratings: the global mean, the per-user mean, the item mean and a regularized user + item
  bias (g + b_u + b_i, fitted by alternating shrunken means); a user or item unseen in train
  falls back to the global mean (its bias to 0).
- clicks: item popularity (the item's training click rate, smoothed towards the global rate)
  and the user's training click rate, each scored by AUC and uAUC (a per-user constant has
  uAUC 0.5 by construction; its AUC says how much of the split is who clicks, not what).

pandas and numpy only: no torch, no Ray. `dataset_baselines` reads a dataset's shards a
few columns at a time (string ids kept as categories), so memory is about 20 bytes a row.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from puma_ray.core.metrics import auc, uauc

RATING = ("global_mean", "user_mean", "item_mean", "user_item_bias")
CLICK = ("item_popularity", "user_rate")
REG_USER, REG_ITEM, ITERS = 5.0, 10.0, 10
"""Shrinkage (pseudo-counts) of the user and item biases, and the alternating passes that fit them."""
SMOOTH = 10.0
"""Pseudo-count pulling an item's or user's click rate towards the global rate."""


def shrunken_mean(residual: pd.Series, keys: pd.Series, reg: float) -> pd.Series:
    """Per-key sum(residual) / (count + reg): a mean pulled towards 0 for keys with few rows."""
    grouped = residual.groupby(keys.values, observed=True)
    return grouped.sum() / (grouped.count() + reg)


def fit_bias(train: pd.DataFrame, reg_user: float = REG_USER, reg_item: float = REG_ITEM,
             iters: int = ITERS) -> tuple[float, pd.Series, pd.Series]:
    """(global mean, user biases, item biases) of label ~ g + b_u + b_i, alternating shrunken means."""
    g = float(train["label"].mean())
    b_user = pd.Series(0.0, index=pd.Index([], dtype=object))
    b_item = pd.Series(0.0, index=pd.Index([], dtype=object))
    for _ in range(iters):
        resid = train["label"] - g - train["user_id"].map(b_user).astype(float).fillna(0.0).values
        b_item = shrunken_mean(resid, train["item_id"], reg_item)
        resid = train["label"] - g - train["item_id"].map(b_item).astype(float).fillna(0.0).values
        b_user = shrunken_mean(resid, train["user_id"], reg_user)
    return g, b_user, b_item


def _lookup(keys: pd.Series, table: pd.Series, default: float) -> np.ndarray:
    return keys.map(table).astype(float).fillna(default).to_numpy()


def rating_predictions(train: pd.DataFrame, scored: pd.DataFrame) -> dict[str, np.ndarray]:
    """Each rating baseline's prediction for every row of `scored` (columns user_id, item_id)."""
    g = float(train["label"].mean())
    user_mean = train.groupby("user_id", observed=True)["label"].mean()
    item_mean = train.groupby("item_id", observed=True)["label"].mean()
    g_bias, b_user, b_item = fit_bias(train)
    return {"global_mean": np.full(len(scored), g),
            "user_mean": _lookup(scored["user_id"], user_mean, g),
            "item_mean": _lookup(scored["item_id"], item_mean, g),
            "user_item_bias": g_bias + _lookup(scored["user_id"], b_user, 0.0) + _lookup(scored["item_id"], b_item, 0.0)}


def smoothed_rate(train: pd.DataFrame, key: str, smooth: float = SMOOTH) -> tuple[float, pd.Series]:
    """(global click rate, per-`key` click rate smoothed towards it by `smooth` pseudo-rows)."""
    g = float(train["label"].mean())
    grouped = train.groupby(key, observed=True)["label"]
    return g, (grouped.sum() + smooth * g) / (grouped.count() + smooth)


def click_scores(train: pd.DataFrame, scored: pd.DataFrame) -> dict[str, np.ndarray]:
    """Each click baseline's score for every row of `scored`."""
    g, items = smoothed_rate(train, "item_id")
    _, users = smoothed_rate(train, "user_id")
    return {"item_popularity": _lookup(scored["item_id"], items, g), "user_rate": _lookup(scored["user_id"], users, g)}


def rating_metrics(pred: np.ndarray, label: np.ndarray) -> dict:
    """RMSE and MAE (the model rows' metrics, same definitions)."""
    err = np.asarray(pred, dtype=np.float64) - np.asarray(label, dtype=np.float64)
    if len(err) == 0:
        return {"rmse": float("nan"), "mae": float("nan")}
    return {"rmse": float(np.sqrt(np.mean(err * err))), "mae": float(np.mean(np.abs(err)))}


def click_metrics(users: np.ndarray, score: np.ndarray, label: np.ndarray) -> dict:
    """AUC over all rows and uAUC (mean per-user AUC over users with both classes)."""
    return {"auc": auc(score, label), "uauc": uauc(np.asarray(users), score, label)[0]}


def baselines(task: str, train: pd.DataFrame, scored: pd.DataFrame) -> dict[str, dict]:
    """{baseline name: metrics} of every baseline of `task`, fitted on `train`, scored on `scored`
    (both with columns user_id, item_id, label)."""
    label = scored["label"].to_numpy()
    if task == "rating":
        return {k: rating_metrics(v, label) for k, v in rating_predictions(train, scored).items()}
    users = scored["user_id"].astype(str).to_numpy()
    return {k: click_metrics(users, v, label) for k, v in click_scores(train, scored).items()}


def read_rows(shards: list, splits: tuple[str, ...]) -> pd.DataFrame:
    """user_id, item_id (categories), label, split of the given splits' rows of a dataset's shards."""
    parts = []
    for path in shards:
        table = pq.read_table(path, columns=["user_id", "item_id", "label", "split"],
                              filters=[("split", "in", list(splits))])
        parts.append(table.to_pandas(strings_to_categorical=True))
    if not parts:
        return pd.DataFrame({"user_id": [], "item_id": [], "label": [], "split": []})
    df = pd.concat(parts, ignore_index=True)
    for col in ("user_id", "item_id", "split"):
        df[col] = df[col].astype(str).astype("category")
    return df


def splits_baselines(shards: list, task: str, splits: list[str], users=None) -> dict[str, dict]:
    """Every baseline of `task` fitted once on the shards' train rows (one read) and scored on each split's rows,
    only those of `users` when given (the users a model was scored on): {split: {"split", "rows", "users",
    name: metrics}}."""
    df = read_rows(shards, ("train", *splits))
    train = df[df["split"] == "train"]
    out = {}
    for split in splits:
        scored = df[df["split"] == split]
        if users is not None:
            scored = scored[scored["user_id"].astype(str).isin(set(users))]
        out[split] = {"split": split, "rows": int(len(scored)), "users": int(scored["user_id"].nunique()),
                      **baselines(task, train, scored)}
    return out


def dataset_baselines(shards: list, task: str, split: str, users=None) -> dict:
    """splits_baselines of one split."""
    return splits_baselines(shards, task, [split], users)[split]


HIGHER_IS_BETTER = {"rmse": False, "mae": False, "auc": True, "uauc": True}


def main_metric(task: str) -> str:
    """The metric a verdict compares: RMSE for ratings, AUC for clicks."""
    return "rmse" if task == "rating" else "auc"


def personalization_verdict(task: str, retrained: float, found: dict) -> str | None:
    """None when full retraining beats both per-user and per-item baselines on the main metric, else the
    sentence every report prints: "no personalization learned: ..."."""
    metric = main_metric(task)
    pair = ("user_mean", "item_mean") if task == "rating" else ("user_rate", "item_popularity")
    values = {k: found[k][metric] for k in pair if k in found}
    better = (lambda a, b: a > b) if HIGHER_IS_BETTER[metric] else (lambda a, b: a < b)
    if all(better(retrained, v) for v in values.values() if np.isfinite(v)):
        return None
    said = " and ".join(f"{NAMES[k]} {v:.4f}" for k, v in values.items())
    return (f"no personalization learned: full retraining's {metric} {retrained:.4f} does not beat the {said} "
            "(every comparison between model rows is then between models that learned less than a table of means)")


def baseline_rows(found: dict, metrics: tuple[str, ...]) -> list[list[str]]:
    """Markdown table rows (name, one cell per metric) of the baselines in `found`, in the task's order."""
    names = [k for k in RATING + CLICK if k in found]
    return [[f"baseline: {NAMES[k]}"] + [f"{found[k].get(m, float('nan')):.4f}" for m in metrics] for k in names]


NAMES = {"global_mean": "global mean", "user_mean": "per-user mean", "item_mean": "item mean",
         "user_item_bias": "user + item bias", "item_popularity": "item popularity", "user_rate": "user click rate"}
"""How reports name each baseline."""
