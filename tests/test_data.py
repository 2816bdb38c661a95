"""Data layer: paper preprocessing, every source on tiny fixtures in its original format,
the real samples in ../shared/data, synthetic determinism, and bad input."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import shared
from puma_ray.config import DataConfig
from puma_ray.data.prep import Preprocessing, finalize_shard, split_labels
from puma_ray.data.schema import INTERACTIONS, read_manifest, shard_paths
from puma_ray.errors import PumaError
from puma_ray.stages.data import run_data


def table(d: Path) -> pd.DataFrame:
    return pd.concat(pq.read_table(p).to_pandas() for p in sorted((d / "interactions").glob("part-*.parquet")))


# --------------------------------------------------------------------------- pure preprocessing


def test_split_keeps_one_train_row_and_rounds_fractions():
    n_valid, n_test = split_labels(np.array([1, 2, 5, 10, 20]), 0.2, 0.1)
    assert n_valid.tolist() == [0, 0, 1, 2, 4]
    assert n_test.tolist() == [0, 0, 1, 1, 2]


def test_finalize_shard_counts_every_drop_and_splits_chronologically():
    rows = []
    for u, n in (("a", 6), ("b", 2)):
        rows += [{"user_id": u, "item_id": f"i{k}", "label": 3.0, "ts": 100 - k, "history_text": []} for k in range(n)]
    rows.append(dict(rows[0]))  # exact duplicate
    rows.append({"user_id": "a", "item_id": "rare", "label": 5.0, "ts": 1, "history_text": []})
    items = {f"i{k}": f"title {k}" for k in range(6)}
    prep = Preprocessing(min_item_interactions=0, min_user_interactions=3, max_user_interactions=5,
                         valid_fraction=0.2, test_fraction=0.0, dedup=True)
    out, dropped = finalize_shard(pd.DataFrame(rows), items, {"rare": "item_min_interactions"}, prep)
    assert out.schema == INTERACTIONS
    assert dict(dropped) == {"duplicate_user_item_ts": 1, "item_min_interactions": 1,
                             "user_min_interactions": 2, "user_cap_most_recent": 1}
    df = out.to_pandas()
    assert df["user_id"].unique().tolist() == ["a"]
    assert df["ts"].is_monotonic_increasing and len(df) == 5
    assert df["split"].tolist() == ["train"] * 4 + ["valid"]
    assert df["item_text"].iloc[0] == items[df["item_id"].iloc[0]]


# --------------------------------------------------------------------------- fixtures in original formats


def write_ml100k(d: Path) -> None:
    d.mkdir()
    lines = [f"{u}\t{i}\t{(u + i) % 5 + 1}\t{880000000 + 10 * i}" for u in range(1, 4) for i in range(1, 7)]
    lines += ["3\t1\t9\t880000001", "garbage"]  # rating out of range, malformed line
    (d / "u.data").write_text("\n".join(lines) + "\n")
    items = [f"{i}|Movie {i} (199{i})|01-Jan-1995||http://x|0|1" for i in range(1, 7)]
    items[0] = "1|Á köldum klaka (Cold Fever) (1994)|01-Jan-1995||x|0|1"
    items.append("a title line cut short")  # no id|title: skipped and counted
    (d / "u.item").write_bytes("\n".join(items).encode("latin-1"))


def write_ml_latest(d: Path) -> None:
    d.mkdir()
    rows = ["userId,movieId,rating,timestamp"] + [f"{u},{i},{0.5 * ((u + i) % 10 + 1)},{1000 + i}"
                                                 for u in range(1, 3) for i in range(1, 6)]
    rows.append("3,1,0.5,1001")  # the lowest half-star rating: kept, as 1
    (d / "ratings.csv").write_text("\n".join(rows) + "\n")
    (d / "movies.csv").write_text("movieId,title,genres\n" + "\n".join(f'{i},"Film, {i}",Drama' for i in range(1, 6)))


def write_amazon(d: Path, year: int) -> None:
    d.mkdir()
    recs = []
    for u in range(3):
        for i in range(4):
            if year == 2018:
                recs.append({"reviewerID": f"U{u}", "asin": f"B{i}", "overall": float(i % 5 + 1),
                             "unixReviewTime": 1400000000 + i, "summary": f"great {i}"})
            else:
                recs.append({"user_id": f"U{u}", "parent_asin": f"B{i}", "rating": float(i % 5 + 1),
                             "timestamp": (1400000000 + i) * 1000, "title": f"review {i}"})
    recs.append(recs[0])  # duplicate
    bad_ts = {"unixReviewTime": "soon"} if year == 2018 else {"timestamp": "soon"}
    recs.append({**recs[0], **bad_ts})  # a malformed timestamp: counted, never a crash
    with gzip.open(d / "reviews.jsonl.gz", "wt") as fh:
        fh.write("\n".join(json.dumps(r) for r in recs) + "\n{not json\n")
    if year == 2023:
        with gzip.open(d / "meta_Fixture.jsonl.gz", "wt") as fh:
            fh.write("\n".join(json.dumps({"parent_asin": f"B{i}", "title": f"Product {i}"}) for i in range(3)))


def write_mind(d: Path) -> None:
    d.mkdir()
    beh = ["1\tU1\t11/15/2019 8:55:22 AM\tN1 N2 N3\tN4-1 N5-0 N6-0",
           "2\tU1\t11/16/2019 9:00:00 PM\tN1 N2 N3 N4 N5 N6 N7\tN2-0 N7-1",
           "3\tU2\t11/15/2019 1:00:00 PM\t\tN4-0 N9-x",
           "bad line"]
    (d / "behaviors.tsv").write_text("\n".join(beh) + "\n")
    news = [f"N{i}\tnews\tsub\tHeadline {i}\tabstract\turl\t[]\t[]" for i in range(1, 8) if i != 5]
    (d / "news.tsv").write_text("\n".join(news) + "\n")


def write_yelp(d: Path) -> None:
    d.mkdir()
    reviews = [{"review_id": f"r{k}", "user_id": f"U{k % 2}", "business_id": f"B{k % 3}", "stars": float(k % 5 + 1),
                "date": f"2018-01-0{k + 1} 10:00:00", "text": "ok"} for k in range(6)]
    reviews.append({"review_id": "bad", "user_id": "U0", "business_id": "B0", "stars": 7.0,
                    "date": "2018-02-01 10:00:00"})
    (d / "yelp_academic_dataset_review.json").write_text("\n".join(json.dumps(r) for r in reviews) + "\n")
    (d / "yelp_academic_dataset_business.json").write_text(
        "\n".join(json.dumps({"business_id": f"B{k}", "name": f"Cafe {k}"}) for k in range(2)) + "\n{not json\n")


NO_FILTER = {"min_item_interactions": 0, "min_user_interactions": 0}
# source, writer, expected: rows_read, lines_dropped, rows_dropped subset, users, items, a text check
SOURCE_TABLE = [
    ("movielens", write_ml100k, dict(rows_read=18, lines_dropped=2, users=3, items=6,
                                     dropped={"label_out_of_range": 1, "malformed_line": 1},
                                     text=("1", "Á köldum klaka (Cold Fever) (1994)"), titles_skipped=1)),
    ("movielens", write_ml_latest, dict(rows_read=11, lines_dropped=0, users=3, items=5, dropped={},
                                        text=("1", "Film, 1"))),
    ("amazon", lambda d: write_amazon(d, 2018), dict(rows_read=13, lines_dropped=2, users=3, items=4,
                                                     dropped={"duplicate_user_item_ts": 1, "malformed_line": 1,
                                                              "malformed_timestamp": 1},
                                                     text=("B2", "great 2"))),
    ("amazon", lambda d: write_amazon(d, 2023), dict(rows_read=13, lines_dropped=2, users=3, items=4,
                                                     dropped={"duplicate_user_item_ts": 1, "malformed_timestamp": 1},
                                                     text=("B1", "Product 1"))),
    ("mind", write_mind, dict(rows_read=6, lines_dropped=2, users=2, items=5,
                              dropped={"malformed_impression": 1, "malformed_line": 1}, text=("N4", "Headline 4"))),
    ("yelp", write_yelp, dict(rows_read=6, lines_dropped=1, users=2, items=3, dropped={"label_out_of_range": 1},
                              text=("B2", "B2"), titles_skipped=1)),
]


@pytest.mark.parametrize("source,writer,expected", SOURCE_TABLE,
                         ids=["ml-100k", "ml-latest", "amazon-2018", "amazon-2023", "mind", "yelp"])
def test_source_fixture(ray_local, tmp_path, source, writer, expected):
    writer(tmp_path / "raw")
    summary = run_data(DataConfig(source=source, input=str(tmp_path / "raw"), out=str(tmp_path / "d"), **NO_FILTER,
                                  valid_fraction=0.25))
    m = read_manifest(tmp_path / "d")
    assert m["rows_read"] == expected["rows_read"]
    assert m["lines_dropped"] == expected["lines_dropped"]
    for reason, n in expected["dropped"].items():
        assert m["rows_dropped"].get(reason) == n, m["rows_dropped"]
    assert (m["users"], m["items"]) == (expected["users"], expected["items"])
    df = table(tmp_path / "d")
    assert pq.read_schema(next((tmp_path / "d" / "interactions").glob("*.parquet"))) == INTERACTIONS
    item, text = expected["text"]
    assert set(df.loc[df["item_id"] == item, "item_text"]) == {text}
    assert summary["rows"] == len(df) == m["rows"]
    assert m["records_read"] == m["rows_read"] + m["lines_dropped"]
    assert m["notes"]["title_lines_skipped"] == expected.get("titles_skipped", 0)  # malformed title lines counted
    if source == "movielens" and "ratings.csv" in {p.name for p in (tmp_path / "raw").iterdir()}:
        assert set(df["label"]) <= {1.0, 2.0, 3.0, 4.0, 5.0}  # half stars rounded up
        assert df.loc[df["user_id"] == "3", "label"].tolist() == [1.0]  # 0.5 -> 1, not dropped


SECRET = "Xylo-secret review 7731"  # a phrase no log line has any other reason to hold


def write_reviews_with_text(d: Path, source: str) -> None:
    """A source's raw reviews whose free text (and a malformed line) hold SECRET."""
    if source == "amazon":
        write_amazon(d, 2018)
        with gzip.open(d / "reviews.jsonl.gz", "at") as fh:
            fh.write(json.dumps({"reviewerID": "U9", "asin": "B1", "overall": 4.0, "unixReviewTime": 1400000009,
                                 "reviewText": SECRET, "summary": SECRET}) + "\n" + SECRET + " {broken\n")
    else:
        write_yelp(d)
        with (d / "yelp_academic_dataset_review.json").open("a") as fh:
            fh.write(json.dumps({"review_id": "s", "user_id": "U9", "business_id": "B1", "stars": 4.0,
                                 "date": "2018-01-09 10:00:00", "text": SECRET}) + "\n" + SECRET + " {broken\n")


