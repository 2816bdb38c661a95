# .venv/bin/python benchmarks/coldstart_quality.py --out /tmp/puma-coldstart [--movielens ../shared/data/ml-100k] [--seeds 0 1 2]
"""Cold-start prompts on MovieLens 100k (issue 18, item 3): a measurement, not a test.

Per seed: prompts for every user trained on a tiny llama (`prompts`, full retraining, best epoch on
valid); a seeded --cold-fraction of the users is then treated as cold-start (their prompts removed
from the store) and given a prompt three ways, all scored with the same store's head on `test`:
  coldstart = `puma-ray coldstart` (similarity-weighted mean of the nearest users' prompts)
  mean      = the mean prompt of the remaining users
  random    = uniform(-0.1, 0.1), the paper's initialisation of a new prompt
  own       = the users' own trained prompts (what retraining them would give: the upper bound)
With --tune-epochs K (default 1), the coldstart and random stores are also trained K more epochs on every
user (`prompts --init-from`, which keeps the store's head): coldstart+tune and random+tune, the start
followed by the short per-user fine-tune a new user would get.
Only the cold users' test rows count (RMSE from per_user.parquet's per-user sums). Test chooses
nothing here. Per seed, then mean ± std and paired differences (95% t-interval) over seeds; the last
line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from closure import movielens_workspace  # noqa: E402
from puma_ray.config import BenchConfig, ColdstartConfig, EvaluateConfig  # noqa: E402
from puma_ray.data.schema import copy_atomic  # noqa: E402
from puma_ray.stages.coldstart import run_coldstart  # noqa: E402
from puma_ray.stages.evaluate import run_evaluate  # noqa: E402
from puma_ray.store.prompt_store import finalize, iter_prompts, read_head, read_manifest, write_shard  # noqa: E402
from puma_ray.experiments.bench import trained, users_metric  # noqa: E402
from puma_ray.experiments.stats import mean_std, paired_interval  # noqa: E402

METHODS = ("coldstart", "mean", "random", "own")
TUNED = ("coldstart", "random")


def write_store(out: Path, like: Path, users: list[str], prompts: np.ndarray) -> Path:
    """A store of `users` with `prompts`, with the model, lineage and head of store `like`."""
    if (out / "manifest.json").is_file():
        return out
    m = read_manifest(like)
    info, bad = write_shard(out, 0, users, prompts)
    path, fields = read_head(like)
    copy_atomic(path, out / "head.safetensors")
    finalize(out, task=m["task"], prompt_len=m["prompt_len"], dim=m["dim"], model=m["model"], lineage=m["lineage"],
             dataset_fingerprint=m.get("dataset_fingerprint"), shards=[info], quarantined=bad,
             head={"weights": "head.safetensors", **fields})
    return out


def cold_rmse(data: str, model: str, store: Path, out: Path, cold: set[str]) -> float:
    """Test RMSE over the cold users' rows only."""
    if not (out / "metrics.json").is_file():
        run_evaluate(EvaluateConfig(data=data, model=model, prompts=str(store), split=["test"], out=str(out)))
    return users_metric(out / "per_user.parquet", list(cold), "rmse")


def one_seed(cfg: BenchConfig, data: str, out: Path, seed: int, fraction: float, tune_epochs: int) -> dict:
    full = Path(trained(cfg, data, cfg.target_model, out / "retrained", seed, "test")["store"])
    users, prompts = zip(*[(u, x[i]) for ids, x in iter_prompts(full) for i, u in enumerate(ids)])
    rng = np.random.default_rng(seed)
    is_cold = rng.random(len(users)) < fraction
    warm_users = [u for u, c in zip(users, is_cold) if not c]
    cold_users = [u for u, c in zip(users, is_cold) if c]
    x = np.stack(prompts)
    warm = write_store(out / "warm", full, warm_users, x[~is_cold])
    run_coldstart(ColdstartConfig(data=data, prompts=str(warm), out=str(out / "coldstart")))
    stores = {"coldstart": out / "coldstart", "own": full,
              "mean": write_store(out / "mean", full, warm_users + cold_users,
                                  np.concatenate([x[~is_cold], np.repeat(x[~is_cold].mean(0, keepdims=True),
                                                                         len(cold_users), 0)])),
              "random": write_store(out / "random", full, warm_users + cold_users,
                                    np.concatenate([x[~is_cold], rng.uniform(-0.1, 0.1, x[is_cold].shape)]))}
    cold = set(cold_users)
    row = {m: cold_rmse(data, cfg.target_model, stores[m], out / f"eval-{m}", cold) for m in METHODS}
    for m in TUNED if tune_epochs else ():
        tuned = trained(cfg, data, cfg.target_model, out / f"tuned{tune_epochs}-{m}", seed, "test",
                        init_from=str(stores[m]), epochs=tune_epochs)
        row[f"{m}+tune"] = cold_rmse(data, cfg.target_model, Path(tuned["store"]), out / f"eval-{m}-tuned{tune_epochs}",
                                     cold)
    print(f"[coldstart] seed {seed}: {len(cold)} cold users of {len(users)}: "
          + ", ".join(f"{m} {v:.4f}" for m, v in row.items()), flush=True)
    return {"seed": seed, "cold_users": len(cold), **row}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="/tmp/puma-coldstart")
    ap.add_argument("--movielens", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--cold-fraction", type=float, default=0.2)
    ap.add_argument("--tune-epochs", type=int, default=1, help="epochs of per-user fine-tune after the start; 0 = none")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--prompt-epochs", type=int, default=10)
    ap.add_argument("--prompt-lr", type=float, default=5e-3)
    args = ap.parse_args()
    out = Path(args.out)
    data = movielens_workspace(out, args.movielens, ("llama",))
    cfg = BenchConfig(data=data, source_model=str(out / "llama"), target_model=str((out / "llama").resolve()),
                      out=str(out), workers=args.workers, prompt_epochs=args.prompt_epochs, prompt_lr=args.prompt_lr)
    rows = [one_seed(cfg, data, out / f"seed{s}", s, args.cold_fraction, args.tune_epochs) for s in args.seeds]
    summary = {"data": "ml-100k", "seeds": args.seeds, "cold_fraction": args.cold_fraction,
               "tune_epochs": args.tune_epochs, "cold_users": [r["cold_users"] for r in rows], "per_seed": rows}
    tuned = [f"{m}+tune" for m in TUNED] if args.tune_epochs else []
    for m in list(METHODS) + tuned:
        mean, std, n = mean_std([r[m] for r in rows])
        summary[f"{m}_rmse"] = {"mean": round(mean, 4), "std": round(std, 4), "seeds": n}
    for other in ("mean", "random"):
        d = paired_interval([r["coldstart"] for r in rows], [r[other] for r in rows])
        summary[f"coldstart_minus_{other}"] = {"mean": round(d.mean, 4), "low": round(d.low, 4),
                                               "high": round(d.high, 4), "excludes_zero": d.excludes_zero}
    if tuned:
        d = paired_interval([r["coldstart+tune"] for r in rows], [r["random+tune"] for r in rows])
        summary["coldstart+tune_minus_random+tune"] = {"mean": round(d.mean, 4), "low": round(d.low, 4),
                                                       "high": round(d.high, 4), "excludes_zero": d.excludes_zero}
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
