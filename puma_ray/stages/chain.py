"""`puma-ray chain`: chained migration A -> B -> C ... without retraining on the original prompts.

config -> evaluate the source store on its own model (hop 0) -> for each next model:
select (on the current store) -> adapter -> migrate -> evaluate -> the migrated store
becomes the next source -> report.md + chain.png (metric per hop).

Each hop lives in DIR/hop-N/{selection,adapter,store,eval} with hop.json, the settings and
input fingerprints it was made with. Re-run with the same DIR, a hop whose hop.json matches is
reused (its finished steps are skipped, an interrupted one resumes); a hop made with other
settings or inputs is refused before anything is written, or re-run with overwrite=true, and so
is every hop after it (its source changes). The report says which hops were reused.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from puma_ray.config import AdapterStageConfig, ChainConfig, EvaluateConfig, MigrateConfig, SelectConfig
from puma_ray.core.hf import describe_model
from puma_ray.core.tasks import TASKS
from puma_ray.errors import PumaError
from puma_ray.data.schema import read_manifest as read_data_manifest
from puma_ray.runtime.ray_utils import init_ray
from puma_ray.runtime.runs import CostMeter, check_out, log, open_run, write_markdown
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
                              use_gpu=cfg.use_gpu, gpus_per_worker=cfg.gpus_per_worker, dtype=cfg.dtype))
    return store


HOP_FILE = "hop.json"
HOP_KEYS = ("strategy", "budget", "clusters", "min_per_cluster", "epochs", "min_steps", "lr", "width", "rank",
            "batch_size", "split", "seed", "dtype")


def hop_settings(cfg: ChainConfig, hop: int, source: str | Path, model: str, data_fingerprint: str) -> dict:
    """What hop `hop`'s outputs depend on: the chain's settings, the model it migrates to (fingerprint) and
    its source store (manifest digest: its shards' checksums, head and lineage)."""
    digest = hashlib.sha256((Path(source) / MANIFEST).read_bytes()).hexdigest()
    settings = {"hop": hop, "model": describe_model(model)["fingerprint"], "source_manifest_sha256": digest,
                "data_fingerprint": data_fingerprint, **{k: getattr(cfg, k) for k in HOP_KEYS}}
    return settings if hop else {k: settings[k] for k in ("hop", "model", "source_manifest_sha256",
                                                          "data_fingerprint", "split", "dtype")}


def _differences(old: dict, new: dict) -> str:
    keys = [k for k in new if old.get(k) != new[k]]
    return ", ".join(f"{k} {old.get(k)!r} -> {new[k]!r}" for k in keys[:4]) or "unreadable hop.json"


def claim_hop(hop_dir: Path, settings: dict, overwrite: bool) -> bool:
    """True when `hop_dir` holds this hop made with `settings` (reused); False when it is new or was made with
    other settings and overwrite is given (deleted first). Else a PumaError, before anything changes."""
    if hop_dir.is_dir() and any(hop_dir.iterdir()):
        try:
            old = json.loads((hop_dir / HOP_FILE).read_text())
        except (OSError, ValueError):
            old = {}
        if old == settings:
            return True
        if not overwrite:
            raise PumaError(f"--out {hop_dir} was made with other settings or inputs ({_differences(old, settings)}); "
                            "nothing was changed (pass overwrite=true to re-run it and the hops after it, or give "
                            "another --out)")
        shutil.rmtree(hop_dir)
    hop_dir.mkdir(parents=True, exist_ok=True)
    (hop_dir / HOP_FILE).write_text(json.dumps(settings, indent=2) + "\n")
    return False


def check_hops(cfg: ChainConfig, out: Path, data_fingerprint: str) -> None:
    """Refuse, before anything is written, a re-run whose hops in --out were made otherwise (without overwrite):
    hops are checked in order while each is reusable and complete (a later hop's source is the store before it)."""
    if cfg.overwrite:
        return
    source, hops = cfg.source, [read_store_manifest(cfg.source)["model"]["name"], *cfg.models]
    for hop, model in enumerate(hops):
        hop_dir = out / f"hop-{hop}"
        if not (hop_dir.is_dir() and any(hop_dir.iterdir())):
            if hop == 0:  # hop 0 only scores the source: the hops after it do not depend on it
                continue
            _refuse_stale_hops(out, hop)
            return
        settings = hop_settings(cfg, hop, source, model, data_fingerprint)
        old = (hop_dir / HOP_FILE).read_text() if (hop_dir / HOP_FILE).is_file() else "{}"
        try:
            same = json.loads(old) == settings
        except ValueError:
            same = False
        if not same:
            claim_hop(hop_dir, settings, overwrite=False)  # raises, naming the differences
        store = hop_dir / "store"
        if hop and not (store / MANIFEST).is_file():
            _refuse_stale_hops(out, hop)
            return
        source = store if hop else source


def _refuse_stale_hops(out: Path, hop: int) -> None:
    """Hops after `hop` (unfinished or absent) were made from a source that will change: refused."""
    later = sorted(p.name for p in out.glob("hop-*")
                   if p.name[4:].isdigit() and int(p.name[4:]) > hop and p.is_dir() and any(p.iterdir()))
    if later:
        raise PumaError(f"--out {out}: {', '.join(later)} came after an unfinished or missing hop-{hop} and were "
                        "made from another source; nothing was changed (pass overwrite=true)")


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
    check_out(cfg.out, "chain")  # first: an --out holding another kind of output is refused untouched
    data = read_data_manifest(cfg.data)
    task = TASKS[data["task"]]
    first = read_store_manifest(cfg.source)
    check_hops(cfg, Path(cfg.out), data["fingerprint"])  # before config.yaml or any hop changes
    out = open_run(cfg.out, "chain", cfg)
    if cfg.overwrite:  # hops past the chain's last are from another run: they go
        for stale in [p for p in out.glob("hop-*") if p.name[4:].isdigit() and int(p.name[4:]) > len(cfg.models)]:
            shutil.rmtree(stale)
    metric = task.metric
    with CostMeter(out, "chain", cfg, workers=cfg.workers) as meter:
        meter.startup_s = init_ray()  # one runtime for every hop's stages
        reused = claim_hop(out / "hop-0", hop_settings(cfg, 0, cfg.source, first["model"]["name"], data["fingerprint"]),
                           cfg.overwrite)
        m0 = evaluated(cfg, first["model"]["name"], cfg.source, out / "hop-0" / "eval")
        rows = [{"hop": 0, "model": first["model"]["name"], "family": first["model"]["family"], metric: m0[metric],
                 "store": str(Path(cfg.source).resolve()), "reused": reused}]
        log.info("chain: hop 0 (%s) %s %.4f%s", first["model"]["family"], metric, m0[metric],
                 " (reused)" if reused else "")
        source = cfg.source
        for hop, model in enumerate(cfg.models, start=1):
            hop_dir = out / f"hop-{hop}"
            settings = hop_settings(cfg, hop, source, model, data["fingerprint"])
            reused = claim_hop(hop_dir, settings, cfg.overwrite)
            store = run_hop(cfg, source, model, hop_dir)
            m = evaluated(cfg, model, store, hop_dir / "eval")
            family = read_store_manifest(store)["model"]["family"]
            rows.append({"hop": hop, "model": model, "family": family, metric: m[metric],
                         "store": str(store.resolve()), "reused": reused})
            log.info("chain: hop %d (%s) %s %.4f%s", hop, family, metric, m[metric], " (reused)" if reused else "")
            source = str(store)
        meter.extra = {"hops": len(cfg.models), metric: rows[-1][metric]}
    lineage = read_store_manifest(source)["lineage"]
    lines = [f"# Chained migration ({cfg.strategy}, budget {cfg.budget})", "",
             f"| hop | model family | {metric} ({cfg.split}) | reused from an earlier run | store |",
             "|---:|---|---:|---|---|"]
    lines += [f"| {r['hop']} | {r['family']} | {r[metric]:.4f} | {'yes' if r['reused'] else 'no'} | {r['store']} |"
              for r in rows]
    lines += ["", f"Lineage of the last store: {' -> '.join(step['step'] for step in lineage)} "
              f"({len(lineage)} steps)."]
    write_markdown(out / "report.md", lines)
    save_chain_plot(out / "chain.png", rows, metric)
    return {"out": str(out), "metric": metric, "hops": rows, "reused_hops": [r["hop"] for r in rows if r["reused"]],
            "wall_s": meter.record.wall_s}