@pytest.mark.parametrize("source", ["amazon", "yelp"])
def test_review_text_never_reaches_the_logs(ray_local, tmp_path, source):
    """The data stage's stdout and stderr (Ray's worker output included) hold no raw review text, neither from a
    parsed review nor from a malformed line it drops."""
    import subprocess
    import sys

    from conftest import REPO, cli_in_ray

    write_reviews_with_text(tmp_path / "raw", source)
    cmd, env = cli_in_ray(["data", "--source", source, "--input", str(tmp_path / "raw"), "--out", str(tmp_path / "d"),
                           "min_item_interactions=0", "min_user_interactions=0"])
    res = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "data:" in res.stdout + res.stderr and sys.executable  # the stage did log
    assert read_manifest(tmp_path / "d")["lines_dropped"] >= 1  # the malformed line was read and dropped
    assert "7731" not in res.stdout + res.stderr and "Xylo" not in res.stdout + res.stderr


def test_mind_history_is_a_seeded_sample_of_titled_items(ray_local, tmp_path):
    write_mind(tmp_path / "raw")
    cfg = dict(source="mind", input=str(tmp_path / "raw"), history_len=3, **NO_FILTER)
    run_data(DataConfig(out=str(tmp_path / "a"), **cfg))
    run_data(DataConfig(out=str(tmp_path / "b"), **cfg))
    a = table(tmp_path / "a")
    hist = a.loc[a["item_id"] == "N7", "history_text"].iloc[0]
    assert len(hist) == 3 and "Headline 5" not in hist  # N5 has no title
    assert a.equals(table(tmp_path / "b"))
    assert read_manifest(tmp_path / "a")["notes"]["items_without_title"] == 1  # N5 (N9's impression is malformed)


