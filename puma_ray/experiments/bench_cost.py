"""`bench`'s cost model: the adapter's work at a budget, per-stage fits over the measured sizes, projections."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from puma_ray.config import (AdapterStageConfig, BenchConfig)
from puma_ray.train.common import epochs_for, steps_for
from puma_ray.experiments.bench_methods import FLOOR, RECYCLED, RETRAINED, SOURCE, adapter_defaults
from puma_ray.experiments.stats import (AdapterCost, LinearCost, fit_adapter_cost, fit_linear_cost, per_unit_rate)
from puma_ray.experiments.trial import stage_cost


def stage_points(runs: pd.DataFrame) -> dict[str, tuple[list[float], list[float], list[float]]]:
    """(units, device-seconds, start-up device-seconds) measured per cost component: prompts (users),
    select/<strategy> (users) and migrate (users); the adapter has its own model (adapter_fit)."""
    pts: dict[str, tuple[list[float], list[float], list[float]]] = {}

    def add(key: str, units: float, cost: float, startup: float) -> None:
        if cost is not None and math.isfinite(cost):
            for lst, v in zip(pts.setdefault(key, ([], [], [])), (units, cost, startup)):
                lst.append(float(v) if v is not None and math.isfinite(v) else 0.0)

    for _, r in runs.iterrows():
        if r["method"] == RETRAINED:
            add("prompts", r["size"], r["prompts_device_s"], r.get("prompts_startup_device_s"))
        elif r["method"] not in (SOURCE, FLOOR, RECYCLED):  # a migration trial
            add(f"select/{r['strategy']}", r["size"], r["select_device_s"], r.get("select_startup_device_s"))
            add("migrate", r["size"], r["migrate_device_s"], r.get("migrate_startup_device_s"))
    return pts


@dataclass
class AdapterWork:
    """The adapter's epochs and training samples at a budget, as `puma-ray adapter` would choose them."""

    rows_per_user: float
    """Mean training rows per user of the data."""
    epochs: int
    min_steps: int
    batch_size: int
    workers: int

    def at(self, budget: int) -> tuple[int, float]:
        rows = budget * self.rows_per_user
        epochs = epochs_for(self.epochs, self.min_steps, steps_for([math.ceil(rows / self.workers)], self.batch_size))
        return epochs, epochs * rows


def adapter_work(cfg: BenchConfig) -> AdapterWork:
    """From the data's users.parquet and the adapter's settings in this bench (else the stage's defaults)."""
    defaults = {f.name: f.default for f in dataclasses.fields(AdapterStageConfig)}
    knobs = {**defaults, **adapter_defaults(cfg)}
    n_train = pq.read_table(Path(cfg.data) / "users.parquet", columns=["n_train"]).column(0).to_numpy()
    return AdapterWork(float(n_train.mean()) if len(n_train) else 0.0, knobs["epochs"], knobs["min_steps"],
                       knobs["batch_size"], cfg.workers)


def with_adapter_work(runs: pd.DataFrame) -> pd.DataFrame:
    """adapter_samples / adapter_epochs of every migration trial, read from its adapter's cost record where the
    trial's result predates them."""
    runs = runs.copy()
    for col in ("adapter_samples", "adapter_epochs"):
        if col not in runs:
            runs[col] = np.nan
    for i, r in runs.iterrows():
        if isinstance(r.get("trial_path"), str) and not np.isfinite(float(r["adapter_samples"])):
            c = stage_cost(Path(r["trial_path"]) / "adapter")
            runs.loc[i, ["adapter_samples", "adapter_epochs"]] = [c.get("samples"), (c.get("extra") or {}).get("epochs")]
    return runs


def adapter_fit(runs: pd.DataFrame) -> AdapterCost:
    """fixed + per epoch + per sample over the migration trials; per sample at least full retraining's marginal
    cost per sample (every adapter sample runs the same frozen target forward and backward, plus the adapter)."""
    full = runs[(runs["method"] == RETRAINED)].dropna(subset=["prompts_samples"]) if "prompts_samples" in runs \
        else runs.iloc[:0]
    floor = per_unit_rate(full["prompts_samples"], full["prompts_device_s"],
                          full["prompts_startup_device_s"].fillna(0.0)) if len(full) else 0.0
    trials = runs.dropna(subset=["adapter_samples", "adapter_epochs", "adapter_device_s"])
    return fit_adapter_cost(trials["adapter_epochs"], trials["adapter_samples"], trials["adapter_device_s"], floor)


def fit_components(runs: pd.DataFrame) -> dict[str, LinearCost | AdapterCost]:
    """Each component's fixed + per-unit cost: least squares over >= 2 unit counts; with one, the fixed
    part is the stage's measured start-up (the time it did not spend on users) and the rest is per unit."""
    fits = {}
    for key, (units, cost, startup) in stage_points(runs).items():
        if len(set(units)) >= 2:
            fits[key] = fit_linear_cost(units, cost)
        else:
            start = float(np.mean(startup))
            per = max(float(np.mean(cost)) - start, 0.0) / float(units[0])
            rel = float(np.max(np.abs(np.asarray(cost) - (start + per * units[0])) / np.asarray(cost)))
            fits[key] = LinearCost(start, per, len(units), rel)
    if "adapter_samples" in runs and runs["adapter_samples"].notna().any():
        fits["adapter"] = adapter_fit(runs)
    return fits


def projection(fits: dict, strategy: str, users: int, budget: int, work: AdapterWork) -> dict:
    """Projected device-seconds at `users` with `budget` selected users: strategy vs full retraining."""
    epochs, samples = work.at(budget)
    adapter = fits["adapter"](epochs, samples)
    ours = fits[f"select/{strategy}"](users) + adapter + fits["migrate"](users)
    full = fits["prompts"](users)
    return {"users": users, "budget": budget, "strategy": strategy, "device_s": ours, "retraining_device_s": full,
            "ratio": ours / full, "adapter_device_s": adapter, "adapter_epochs": epochs, "adapter_samples": samples}
