# .venv/bin/python benchmarks/chain_aggregation.py --out /tmp/puma-chain [--users 1000] [--budget 0.1] \
#     [--seeds 0 1 2 3 4]
"""The paper's other two claims on calibrated users, with seeds and paired intervals (a measurement, not a test;
issue 12): a chain of migrations across three model families keeps its quality hop after hop (Fig. 5), and
prompts from two source models together migrate better than either alone (Fig. 6).

Three tiny model families A = llama, B = qwen2, C = gemma3, built on the population's catalogue.

Workspace (reused when complete, under --out):
  data/real, data/calibrated  as benchmarks/selection_quality.py (N users calibrated on MovieLens 100k)
  llama, qwen2, gemma3        the tiny models (`puma-ray models`)
  prompts/<family>            prompts trained on each family (seed 0): A's are the source, B's the second
                              source of the aggregation and B's full-retraining reference, C's C's
  floor/<family>              B's and C's floors (`prompts --freeze-prompts`)
Per seed s (every route's selection and adapter take seed s: paired):
  chain     `puma-ray chain` A -> B -> C: puma selection at every hop, each hop's migrated store the next's source
  A-C       one hop A -> C (select -> adapter -> migrate -> evaluate, experiments/trial.py)
  B-C       one hop B -> C (B's prompts)
  AB-C      aggregated: A's and B's prompts of each user concatenated -> C (selection on A's, as A -> C's)
Every figure is on `test`, which chooses nothing; closure = (floor - migrated) / (floor - retrained) on the route's
target. Outputs: runs.csv (a row per route x seed), report.md (table, paired comparisons in words), chain.png;
the last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from puma_ray.config import BenchConfig, ChainConfig, ModelsConfig  # noqa: E402
from puma_ray.runtime.ray_utils import init_ray  # noqa: E402
from puma_ray.runtime.runs import log, setup_logging  # noqa: E402
from puma_ray.stages.chain import run_chain  # noqa: E402
from puma_ray.stages.models import run_models  # noqa: E402
from puma_ray.experiments.bench import trained  # noqa: E402
from puma_ray.experiments.claims import claim_lines, paired_routes, route_summary  # noqa: E402
from puma_ray.experiments.trial import TrialSetup, closure, resolve_budget, run_trial  # noqa: E402
from selection_quality import population  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
A, B, C = "llama", "qwen2", "gemma3"
CHAIN, HOP1, DIRECT, FROM_B, AGG = f"{A}->{B}->{C}", f"{A}->{B}", f"{A}->{C}", f"{B}->{C}", f"{A}+{B}->{C}"
PAIRS = [(CHAIN, DIRECT), (AGG, DIRECT), (AGG, FROM_B)]
CLOSURE_PAIRS = [(CHAIN, HOP1)]


def workspace(args: argparse.Namespace, out: Path) -> tuple[str, dict, dict, dict]:
    """Population, models and the prompt stores: data, {family: model dir}, {family: prompts},
    {family: floor} (floors of B and C)."""
    data = population(out, args.real, args.users, 0)
    models = {}
    for fam in (A, B, C):
        models[fam] = str(out / fam)
        if not (out / fam / "config.json").is_file():
            run_models(ModelsConfig(family=fam, data=data, out=models[fam]))
    cfg = BenchConfig(data=data, source_model=models[A], target_model=models[C], out=str(out), workers=args.workers,
                      prompt_epochs=args.prompt_epochs, prompt_lr=args.prompt_lr)
    prompts = {fam: trained(cfg, data, models[fam], out / "prompts" / fam, 0, "test") for fam in (A, B, C)}
    floors = {fam: trained(cfg, data, models[fam], out / "floor" / fam, 0, "test", freeze=True) for fam in (B, C)}
    return data, models, prompts, floors


def row(route: str, target: str, hops: int, seed: int, value: float, prompts: dict, floors: dict) -> dict:
    """One runs.csv row: the route's test RMSE on its target and its closure against that target's references."""
    ref = (floors[target]["metrics"]["rmse"], prompts[target]["metrics"]["rmse"])
    return {"route": route, "target": target, "hops": hops, "seed": seed, "test_rmse": value,
            "test_closure": closure(ref[0], ref[1], value, "rmse")}


def seed_routes(args: argparse.Namespace, out: Path, data: str, models: dict, prompts: dict, floors: dict,
                seed: int, budget: int) -> list[dict]:
    """Every route at one seed (finished steps reused): the chain's two hops, A -> C, B -> C, A+B -> C."""
    d = out / "trials" / f"seed{seed}"
    chain = run_chain(ChainConfig(data=data, source=prompts[A]["store"], models=[models[B], models[C]],
                                  out=str(d / "chain"), strategy="puma", budget=budget, workers=args.workers,
                                  epochs=args.adapter_epochs, split="test", seed=seed))
    hops = {h["hop"]: h["rmse"] for h in chain["hops"]}
    rows = [row(HOP1, B, 1, seed, hops[1], prompts, floors), row(CHAIN, C, 2, seed, hops[2], prompts, floors)]
    params = {"strategy": "puma", "budget": budget, "seed": seed}
    for route, name, sources in ((DIRECT, "A-C", [A]), (FROM_B, "B-C", [B]), (AGG, "AB-C", [A, B])):
        setup = TrialSetup(data=data, sources=[prompts[f]["store"] for f in sources], target_model=models[C],
                           task_metric="rmse", workers=args.workers, defaults={"epochs": args.adapter_epochs})
        result = run_trial(setup, params, d / name)
        rows.append(row(route, C, 1, seed, result["test_rmse"], prompts, floors))
    return rows


