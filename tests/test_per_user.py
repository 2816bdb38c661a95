"""Per-user metrics by user hash buckets (core/per_user): the same rows as one in-memory group-by."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from puma_ray.core import per_user


def scored_rows(rng: np.random.Generator, n: int, users: int) -> pa.Table:
    return pa.table({"user_id": [f"u{i}" for i in rng.integers(0, users, n)],
                     "split": rng.choice(["valid", "test"], n).tolist(),
                     "label": rng.integers(1, 6, n).astype(np.float32),
                     "pred": rng.normal(3, 1, n).astype(np.float32),
                     "loss": rng.random(n).astype(np.float32),
                     "finite": rng.random(n) > 0.05})


def test_a_users_rows_land_in_one_bucket_whichever_file_they_come_from():
    a = per_user.user_buckets(pa.array(["x", "y", "z", "x"]), 7)
    b = per_user.user_buckets(pa.chunked_array([["z"], ["x", "q"]]), 7)
    assert a[0] == a[3] == b[1] and a[2] == b[0] and ((0 <= a) & (a < 7)).all()
    assert len(per_user.user_buckets(pa.array([], pa.string()), 3)) == 0


@pytest.mark.parametrize("task", ["rating", "click"])
def test_bucketed_per_user_rows_equal_one_group_by_over_all_rows(tmp_path, task):
    rng = np.random.default_rng(0)
    files = []
    for i in range(3):  # users spread over every file, in no order
        t = scored_rows(rng, 400, 50)
        if task == "click":
            t = t.set_column(2, "label", pa.array((t.column("label").to_numpy() > 3).astype(np.float32)))
        pq.write_table(t, tmp_path / f"rows-{i}.parquet")
        files.append(tmp_path / f"rows-{i}.parquet")
    scratch = tmp_path / "scratch"
    assert sum(per_user.split_into_buckets(str(f), 4, str(scratch), i) for i, f in enumerate(files)) == 1200
    written = 0
    for d in sorted(scratch.glob("b*")):
        written += per_user.fold_bucket(sorted(str(p) for p in d.glob("*.parquet")), task, str(tmp_path / f"{d.name}.pq"))
    got = pa.concat_tables([pq.read_table(p) for p in sorted(tmp_path.glob("b*.pq"))]).to_pandas()
    whole = pa.concat_tables([pq.read_table(f) for f in files])
    want = pa.concat_tables([pa.table(b) for b in per_user.user_groups(whole, task)]).to_pandas()
    assert written == len(want) == len(got) and len(want) > 50  # (split, user) pairs
    key = ["split", "user_id"]
    got, want = (x.sort_values(key).reset_index(drop=True) for x in (got, want))
    np.testing.assert_allclose(got.drop(columns=key).to_numpy(float), want.drop(columns=key).to_numpy(float),
                               equal_nan=True)
    assert (got[key] == want[key]).all().all()
