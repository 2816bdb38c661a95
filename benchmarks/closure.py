# .venv/bin/python benchmarks/closure.py --out /tmp/puma-closure [--movielens ../shared/data/ml-100k] [--seeds 0 1 2]
"""Migration quality as gap closure on MovieLens 100k, tiny llama -> tiny qwen2 (a measurement, not a test).

floor     = `prompts --freeze-prompts` on the target (fresh random prompts, head trained)
retrained = `prompts` on the target (full retraining)
migrated  = an adapter trained on ALL users' source prompts, then `migrate` + `evaluate`
closure   = (floor - migrated) / (floor - retrained)

Every run chooses its best epoch on `valid`; every figure is on `test`, which chooses nothing.
Per seed, then mean ± std over seeds; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from puma_ray.config import BenchConfig, DataConfig, ModelsConfig  # noqa: E402
from puma_ray.runtime.ray_utils import init_ray  # noqa: E402
from puma_ray.runtime.runs import setup_logging  # noqa: E402
from puma_ray.stages.data import run_data  # noqa: E402
from puma_ray.stages.models import run_models  # noqa: E402
from puma_ray.experiments.bench import trained  # noqa: E402
from puma_ray.experiments.stats import mean_std  # noqa: E402
from puma_ray.experiments.trial import TrialSetup, closure, run_trial  # noqa: E402


def movielens_workspace(out: Path, movielens: str, families: tuple[str, ...]) -> str:
    """Starts logging and Ray; (reused when there) OUT/data from MovieLens 100k and a tiny model of each
    family at OUT/<family>; returns the data directory's absolute path."""
    setup_logging()
    init_ray()
    data = str((out / "data").resolve())
    if not (out / "data" / "manifest.json").is_file():
        run_data(DataConfig(source="movielens", input=movielens, out=data))
    for fam in families:
        run_models(ModelsConfig(family=fam, data=data, out=str(out / fam)))
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="/tmp/puma-closure")
    ap.add_argument("--movielens", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--prompt-epochs", type=int, default=10)
    ap.add_argument("--prompt-lr", type=float, default=5e-3)
    ap.add_argument("--adapter-epochs", type=int, default=4)
    ap.add_argument("--adapter-lr", type=float, default=1e-3)
    ap.add_argument("--width", type=int, default=256)
    args = ap.parse_args()
    out = Path(args.out)
    data = movielens_workspace(out, args.movielens, ("llama", "qwen2"))
    cfg = BenchConfig(data=data, source_model=str(out / "llama"), target_model=str((out / "qwen2").resolve()),
                      out=str(out), workers=args.workers, prompt_epochs=args.prompt_epochs, prompt_lr=args.prompt_lr)
    source = trained(cfg, data, cfg.source_model, out / "source", args.seeds[0], "test")
    users = json.loads((out / "data" / "manifest.json").read_text())["users"]
    rows = []
    for seed in args.seeds:
        floor = trained(cfg, data, cfg.target_model, out / f"seed{seed}" / "floor", seed, "test", freeze=True)
        full = trained(cfg, data, cfg.target_model, out / f"seed{seed}" / "retrained", seed, "test")
        setup = TrialSetup(data=data, sources=[source["store"]], target_model=cfg.target_model, task_metric="rmse",
                           workers=args.workers, defaults={"width": args.width, "lr": args.adapter_lr,
                                                           "epochs": args.adapter_epochs})
        migrated = run_trial(setup, {"strategy": "random", "budget": users, "seed": seed},
                             out / f"seed{seed}" / "all-users")
        f, r, m = floor["metrics"]["rmse"], full["metrics"]["rmse"], migrated["test_rmse"]
        rows.append({"seed": seed, "floor": f, "retrained": r, "migrated": m, "closure": closure(f, r, m, "rmse"),
                     "device_s": {"floor": floor["device_s"], "retrained": full["device_s"],
                                  "migration": migrated["cost_device_s"]}})
        print(json.dumps(rows[-1]))
    summary = {k: mean_std([row[k] for row in rows])[:2] for k in ("floor", "retrained", "migrated", "closure")}
    print(json.dumps({"source_test_rmse": source["metrics"]["rmse"], "seeds": args.seeds,
                      **{f"{k}_mean": v[0] for k, v in summary.items()}, **{f"{k}_std": v[1] for k, v in summary.items()}}))


if __name__ == "__main__":
    main()