def plot(table: pd.DataFrame, prompts: dict, floors: dict, path: Path) -> None:
    """Left: test RMSE per hop of the chain (mean ± std over seeds) with each model's floor and retraining, and
    A -> C in one hop; right: A -> C, B -> C and A+B -> C on C."""
    from matplotlib.figure import Figure

    t = table.set_index("route")
    fig = Figure(figsize=(10, 4.2))
    left, right = fig.subplots(1, 2)
    xs = [0, 1, 2]
    y = [prompts[A]["metrics"]["rmse"], t.loc[HOP1, "rmse_mean"], t.loc[CHAIN, "rmse_mean"]]
    left.errorbar(xs, y, yerr=[0, t.loc[HOP1, "rmse_std"], t.loc[CHAIN, "rmse_std"]], marker="o", capsize=3,
                  label="chain (migrated at every hop)")
    left.errorbar([2.08], [t.loc[DIRECT, "rmse_mean"]], yerr=[t.loc[DIRECT, "rmse_std"]], marker="s", capsize=3,
                  ls="none", label=f"{DIRECT} in one hop")
    left.plot(xs, [prompts[f]["metrics"]["rmse"] for f in (A, B, C)], "k:", marker="x", label="trained on the model")
    left.plot([1, 2], [floors[f]["metrics"]["rmse"] for f in (B, C)], ls="none", marker="v", color="0.5",
              label="floor (no user prompt training)")
    left.set_xticks(xs, [f"hop {i}: {f}" for i, f in enumerate((A, B, C))])
    left.set_ylabel("test RMSE of every user")
    left.set_title("Chained migration (Fig. 5)")
    left.legend(fontsize=7)
    routes = [DIRECT, FROM_B, AGG]
    right.bar(range(3), [t.loc[r, "rmse_mean"] for r in routes], yerr=[t.loc[r, "rmse_std"] for r in routes],
              capsize=4, color=["C0", "C1", "C2"])
    for name, value, color in (("floor", floors[C]["metrics"]["rmse"], "0.5"),
                               ("retrained", prompts[C]["metrics"]["rmse"], "0.1")):
        right.axhline(value, ls=":", color=color, label=f"{C} {name} {value:.4f}")
    lo = min(prompts[C]["metrics"]["rmse"], *(t.loc[r, "rmse_mean"] - t.loc[r, "rmse_std"] for r in routes))
    hi = max(floors[C]["metrics"]["rmse"], *(t.loc[r, "rmse_mean"] + t.loc[r, "rmse_std"] for r in routes))
    right.set_ylim(lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo))
    right.set_xticks(range(3), routes, fontsize=8)
    right.set_title("Aggregated migration (Fig. 6)")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def report(out: Path, args: argparse.Namespace, facts: dict, table: pd.DataFrame, paired: pd.DataFrame) -> list[str]:
    """report.md: the setting, the per-route table, the paired comparisons in words."""
    cmd = "python benchmarks/chain_aggregation.py " + " ".join(sys.argv[1:])
    lines = ["# Chained and aggregated migration on calibrated users (Fig. 5, Fig. 6)", "", f"`{cmd}`", "",
             f"- Population: {args.users:,} synthetic users calibrated on {args.real} ({facts['rows']:,} rows); "
             f"tiny {A} (A), {B} (B), {C} (C). Every adapter: puma selection of {facts['budget']} users, seed s.",
             "- Trained on each model (seed 0), test RMSE: " +
             ", ".join(f"{f} {v:.4f}" for f, v in facts["trained"].items()) + "; floors: " +
             ", ".join(f"{f} {v:.4f}" for f, v in facts["floors"].items()) + ".",
             f"- Seeds {args.seeds}, paired (a seed gives every route the same selection seed and adapter seed); "
             "95% t-intervals of route minus the other.", "",
             "| route | target | hops | test RMSE (mean ± std) | closure (mean ± std) | seeds |",
             "|---|---|---:|---:|---:|---:|"]
    for r in table.itertuples():
        lines.append(f"| {r.route} | {r.target} | {r.hops} | {r.rmse_mean:.4f} ± {r.rmse_std:.4f} | "
                     f"{r.closure_mean:.2f} ± {r.closure_std:.2f} | {r.seeds} |")
    lines += ["", "## The claims, in words", ""] + [f"- {x}" for x in claim_lines(paired, "rmse")]
    lines += ["", "![chain and aggregation](chain.png)"]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return lines


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/puma-chain")
    ap.add_argument("--real", default=str(ROOT.parent / "shared" / "data" / "ml-100k"),
                    help="MovieLens 100k directory the population is calibrated on")
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--budget", type=float, default=0.1, help="users every adapter trains on: a fraction, or a count")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--prompt-epochs", type=int, default=6)
    ap.add_argument("--prompt-lr", type=float, default=5e-3)
    ap.add_argument("--adapter-epochs", type=int, default=4, help="the adapter stage's default (the paper's)")
    args = ap.parse_args()
    if args.budget <= 0 or args.users < 2:
        ap.error("--budget must be > 0 and --users >= 2")
    return args


