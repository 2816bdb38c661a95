# .venv/bin/python benchmarks/selection_quality.py --demo runs/demo --seeds 0 1 2
"""PUMA selection vs random selection of the same budget, over several seeds (a benchmark, not a test).

Reuses a finished `puma-ray demo` directory (its synthetic data, models, source prompts and
the floor / full-retraining evaluations). For every seed and strategy: select -> adapter
(same seed) -> migrate every user -> evaluate on the validation split. Prints each run's
RMSE and gap closure and the means; the last line says which strategy won on average.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from puma_ray.config import AdapterStageConfig, DemoConfig, EvaluateConfig, MigrateConfig, SelectConfig  # noqa: E402
from puma_ray.ray_utils import init_ray  # noqa: E402
from puma_ray.runs import setup_logging  # noqa: E402
from puma_ray.stages.adapter import run_adapter  # noqa: E402
from puma_ray.stages.demo import SIZES, closure  # noqa: E402
from puma_ray.stages.evaluate import run_evaluate  # noqa: E402
from puma_ray.stages.migrate import run_migrate  # noqa: E402
from puma_ray.stages.select import run_select  # noqa: E402


def one_run(demo: Path, cfg: DemoConfig, work: Path, strategy: str, seed: int, budget: int, target: str) -> float:
    size = SIZES[cfg.size]
    syn, src = str(demo / "data" / "synthetic"), str(demo / "prompts" / "source")
    d = work / f"{strategy}-seed{seed}"
    if not (d / "eval" / "metrics.json").is_file():
        run_select(SelectConfig(data=syn, prompts=src, out=str(d / "select"), strategy=strategy, budget=budget,
                                clusters=size.clusters, min_per_cluster=max(1, budget // (4 * size.clusters)), seed=seed))
        run_adapter(AdapterStageConfig(data=syn, source=[src], target_model=target, users=str(d / "select"),
                                       out=str(d / "adapter"), workers=cfg.workers, epochs=size.adapter_epochs,
                                       lr=cfg.adapter_lr, width=cfg.adapter_width, seed=seed))
        run_migrate(MigrateConfig(adapter=str(d / "adapter"), source=[src], out=str(d / "store")))
        run_evaluate(EvaluateConfig(data=syn, model=target, prompts=str(d / "store"), out=str(d / "eval")))
    return json.loads((d / "eval" / "metrics.json").read_text())["rmse"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--demo", default="runs/demo", help="a finished `puma-ray demo` output directory")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--budget", type=int, default=None, help="default: the demo size's budget")
    ap.add_argument("--work", default=None, help="default: DEMO/selection-quality")
    args = ap.parse_args()
    setup_logging()
    demo = Path(args.demo)
    import yaml

    cfg = DemoConfig(**yaml.safe_load((demo / "config.yaml").read_text()))
    budget = args.budget or SIZES[cfg.size].budget
    target = str(next((demo / "models").glob("target-*")))
    floor = json.loads((demo / "eval" / "floor" / "metrics.json").read_text())["rmse"]
    full = json.loads((demo / "eval" / "retrained" / "metrics.json").read_text())["rmse"]
    work = Path(args.work or demo / "selection-quality")
    init_ray()
    rows = {s: [one_run(demo, cfg, work, s, seed, budget, target) for seed in args.seeds] for s in ("puma", "random")}
    print(f"\n[bench] {budget} users selected, floor RMSE {floor:.4f}, full retraining {full:.4f}")
    print("| seed | PUMA RMSE | PUMA closure | random RMSE | random closure |\n|---:|---:|---:|---:|---:|")
    for k, seed in enumerate(args.seeds):
        p, r = rows["puma"][k], rows["random"][k]
        print(f"| {seed} | {p:.4f} | {closure(floor, full, p):.2f} | {r:.4f} | {closure(floor, full, r):.2f} |")
    mp, mr = float(np.mean(rows["puma"])), float(np.mean(rows["random"]))
    print(f"| mean | {mp:.4f} | {closure(floor, full, mp):.2f} | {mr:.4f} | {closure(floor, full, mr):.2f} |")
    print(f"[bench] {'PUMA' if mp < mr else 'random'} selection wins on average by {abs(mp - mr):.4f} RMSE")


if __name__ == "__main__":
    main()
