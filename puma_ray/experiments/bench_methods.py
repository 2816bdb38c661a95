"""`bench`'s methods: their names, which ones a config runs, and the adapter settings they share."""

from __future__ import annotations



from puma_ray.config import BenchConfig
from puma_ray.select.strategies import STRATEGIES

FLOOR, RETRAINED, SOURCE = "random init (floor)", "full retraining", "source model"
RECYCLED = "prompt recycling (no users)"


FLOOR, RETRAINED, SOURCE = "random init (floor)", "full retraining", "source model"


RECYCLED = "prompt recycling (no users)"


def methods_of(cfg: BenchConfig) -> list[tuple[str, dict]]:
    """(method name, trial parameters but the seed): each strategy at B, then random at 3B, then (with
    --recycled-init) the first strategy at B with its adapter started from the recycled prompts."""
    names = strategy_names(cfg)
    out = [(f"{s} ({cfg.budget})", {"strategy": s, "budget": cfg.budget}) for s in names]
    out.append((f"random ({3 * cfg.budget})", {"strategy": "random", "budget": 3 * cfg.budget}))
    if cfg.recycled_init:
        out.append((recycled_init_name(cfg), {"strategy": names[0], "budget": cfg.budget, "init": "recycled"}))
    return out


def strategy_names(cfg: BenchConfig) -> list[str]:
    """--strategies, with 'all' read as every registered strategy."""
    return list(STRATEGIES) if cfg.strategies == ["all"] else cfg.strategies


def recycled_init_name(cfg: BenchConfig) -> str:
    """The table's name of the first strategy at B with a recycled start."""
    return f"{strategy_names(cfg)[0]} ({cfg.budget}), recycled init"


def warm_name(cfg: BenchConfig) -> str:
    """The table's name of the first strategy's migration tuned for --warm-epochs."""
    return f"{methods_of(cfg)[0][0]} + {cfg.warm_epochs} epoch{'s' if cfg.warm_epochs > 1 else ''} tuning"


def coldstart_name(cfg: BenchConfig) -> str:
    """The table's name of the first strategy's migration with --coldstart-fraction of the users cold."""
    return f"{methods_of(cfg)[0][0]}, {100 * cfg.coldstart_fraction:g}% of users cold-start"


def cold_metric(metric: str) -> str:
    """The metric the cold users alone are scored on: RMSE exactly, AUC as their mean per-user AUC (uAUC)."""
    return "rmse" if metric == "rmse" else "uauc"


def adapter_defaults(cfg: BenchConfig) -> dict:
    """Selection and adapter knobs every method shares (unset ones take the stages' defaults)."""
    knobs = {"clusters": cfg.clusters, "min_per_cluster": cfg.min_per_cluster, "bins": cfg.bins,
             "width": cfg.adapter_width, "lr": cfg.adapter_lr, "epochs": cfg.adapter_epochs,
             "min_steps": cfg.adapter_min_steps}
    return {k: v for k, v in knobs.items() if v is not None}