def main() -> None:
    args = parse()
    out = Path(args.out).resolve()
    setup_logging()
    init_ray()
    data, models, prompts, floors = workspace(args, out)
    budget = resolve_budget(args.budget, args.users)
    runs = []
    for i, seed in enumerate(args.seeds, 1):
        log.info("chain/aggregation: seed %d (%d of %d)", seed, i, len(args.seeds))
        runs += seed_routes(args, out, data, models, prompts, floors, seed, budget)
        pd.DataFrame(runs).to_csv(out / "runs.csv", index=False)
    runs = pd.DataFrame(runs)
    table = route_summary(runs, "rmse")
    paired = pd.concat([paired_routes(runs, PAIRS, "test_rmse"), paired_routes(runs, CLOSURE_PAIRS, "test_closure")],
                       ignore_index=True)
    facts = {"rows": json.loads((Path(data) / "manifest.json").read_text())["rows"], "budget": budget,
             "trained": {f: p["metrics"]["rmse"] for f, p in prompts.items()},
             "floors": {f: p["metrics"]["rmse"] for f, p in floors.items()}}
    plot(table, prompts, floors, out / "chain.png")
    for line in report(out, args, facts, table, paired):
        print(line)
    print(json.dumps({"users": args.users, "budget": budget, "seeds": args.seeds, **facts,
                      "routes": table.to_dict("records"),
                      "paired": [{k: r[k] for k in ("route", "vs", "column", "mean", "low", "high", "seeds")}
                                 for r in paired.to_dict("records")]}))


if __name__ == "__main__":
    main()