def test_missing_title_drop_mode_counts_rows(ray_local, tmp_path):
    write_yelp(tmp_path / "raw")
    run_data(DataConfig(source="yelp", input=str(tmp_path / "raw"), out=str(tmp_path / "d"), missing_title="drop",
                        **NO_FILTER))
    m = read_manifest(tmp_path / "d")
    assert m["rows_dropped"]["item_without_title"] == 2 and m["items"] == 2


# --------------------------------------------------------------------------- bad input


def test_missing_input_and_wrong_format_are_clear(ray_local, tmp_path):
    with pytest.raises(PumaError, match="no such file"):
        run_data(DataConfig(source="yelp", input=str(tmp_path / "nope"), out=str(tmp_path / "d")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PumaError, match="neither u.data"):
        run_data(DataConfig(source="movielens", input=str(tmp_path / "empty"), out=str(tmp_path / "d")))


def test_a_typo_in_input_leaves_an_existing_dataset_untouched(ray_local, synthetic_dataset, tmp_path):
    out = tmp_path / "d"
    shutil.copytree(synthetic_dataset, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(PumaError, match="no such file.*nothing was changed"):
        run_data(DataConfig(source="yelp", input=str(tmp_path / "typo"), out=str(out)))
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_out_that_is_a_file_or_another_kind_of_directory_is_refused(ray_local, tmp_path):
    (tmp_path / "f").write_text("mine")
    with pytest.raises(PumaError, match="is a file"):
        run_data(DataConfig(source="synthetic", users=20, out=str(tmp_path / "f")))
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_text("meow")
    with pytest.raises(PumaError, match="not a dataset .*nothing was changed"):
        run_data(DataConfig(source="synthetic", users=20, out=str(tmp_path / "photos")))
    assert (tmp_path / "photos" / "cat.jpg").read_text() == "meow" and (tmp_path / "f").read_text() == "mine"


def test_corrupt_manifest_is_one_clear_error(synthetic_dataset, tmp_path):
    shutil.copytree(synthetic_dataset, tmp_path / "d")
    (tmp_path / "d" / "manifest.json").write_text('{"rows": 3,')
    with pytest.raises(PumaError, match="manifest.json is corrupt"):
        read_manifest(tmp_path / "d")


@pytest.mark.parametrize("damage", ["shard", "users", "missing"])
def test_a_damaged_dataset_is_refused_by_every_reader(synthetic_dataset, tmp_path, damage):
    d = tmp_path / "d"
    shutil.copytree(synthetic_dataset, d)
    assert len(shard_paths(d)) == len(read_manifest(d)["shards"])  # intact: verified and listed
    shard = sorted((d / "interactions").glob("part-*.parquet"))[0]
    if damage == "shard":
        shard.write_bytes(shard.read_bytes()[:-9] + b"corrupted")
    elif damage == "users":
        (d / "users.parquet").write_bytes((d / "users.parquet").read_bytes() + b"\0")
    else:
        shard.unlink()
    what = {"shard": f"interactions/{shard.name} is missing or does not match", "missing": f"interactions/{shard.name}",
            "users": "does not match the fingerprint"}[damage]
    with pytest.raises(PumaError, match=what):
        shard_paths(d)  # what select, adapter, prompts, evaluate and pretraining read the dataset through


def test_empty_result_after_filtering_says_what_dropped_and_keeps_the_old_dataset(ray_local, synthetic_dataset,
                                                                                   tmp_path):
    write_yelp(tmp_path / "raw")
    with pytest.raises(PumaError, match="empty result after filtering.*item_min_interactions"):
        run_data(DataConfig(source="yelp", input=str(tmp_path / "raw"), out=str(tmp_path / "new")))
    assert not (tmp_path / "new").exists()
    # the same failure over an existing dataset: it is built beside, so the old one is left whole
    shutil.copytree(synthetic_dataset, tmp_path / "d")
    before = {p.relative_to(tmp_path / "d"): p.read_bytes() for p in (tmp_path / "d").rglob("*") if p.is_file()}
    with pytest.raises(PumaError, match="nothing at --out was changed"):
        run_data(DataConfig(source="yelp", input=str(tmp_path / "raw"), out=str(tmp_path / "d")))
    after = {p.relative_to(tmp_path / "d"): p.read_bytes() for p in (tmp_path / "d").rglob("*") if p.is_file()}
    assert after == before and sorted(p.name for p in tmp_path.iterdir()) == ["d", "raw"]  # no partial left


# --------------------------------------------------------------------------- synthetic


def test_synthetic_is_byte_identical_for_a_seed(ray_local, synthetic_dataset, tmp_path):
    run_data(DataConfig(source="synthetic", out=str(tmp_path / "again"), users=120, items=80, users_per_shard=50,
                        seed=3))
    first, again = read_manifest(synthetic_dataset), read_manifest(tmp_path / "again")
    assert [s["sha256"] for s in first["shards"]] == [s["sha256"] for s in again["shards"]]
    assert len(first["shards"]) == 3 and first["fingerprint"] == again["fingerprint"]


def test_synthetic_users_differ_in_variance_and_latents_are_stored(synthetic_dataset):
    df = table(synthetic_dataset)
    var = df[df["split"] == "train"].groupby("user_id")["label"].var()
    assert var.quantile(0.9) > 2 * var.quantile(0.1)
    per_user = df.groupby("user_id").size()
    assert per_user.min() >= 1 and per_user.max() > 2 * per_user.median() * 0.9
    latents = pd.concat(pq.read_table(p).to_pandas() for p in (synthetic_dataset / "latents").glob("users-*.parquet"))
    assert set(df["user_id"]) <= set(latents["user_id"])
    assert pq.read_table(synthetic_dataset / "latents" / "items.parquet").num_rows == 80


def test_synthetic_click_task_has_history(ray_local, tmp_path):
    run_data(DataConfig(source="synthetic", task="click", out=str(tmp_path / "c"), users=30, items=40))
    df = table(tmp_path / "c")
    assert set(df["label"]) == {0.0, 1.0}
    assert df["history_text"].map(len).max() == 5
    assert read_manifest(tmp_path / "c")["task"] == "click"


def test_user_and_item_index_are_dense_and_consistent(synthetic_dataset):
    users = pq.read_table(synthetic_dataset / "users.parquet").to_pandas()
    items = pq.read_table(synthetic_dataset / "items.parquet").to_pandas()
    df = table(synthetic_dataset)
    assert users["user_idx"].tolist() == list(range(len(users)))
    assert users["user_id"].is_unique and set(users["user_id"]) == set(df["user_id"])
    assert items["item_idx"].tolist() == list(range(len(items))) and set(items["item_id"]) == set(df["item_id"])
    assert users[["n_train", "n_valid", "n_test"]].to_numpy().sum() == len(df)


def _chronological(df: pd.DataFrame) -> bool:
    last_train = df[df["split"] == "train"].groupby("user_id")["ts"].max()
    first_valid = df[df["split"] == "valid"].groupby("user_id")["ts"].min()
    return bool((first_valid >= last_train.reindex(first_valid.index)).all())


# --------------------------------------------------------------------------- real samples


def test_movielens_100k_counts_and_split(ray_local, tmp_path):
    run_data(DataConfig(source="movielens", input=str(shared("ml-100k")), out=str(tmp_path / "d")))
    m = read_manifest(tmp_path / "d")
    assert (m["rows_read"], m["users_read"], m["items_read"]) == (100_000, 943, 1_682)
    assert m["lines_dropped"] == 0
    df = table(tmp_path / "d")
    assert _chronological(df)
    assert df.groupby("user_id").size().max() <= 85 and df.groupby("user_id").size().min() >= 20
    assert sum(m["rows_dropped"].values()) + m["rows"] == 100_000


def test_mind_sample_counts_and_title_quirk(ray_local, tmp_path):
    run_data(DataConfig(source="mind", input=str(shared("mind-small-sample")), out=str(tmp_path / "d"),
                        max_user_interactions=0))
    m = read_manifest(tmp_path / "d")
    assert (m["rows_read"], m["users_read"], m["items_read"]) == (189_359, 4_637, 7_457)
    assert m["rows"] == 189_359 and m["task"] == "click"
    assert m["notes"]["items_without_title"] == 7_457 - 284  # only 284 candidates have a title


def test_amazon_sample_duplicates_are_reported(ray_local, tmp_path):
    run_data(DataConfig(source="amazon", input=str(shared("amazon-2018-all-beauty-5core")), out=str(tmp_path / "d"),
                        **NO_FILTER))
    m = read_manifest(tmp_path / "d")
    assert (m["rows_read"], m["users_read"], m["items_read"]) == (5_269, 991, 85)
    assert m["rows_dropped"]["duplicate_user_item_ts"] == 1_108 and m["rows"] == 5_269 - 1_108
    assert "summary" in m["notes"]["item_text_source"]


def test_yelp_sample_counts(ray_local, tmp_path):
    run_data(DataConfig(source="yelp", input=str(shared("yelp-sample")), out=str(tmp_path / "d"), **NO_FILTER))
    m = read_manifest(tmp_path / "d")
    assert (m["rows_read"], m["users_read"], m["items_read"]) == (999, 993, 822)
    assert m["splits"]["valid"]["rows"] == 0  # at most 2 reviews per user: 6 users could give one
    assert m["notes"]["items_without_title"] == 822 - 63
