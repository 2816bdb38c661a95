# .venv/bin/python benchmarks/closure.py --out /tmp/puma-closure [--movielens ../shared/data/ml-100k]
"""Migration quality as gap closure on MovieLens 100k, tiny llama -> tiny qwen2 (a measurement, not a test).

floor     = `prompts --freeze-prompts` on the target (fresh random prompts, head trained)
retrained = `prompts` on the target (full retraining, best epoch on valid)
migrated  = `adapter` trained on all users' source prompts through the target; its best-epoch
            valid RMSE is that of every user's migrated prompt
closure   = (floor - migrated) / (floor - retrained)
Prints each figure with the wall time of the stage that produced it, from one run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from puma_ray.config import AdapterStageConfig, DataConfig, ModelsConfig, PromptsConfig  # noqa: E402
from puma_ray.ray_utils import init_ray  # noqa: E402
from puma_ray.runs import setup_logging  # noqa: E402
from puma_ray.stages.adapter import run_adapter  # noqa: E402
from puma_ray.stages.data import run_data  # noqa: E402
from puma_ray.stages.models import run_models  # noqa: E402
from puma_ray.stages.prompts import run_prompts  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="/tmp/puma-closure")
    ap.add_argument("--movielens", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--prompt-epochs", type=int, default=10)
    ap.add_argument("--prompt-lr", type=float, default=5e-3)
    ap.add_argument("--adapter-epochs", type=int, default=4)
    ap.add_argument("--adapter-lr", type=float, default=1e-3)
    ap.add_argument("--width", type=int, default=256)
    args = ap.parse_args()
    setup_logging()
    init_ray()
    out = Path(args.out)
    data = str(out / "data")
    run_data(DataConfig(source="movielens", input=args.movielens, out=data))
    for fam in ("llama", "qwen2"):
        run_models(ModelsConfig(family=fam, data=data, out=str(out / fam)))
    common = dict(data=data, workers=args.workers, epochs=args.prompt_epochs, lr=args.prompt_lr)
    source = run_prompts(PromptsConfig(model=str(out / "llama"), out=str(out / "source"), **common))
    retrained = run_prompts(PromptsConfig(model=str(out / "qwen2"), out=str(out / "retrained"), **common))
    floor = run_prompts(PromptsConfig(model=str(out / "qwen2"), out=str(out / "floor"), freeze_prompts=True,
                                      **common))
    migrated = run_adapter(AdapterStageConfig(data=data, source=[str(out / "source")], target_model=str(out / "qwen2"),
                                              out=str(out / "adapter"), workers=args.workers,
                                              epochs=args.adapter_epochs, lr=args.adapter_lr, width=args.width))
    f, r, m = floor["valid_rmse"], retrained["valid_rmse"], migrated["valid_rmse"]
    print(json.dumps({"source_rmse": source["valid_rmse"], "floor_rmse": f, "retrained_rmse": r, "migrated_rmse": m,
                      "closure": (f - m) / (f - r), "wall_s": {"source": source["wall_s"], "retrained": retrained["wall_s"],
                                                               "floor": floor["wall_s"], "adapter": migrated["wall_s"]},
                      "curves": {"retrained": retrained["curve"], "adapter": migrated["curve"]}}))


if __name__ == "__main__":
    main()
