"""`puma-ray data`: a raw source -> canonical interaction table, user/item index, manifest.

config -> source -> Ray Data passes (pipeline.py) -> index -> manifest -> report.
The manifest is written last: a directory without it is incomplete.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path

import pyarrow as pa
import ray

from puma_ray import __version__
from puma_ray.config import DataConfig
from puma_ray.data import pipeline as pl
from puma_ray.data.calibrate import fit_population
from puma_ray.data.population import Population
from puma_ray.data.calibration_report import write_calibration_report
from puma_ray.data.index import write_index
from puma_ray.data.prep import Preprocessing
from puma_ray.data.schema import FORMAT_VERSION, MANIFEST, fingerprint, write_json_atomic, write_parquet_atomic
from puma_ray.data.sources import make_source
from puma_ray.data.synthetic import make_catalogue
from puma_ray.errors import PumaError
from puma_ray.runtime.ray_utils import init_ray, sort_shuffle
from puma_ray.runtime.runs import CostMeter, Progress, build_beside, check_out, log
from puma_ray.runtime.storage import remote_paths

# Paper defaults: rating datasets drop items < 10 and users < 20; click data is not filtered.
_PAPER_MIN = {"rating": (10, 20), "click": (0, 0)}


def resolve_preprocessing(cfg: DataConfig, task: str) -> Preprocessing:
    min_item, min_user = _PAPER_MIN[task]
    return Preprocessing(
        min_item_interactions=min_item if cfg.min_item_interactions is None else cfg.min_item_interactions,
        min_user_interactions=min_user if cfg.min_user_interactions is None else cfg.min_user_interactions,
        max_user_interactions=cfg.max_user_interactions, valid_fraction=cfg.valid_fraction,
        test_fraction=cfg.test_fraction, dedup=cfg.dedup)


def _collect(ds, what: str, total: int) -> list[dict]:
    progress, stats = Progress(what, total), []
    for row in ds.iter_rows():
        stats.append(json.loads(row["stats"]))
        progress.step()
    return stats


def check_input(cfg: DataConfig) -> None:
    """A real source's --input exists and has the source's layout (before --out is touched)."""
    if cfg.source == "synthetic":
        return
    input_path = Path(cfg.input).resolve()
    if not input_path.exists():
        raise PumaError(f"--input {input_path}: no such file or directory; nothing was changed")
    make_source(cfg).files(input_path)


def _real_source(cfg: DataConfig, prep: Preprocessing, out: Path) -> dict:
    source = make_source(cfg)
    input_path = Path(cfg.input).resolve()
    files = source.files(input_path)
    titles, text_note = source.titles(input_path)
    log.info("data: %s from %s (%d file(s)); %d item titles (%s)", cfg.source, input_path, len(files),
             len(titles), text_note)
    tmp = out / ".tmp"
    titles_ref = ray.put(titles)
    lines = ray.data.read_text([str(p) for p in files], encoding=source.encoding, drop_empty_lines=True)
    lines.map_batches(pl.parse_batch, batch_format="pandas", batch_size=4096,
                      fn_kwargs={"source": source, "titles_ref": titles_ref, "seed": cfg.seed}) \
        .write_parquet(str(tmp / "parsed"))
    table = pl.ItemTable()
    with sort_shuffle():  # a dataset keeps the context it was created in (and passes it on)
        parsed = ray.data.read_parquet(str(tmp / "parsed"))
        n_parsed = parsed.count()
        n_buckets = pl.n_buckets_for(n_parsed, cfg.rows_per_shard)
        log.info("data: parsed %d rows (incl. dropped lines); de-duplicating in %d bucket(s)", n_parsed, n_buckets)
        (tmp / "buckets").mkdir(parents=True, exist_ok=True)
        partials = parsed.map_batches(lambda b: b.assign(bucket=pl.bucket_of(b["user_id"], n_buckets)),
                                      batch_format="pandas") \
            .groupby("bucket", num_partitions=n_buckets).map_groups(pl.bucket_and_dedup, batch_format="pandas",
                                          fn_kwargs={"tmp_dir": str(tmp / "buckets"), "do_dedup": prep.dedup})
        for part in partials.iter_batches(batch_format="pandas"):
            table.add(part)
    kept, reasons, fallback = table.decide(prep.min_item_interactions, cfg.missing_title)
    log.info("data: %d items seen, %d kept; finalizing buckets", len(table.count), len(kept))
    stats = _collect(ray.data.from_items([{"bucket": b} for b in range(n_buckets)]).map(
        pl.finalize_bucket, fn_kwargs={"tmp_dir": str(tmp / "buckets"), "out_dir": str(out / "interactions"),
                                       "item_text_ref": ray.put(kept), "item_reason_ref": ray.put(reasons),
                                       "prep": pl.prep_dict(prep)}), "data: finalized buckets", n_buckets)
    shutil.rmtree(tmp, ignore_errors=True)
    without_title = [i for i in table.count if table.text.get(i) is None]
    return {"task": source.task, "stats": stats, "parse_drops": table.drops, "kept": kept,
            "rows_read": sum(table.count.values()) + table.drops.get("duplicate_user_item_ts", 0),
            "users_read": table.users, "items_read": len(table.count),
            "lines_dropped": sum(n for r, n in table.drops.items() if r != "duplicate_user_item_ts"),
            "notes": {"item_text_source": text_note, "items_without_title": len(without_title),
                      "title_lines_skipped": titles.skipped,  # malformed, or no id or no title
                      "rows_of_items_without_title": sum(table.count[i] for i in without_title),
                      "kept_items_with_id_as_text": fallback}}


def _synthetic_source(cfg: DataConfig, prep: Preprocessing, out: Path, pop: Population | None) -> dict:
    task = cfg.task or "rating"
    cat = make_catalogue(cfg.seed, pop.items if pop else cfg.items, cfg.genres, cfg.latent_dim,
                         pop.popularity_exponent if pop else 0.8)
    n_shards = -(-cfg.users // cfg.users_per_shard)
    bounds = [min(s * cfg.users_per_shard, cfg.users) for s in range(n_shards + 1)]
    gen = {"seed": cfg.seed, "shard_users": bounds, "cat_ref": ray.put(cat), "task": task,
           "floor": max(prep.min_user_interactions, 1), "mean": cfg.mean_interactions,
           "history_len": cfg.history_len, "population": asdict(pop) if pop else None}
    shards = ray.data.from_items([{"id": s} for s in range(n_shards)], override_num_blocks=n_shards)
    log.info("data: synthetic %s%s, %d users in %d shard(s), %d items; counting items", task,
             f" calibrated on {cfg.calibrate_from}" if pop else "", cfg.users, n_shards, len(cat.item_ids))
    count: Counter = Counter()
    rows_read = 0
    progress = Progress("data: counted shards", n_shards)
    for r in shards.map(pl.synthetic_counts, fn_kwargs=gen).iter_rows():
        count.update(json.loads(r["counts"]))
        rows_read += r["rows"]
        progress.step()
    table = pl.ItemTable()
    table.count = count
    kept, reasons, _ = table.decide(prep.min_item_interactions, "id", dict(zip(cat.item_ids, cat.titles)))
    (out / "latents").mkdir(parents=True, exist_ok=True)
    log.info("data: generated %d rows; writing shards", rows_read)
    stats = _collect(shards.map(pl.synthetic_finalize, fn_kwargs={
        **gen, "out_dir": str(out / "interactions"), "item_text_ref": ray.put(kept),
        "item_reason_ref": ray.put(reasons), "prep": pl.prep_dict(prep)}), "data: wrote shards", n_shards)
    write_parquet_atomic(pa.table({"item_id": cat.item_ids, "genre": cat.genre, "title": cat.titles,
                                   "latent": list(cat.latent), "log_popularity": cat.log_pop}),
                         out / "latents" / "items.parquet")
    notes = {"item_text_source": "generated genre titles", "latents": "latents/ (users-*.parquet, items.parquet)"}
    if pop:
        pop.save(out / "calibration.json")
        notes["calibration"] = (f"calibration.json (fitted on {pop.fitted_from['dataset']}); calibration.md and "
                                "calibration.png compare the real and the generated data")
    return {"task": task, "stats": stats, "parse_drops": Counter(), "kept": kept, "rows_read": rows_read,
            "users_read": cfg.users, "items_read": len(count), "lines_dropped": 0, "notes": notes}


def build(cfg: DataConfig, prep: Preprocessing, task: str, out: Path, pop: Population | None = None) -> dict:
    """Every pass, the index and the manifest (written last) into `out`; returns the JSON summary."""
    (out / "interactions").mkdir(parents=True)
    with CostMeter(out, "data", cfg) as meter:
        meter.startup_s = init_ray()
        # Ray Data spreads the passes over every CPU of the cluster: that is the device time used.
        meter.workers = int(ray.cluster_resources().get("CPU", 1))
        res = _synthetic_source(cfg, prep, out, pop) if cfg.source == "synthetic" else _real_source(cfg, prep, out)
        dropped = Counter(res["parse_drops"])
        for s in res["stats"]:
            dropped.update(s["dropped"])
        index = write_index(out, res["kept"])
        rows = sum(s["rows"] for s in index["shards"])
        if rows == 0:
            raise PumaError(f"empty result after filtering {res['rows_read']} rows: dropped {dict(dropped)}; relax "
                            f"min_user_interactions / min_item_interactions (now {prep.min_user_interactions} / "
                            f"{prep.min_item_interactions}); nothing at --out was changed")
        meter.samples = rows
    manifest = {
        "format_version": FORMAT_VERSION, "created_by": f"puma-ray {__version__}", "source": cfg.source,
        "input": cfg.input, "task": res["task"], "seed": cfg.seed, "preprocessing": pl.prep_dict(prep),
        "records_read": res["rows_read"] + res["lines_dropped"],  # every record of the input, dropped or not
        "rows_read": res["rows_read"], "users_read": res["users_read"], "items_read": res["items_read"],
        "lines_dropped": res["lines_dropped"],
        "rows_dropped": dict(sorted(dropped.items())), "rows": rows, "users": index["users"],
        "items": index["items"], "splits": index["splits"], "notes": res["notes"], "shards": index["shards"],
        "fingerprint": fingerprint(out, index["shards"]),
    }
    if pop is not None:  # before the manifest: a dataset without its report is incomplete too
        write_calibration_report(Path(cfg.calibrate_from), out, pop, cfg.seed)
    write_json_atomic(out / MANIFEST, manifest)
    return {"source": cfg.source, "task": res["task"], "rows": rows, "users": index["users"],
            "items": index["items"], "rows_read": res["rows_read"], "users_read": res["users_read"],
            "items_read": res["items_read"], "rows_dropped": manifest["rows_dropped"],
            "splits": {s: v["rows"] for s, v in index["splits"].items()}, "fingerprint": manifest["fingerprint"],
            "wall_s": meter.record.wall_s}


def planted(pop: Population, cfg: DataConfig) -> Population:
    """The fitted population with the config's planted_* structure put in its place (a positive control: taste
    groups of chosen sizes, a chosen share of label variance from taste and quality); the rest stays fitted."""
    given = {"group_shares": cfg.planted_group_shares, "taste_share": cfg.planted_taste_share,
             "quality_share": cfg.planted_quality_share}
    given = {k: v for k, v in given.items() if v is not None}
    if not given:
        return pop
    return replace(pop, **given, fitted_from={**pop.fitted_from, "planted": given})


@remote_paths
def run_data(cfg: DataConfig) -> dict:
    """Build the dataset directory `cfg.out`; returns the JSON summary.

    The dataset is built beside --out and swapped in when complete: an existing dataset there
    survives any failure (bad input, an empty result, a killed job) untouched."""
    check_out(cfg.out, "dataset")  # first: an --out holding another kind of output is refused untouched
    check_input(cfg)
    task = (cfg.task or "rating") if cfg.source == "synthetic" else make_source(cfg).task
    prep = resolve_preprocessing(cfg, task)
    pop = fit_population(cfg.calibrate_from, cfg.seed) if cfg.calibrate_from else None  # before --out is touched
    pop = planted(pop, cfg) if pop else None
    if pop:
        log.info("data: calibrated on %s: %d taste group(s), activity Lomax(%.2f, %.1f) above %d, popularity "
                 "exponent %.2f, taste share %.2f", cfg.calibrate_from, len(pop.group_shares), pop.activity_shape,
                 pop.activity_scale, pop.floor, pop.popularity_exponent, pop.taste_share)
    # the work directory is absolute: Ray tasks write there from elsewhere
    out, summary = build_beside(cfg.out, "data", cfg, lambda work: build(cfg, prep, task, work, pop))
    log.info("data: %d rows, %d users, %d items -> %s", summary["rows"], summary["users"], summary["items"], out)
    return {"out": str(out), **summary}
