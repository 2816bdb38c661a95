"""`puma-ray chain`: chained migration A -> B -> C ... without retraining on the original prompts.

config -> evaluate the source store on its own model (hop 0) -> for each next model:
select (on the current store) -> adapter -> migrate -> evaluate -> the migrated store
becomes the next source -> report.md + chain.png (metric per hop).

Each hop lives in DIR/hop-N/{selection,adapter,store,eval}; a hop whose store and
evaluation are complete is reused when the chain is re-run with the same DIR.
"""

from __future__ import annotations

import json
from pathlib import Path

from puma_ray.config import AdapterStageConfig, ChainConfig, EvaluateConfig, MigrateConfig, SelectConfig
from puma_ray.core.tasks import TASKS
from puma_ray.data.schema import read_manifest as read_data_manifest
from puma_ray.runtime.ray_utils import init_ray
from puma_ray.runtime.runs import CostMeter, log, open_run, write_markdown
from puma_ray.runtime.storage import remote_paths
from puma_ray.store.prompt_store import MANIFEST
from puma_ray.store.prompt_store import read_manifest as read_store_manifest


def evaluated(cfg: ChainConfig, model: str, store: str | Path, out: Path) -> dict:
    """metrics.json of `store` on `model` (computed unless already there)."""
    from puma_ray.stages.evaluate import run_evaluate

    if not (out / "metrics.json").is_file():
        run_evaluate(EvaluateConfig(data=cfg.data, model=model, prompts=str(store), split=cfg.split, out=str(out),
                                    workers=cfg.workers, use_gpu=cfg.use_gpu,
                                    gpus_per_worker=cfg.gpus_per_worker, dtype=cfg.dtype))
    return json.loads((out / "metrics.json").read_text())


def run_hop(cfg: ChainConfig, source: str, model: str, hop_dir: Path) -> Path:
    """select -> adapter -> migrate for one hop; returns the migrated store (skips finished steps)."""
    from puma_ray.stages.adapter import run_adapter
    from puma_ray.stages.migrate import run_migrate
    from puma_ray.stages.select import run_select

    store = hop_dir / "store"
    if (store / MANIFEST).is_file():
        return store
    if not (hop_dir / "selection" / "selected.parquet").is_file():
        run_select(SelectConfig(data=cfg.data, prompts=source, out=str(hop_dir / "selection"), strategy=cfg.strategy,
                                budget=cfg.budget, seed=cfg.seed, clusters=cfg.clusters,
                                min_per_cluster=cfg.min_per_cluster))
    if not (hop_dir / "adapter" / "adapter.json").is_file():
        run_adapter(AdapterStageConfig(data=cfg.data, source=[source], target_model=model,
                                       users=str(hop_dir / "selection"), out=str(hop_dir / "adapter"),
                                       workers=cfg.workers, epochs=cfg.epochs, lr=cfg.lr, width=cfg.width,
                                       rank=cfg.rank, batch_size=cfg.batch_size, seed=cfg.seed,
                                       min_steps=cfg.min_steps, use_gpu=cfg.use_gpu,
                                       gpus_per_worker=cfg.gpus_per_worker, dtype=cfg.dtype))
    run_migrate(MigrateConfig(adapter=str(hop_dir / "adapter"), source=[source], out=str(store), workers=cfg.workers,
                              use_gpu=cfg.use_gpu, gpus_per_worker=cfg.gpus_per_worker))
    return store


def save_chain_plot(path: Path, rows: list[dict], metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    labels = [f"{r['hop']}: {r['family']}" for r in rows]
    ax.plot(range(len(rows)), [r[metric] for r in rows], "o-")
    ax.set_xticks(range(len(rows)), labels, rotation=20)
    ax.set_ylabel(f"{metric} ({'lower' if metric in ('rmse', 'mae') else 'higher'} is better)")
    ax.set_title("chained migration: metric at each hop")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@remote_paths
def run_chain(cfg: ChainConfig) -> dict:
    """Migrate cfg.source along cfg.models; returns the JSON summary with the metric at every hop."""
    task = TASKS[read_data_manifest(cfg.data)["task"]]
    first = read_store_manifest(cfg.source)
    out = open_run(cfg.out, "chain", cfg)
    metric = task.metric
    with CostMeter(out, "chain", cfg, workers=cfg.workers) as meter:
        meter.startup_s = init_ray()  # one runtime for every hop's stages
        m0 = evaluated(cfg, first["model"]["name"], cfg.source, out / "hop-0" / "eval")
        rows = [{"hop": 0, "model": first["model"]["name"], "family": first["model"]["family"], metric: m0[metric],
                 "store": str(Path(cfg.source).resolve())}]
        log.info("chain: hop 0 (%s) %s %.4f", first["model"]["family"], metric, m0[metric])
        source = cfg.source
        for hop, model in enumerate(cfg.models, start=1):
            hop_dir = out / f"hop-{hop}"
            store = run_hop(cfg, source, model, hop_dir)
            m = evaluated(cfg, model, store, hop_dir / "eval")
            family = read_store_manifest(store)["model"]["family"]
            rows.append({"hop": hop, "model": model, "family": family, metric: m[metric], "store": str(store.resolve())})
            log.info("chain: hop %d (%s) %s %.4f", hop, family, metric, m[metric])
            source = str(store)
        meter.extra = {"hops": len(cfg.models), metric: rows[-1][metric]}
    lineage = read_store_manifest(source)["lineage"]
    lines = [f"# Chained migration ({cfg.strategy}, budget {cfg.budget})", "",
             f"| hop | model family | {metric} ({cfg.split}) | store |", "|---:|---|---:|---|"]
    lines += [f"| {r['hop']} | {r['family']} | {r[metric]:.4f} | {r['store']} |" for r in rows]
    lines += ["", f"Lineage of the last store: {' -> '.join(step['step'] for step in lineage)} "
              f"({len(lineage)} steps)."]
    write_markdown(out / "report.md", lines)
    save_chain_plot(out / "chain.png", rows, metric)
    return {"out": str(out), "metric": metric, "hops": rows, "wall_s": meter.record.wall_s}
