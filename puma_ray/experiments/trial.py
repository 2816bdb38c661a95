"""One migration trial: select -> adapter -> migrate -> evaluate (valid and test), with its measured cost.

Not a CLI stage: the unit that `sweep` (one Tune trial each), `bench` (one method x seed each)
and `demo` share. Everything lives in one trial directory:

    DIR/select  DIR/adapter  DIR/store  DIR/eval/{valid,test}  DIR/result.json

A step whose output is complete is not run again, so a re-run after an interruption finishes
the trial instead of repeating it; `result.json` (written last) marks a finished trial.

Metrics: the migrated store of EVERY user is scored on `valid` (what a sweep chooses configs
by) and on `test` (what is reported; never used to choose anything). The adapter's own
best epoch is chosen on the selected users' valid rows. Cost: device-seconds and wall of
select + adapter + migrate from their cost records (data loading and Ray Train start-up
included); evaluation is reported apart, since retraining's cost does not include it either.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Optional

from puma_ray.config import AdapterStageConfig, EvaluateConfig, MigrateConfig, SelectConfig
from puma_ray.data.schema import read_required_json, write_json_atomic
from puma_ray.errors import PumaError
from puma_ray.runtime.runs import log, read_costs
from puma_ray.select.strategies import uses_losses
from puma_ray.store.prompt_store import MANIFEST
from puma_ray.store.prompt_store import read_manifest as read_store_manifest
from puma_ray.experiments.space import ADAPTER_KEYS, SELECT_KEYS
from puma_ray.experiments.stats import HIGHER_IS_BETTER

RESULT = "result.json"
IDENTITY = "trial.json"
COST_STAGES = ("select", "adapter", "migrate")


@dataclass
class TrialSetup:
    """What every trial of a sweep or bench shares (data, stores, models, resources)."""

    data: str
    sources: list[str]
    target_model: str
    task_metric: str
    """rmse (lower is better) or auc (higher is better)."""
    workers: int = 1
    cpus_per_worker: float = 0.5
    use_gpu: bool = False
    gpus_per_worker: float = 1.0
    dtype: str = "auto"
    report_split: str = "test"
    choose_split: str = "valid"
    reference: Optional[dict] = None
    """reference.json content (floor / full retraining on report_split) for gap closure."""
    defaults: dict = field(default_factory=dict)
    """Trial parameters used when a trial does not set them (e.g. the adapter's epochs)."""
    recycled: Optional[str] = None
    """Recycled store of sources[0] on the target: what a trial with init 'recycled' starts its adapter from."""
    losses: Optional[str] = None
    """sources[0] scored on its own model over the train rows (shared_losses): what loss strategies read instead of
    scoring it again in every trial. Not part of a trial's identity: data and sources[0] determine it."""


def resolve_budget(budget: float, users: int) -> int:
    """A count (>= 1) as is; a fraction (0, 1) of `users`, rounded, at least 1."""
    return int(budget) if budget >= 1 else max(1, round(budget * users))


def closure(floor: float, retrained: float, migrated: float, metric: str = "rmse") -> float:
    """Gap closure (floor - migrated) / (floor - retrained) (the same formula for AUC: signs cancel).

    NaN when full retraining did not beat the floor: there is no gap to close, and a ratio of two
    noise-sized differences would read as a result."""
    gap = (retrained - floor) if metric in HIGHER_IS_BETTER else (floor - retrained)
    return (floor - migrated) / (floor - retrained) if gap > 0 else float("nan")


def stage_cost(run_dir: Path) -> dict:
    """The latest cost record written by the stage run in `run_dir` itself, with `startup_device_s`
    (its start-up in device-seconds: startup_s x workers)."""
    own = [c for c in read_costs(run_dir) if c["run"] == "."]
    if not own:
        return {"wall_s": float("nan"), "device_seconds": float("nan"), "startup_s": float("nan"),
                "startup_device_s": float("nan")}
    c = own[-1]
    return {**c, "startup_device_s": round((c.get("startup_s") or 0.0) * c["workers"], 3)}


def _complete(path: Path) -> bool:
    return path.is_file()


def run_steps(setup: TrialSetup, params: dict, d: Path, callbacks: tuple = ()) -> dict[str, Path]:
    """Run (or reuse) the trial's stages under `d`; returns the step directories."""
    from puma_ray.stages.adapter import run_adapter
    from puma_ray.stages.evaluate import run_evaluate
    from puma_ray.stages.migrate import run_migrate
    from puma_ray.stages.select import run_select

    steps = {k: d / k for k in ("select", "adapter", "store", "eval")}
    p = {**setup.defaults, **params}
    if not _complete(steps["select"] / "selected.parquet"):
        run_select(SelectConfig(data=setup.data, prompts=setup.sources[0], out=str(steps["select"]),
                                seed=p.get("seed", 0), losses=setup.losses, **{k: p[k] for k in SELECT_KEYS if k in p}))
    if not _complete(steps["adapter"] / "adapter.json"):
        run_adapter(AdapterStageConfig(data=setup.data, source=list(setup.sources), target_model=setup.target_model,
                                       users=str(steps["select"]), out=str(steps["adapter"]), workers=setup.workers,
                                       cpus_per_worker=setup.cpus_per_worker, use_gpu=setup.use_gpu,
                                       gpus_per_worker=setup.gpus_per_worker, dtype=setup.dtype,
                                       seed=p.get("seed", 0), init=p.get("init", "random"),
                                       recycled=setup.recycled if p.get("init") == "recycled" else None,
                                       **{k: p[k] for k in ADAPTER_KEYS if k in p}),
                    callbacks=callbacks)
    if not _complete(steps["store"] / MANIFEST):
        run_migrate(MigrateConfig(adapter=str(steps["adapter"]), source=list(setup.sources), out=str(steps["store"]),
                                  use_gpu=setup.use_gpu, gpus_per_worker=setup.gpus_per_worker, dtype=setup.dtype))
    splits = [setup.choose_split, setup.report_split]
    if not all(_complete(steps["eval"] / s / "metrics.json") for s in splits):
        run_evaluate(EvaluateConfig(data=setup.data, model=setup.target_model, prompts=str(steps["store"]),
                                    split=splits, out=str(steps["eval"]), use_gpu=setup.use_gpu,
                                    gpus_per_worker=setup.gpus_per_worker,
                                    dtype=setup.dtype, baselines=False))  # the reference rows carry them
    return steps


def trial_row(setup: TrialSetup, params: dict, steps: dict[str, Path]) -> dict[str, Any]:
    """One flat record: parameters, metrics (choice split, report split, adapter), closure, cost."""
    m = setup.task_metric
    adapter = read_required_json(steps["adapter"] / "adapter.json", f"{steps['adapter']} holds no finished adapter")
    chosen, reported = (read_required_json(steps["eval"] / split / "metrics.json",
                                           f"{steps['eval']} holds no {split} metrics")
                        for split in (setup.choose_split, setup.report_split))
    row: dict[str, Any] = {**params, "users_trained": adapter["users"], "adapter_width": adapter["adapter"]["width"],
                           f"adapter_valid_{m}": adapter.get(f"valid_{m}"), "best_epoch": adapter["best_epoch"],
                           f"{setup.choose_split}_{m}": chosen[m], f"{setup.report_split}_{m}": reported[m],
                           "users_scored": reported["users"], "quarantined_users": reported["quarantined_users"]}
    ref = setup.reference
    if ref:
        row[f"{setup.report_split}_closure"] = closure(ref["floor"]["value"], ref["retrained"]["value"], reported[m], m)
    cost_dirs = {"select": steps["select"], "adapter": steps["adapter"], "migrate": steps["store"]}
    total_dev = total_wall = total_start = 0.0
    strategy = {**setup.defaults, **params}.get("strategy", select_default("strategy"))
    for stage, run_dir in cost_dirs.items():
        c = stage_cost(run_dir)
        if stage == "select" and setup.losses and uses_losses(strategy):
            c = with_shared_cost(c, stage_cost(Path(setup.losses)))  # what its own scoring pass would have cost
        row[f"{stage}_device_s"], row[f"{stage}_wall_s"] = c["device_seconds"], c["wall_s"]
        row[f"{stage}_startup_device_s"] = c["startup_device_s"]
        total_dev += c["device_seconds"]
        total_wall += c["wall_s"]
        total_start += c["startup_device_s"]
        if stage == "adapter":  # its work: the projection's adapter cost model needs epochs and samples
            row["adapter_samples"], row["adapter_epochs"] = c.get("samples"), (c.get("extra") or {}).get("epochs")
    row.update({"cost_device_s": round(total_dev, 3), "cost_wall_s": round(total_wall, 3),
                "cost_startup_device_s": round(total_start, 3),
                "eval_device_s": stage_cost(steps["eval"])["device_seconds"]})
    if ref and ref["retrained"].get("device_s"):
        row["cost_vs_retraining"] = round(total_dev / ref["retrained"]["device_s"], 4)
    return row


def select_default(name: str) -> Any:
    """The select stage's default for one of its fields."""
    return next(f.default for f in fields(SelectConfig) if f.name == name)


def with_shared_cost(own: dict, shared: dict) -> dict:
    """A stage's cost record with a shared run's device-seconds, wall and start-up added (a select whose loss
    pass was run once for every trial still costs what running that pass itself would)."""
    keys = ("device_seconds", "wall_s", "startup_s", "startup_device_s")
    return {**own, **{k: round((own.get(k) or 0.0) + (shared.get(k) or 0.0), 3) for k in keys}}


def shared_losses(setup: TrialSetup, d: Path, strategies) -> TrialSetup:
    """`setup` with `losses`: sources[0] scored on its own model over the train rows, once, into `d` (reused when
    complete), when any of `strategies` reads it; `setup` unchanged otherwise. The same evaluation a trial's select
    would run (the select stage's defaults), so a trial selects the same users either way."""
    from puma_ray.stages.select import score_source_losses

    if not any(uses_losses(s) for s in strategies):
        return setup
    if not ((d / "metrics.json").is_file() and (d / "per_user.parquet").is_file()):
        log.info("trials: scoring %s on its own model once for the loss strategies -> %s", setup.sources[0], d)
        score_source_losses(setup.data, setup.sources[0], read_store_manifest(setup.sources[0])["model"]["name"],
                            str(d), select_default("workers"), select_default("batch_size"))
    return replace(setup, losses=str(d))


def claim(d: Path, identity: dict, what: str) -> None:
    """Mark `d` as holding `identity` (what would be computed there); refuse a directory that holds another."""
    marker = d / IDENTITY
    if marker.is_file():
        if read_required_json(marker, f"{marker} is missing") != identity:
            raise PumaError(f"{d} holds a {what} with other settings; nothing there was reused or changed "
                            "(choose a new --out, or delete that directory to recompute it)")
        return
    d.mkdir(parents=True, exist_ok=True)
    write_json_atomic(marker, identity)


def run_trial(setup: TrialSetup, params: dict, d: str | Path, callbacks: tuple = ()) -> dict[str, Any]:
    """The trial's record; a finished trial (its result.json) is read back, never re-run, and a directory
    of a trial with other settings is refused rather than reused."""
    d = Path(d)
    users = read_store_manifest(setup.sources[0])["num_users"]
    params = dict(params)
    if "budget" in params:
        params["budget"] = resolve_budget(params["budget"], users)
    claim(d, {"params": params, "defaults": setup.defaults, "data": setup.data, "sources": setup.sources,
              "target_model": setup.target_model, "splits": [setup.choose_split, setup.report_split],
              **({"dtype": setup.dtype} if setup.dtype != "auto" else {})}, "trial")
    done = d / RESULT
    if done.is_file():
        log.info("trial %s: already finished, reusing its result", d.name)
        return read_required_json(done, f"{done} is missing")
    steps = run_steps(setup, params, d, callbacks)
    row = {**trial_row(setup, params, steps), "trial_dir": d.name}
    write_json_atomic(done, row)
    return row
