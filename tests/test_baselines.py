"""The trivial baselines against a hand computation on a tiny table, and the "no personalization" verdict."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from puma_ray.core import baselines as b


def frame(rows):
    return pd.DataFrame(rows, columns=["user_id", "item_id", "label"])


TRAIN = frame([("u1", "a", 5.0), ("u1", "b", 3.0), ("u2", "a", 4.0), ("u2", "c", 1.0)])
TEST = frame([("u1", "c", 2.0), ("u2", "b", 4.0), ("u3", "a", 5.0), ("u1", "z", 3.0)])


def test_rating_baselines_match_a_hand_computation():
    found = b.baselines("rating", TRAIN, TEST)
    g = 13 / 4  # global train mean
    # per-user means: u1 4, u2 2.5, unseen u3 -> global
    user_pred = np.array([4.0, 2.5, g, 4.0])
    # item means: a 4.5, b 3, c 1, unseen z -> global
    item_pred = np.array([1.0, 3.0, 4.5, g])
    y = TEST["label"].to_numpy()
    assert found["global_mean"]["rmse"] == pytest.approx(math.sqrt(np.mean((g - y) ** 2)))
    assert found["user_mean"]["rmse"] == pytest.approx(math.sqrt(np.mean((user_pred - y) ** 2)))
    assert found["item_mean"]["rmse"] == pytest.approx(math.sqrt(np.mean((item_pred - y) ** 2)))
    assert found["item_mean"]["mae"] == pytest.approx(np.mean(np.abs(item_pred - y)))


def test_user_item_bias_is_the_shrunken_alternating_fit():
    g, bu, bi = b.fit_bias(TRAIN, reg_user=1.0, reg_item=2.0, iters=1)
    # one pass: items from residuals about g (users 0), then users from residuals about g + b_i
    r = TRAIN["label"] - 13 / 4
    item = {"a": (r[0] + r[2]) / (2 + 2), "b": r[1] / (1 + 2), "c": r[3] / (1 + 2)}
    assert bi.to_dict() == pytest.approx(item)
    u1 = ((5 - 13 / 4 - item["a"]) + (3 - 13 / 4 - item["b"])) / (2 + 1)
    assert bu["u1"] == pytest.approx(u1)
    # no shrinkage and many passes: the fit explains the train rows better than either mean alone
    g, bu, bi = b.fit_bias(TRAIN, reg_user=0.0, reg_item=0.0, iters=50)
    pred = g + TRAIN["user_id"].map(bu) + TRAIN["item_id"].map(bi)
    assert np.sqrt(np.mean((pred - TRAIN["label"]) ** 2)) < 0.75


def test_click_baselines_match_a_hand_computation():
    train = frame([("u1", "a", 1), ("u1", "b", 0), ("u2", "a", 1), ("u2", "b", 0), ("u2", "c", 0)])
    test = frame([("u1", "a", 1), ("u1", "c", 0), ("u2", "a", 0), ("u2", "b", 1)])
    scores = b.click_scores(train, test)
    g = 2 / 5
    pop = lambda s, n: (s + b.SMOOTH * g) / (n + b.SMOOTH)  # noqa: E731
    assert scores["item_popularity"] == pytest.approx([pop(2, 2), pop(0, 1), pop(2, 2), pop(0, 2)])
    assert scores["user_rate"] == pytest.approx([pop(1, 2), pop(1, 2), pop(1, 3), pop(1, 3)])
    found = b.baselines("click", train, test)
    # positives score a .5, b .333; negatives c .364, a .5: pairs won 1 + .5 (tie) + 0 + 0 of 4
    assert found["item_popularity"]["auc"] == pytest.approx(1.5 / 4)
    assert found["user_rate"]["uauc"] == pytest.approx(0.5)  # a constant per user ranks nothing within a user


def test_verdict_flags_a_retraining_that_does_not_beat_the_means():
    found = {"user_mean": {"rmse": 1.10}, "item_mean": {"rmse": 1.05}}
    assert b.personalization_verdict("rating", 1.00, found) is None
    said = b.personalization_verdict("rating", 1.07, found)
    assert said.startswith("no personalization learned") and "item mean 1.0500" in said
    clicks = {"user_rate": {"auc": 0.55}, "item_popularity": {"auc": 0.58}}
    assert b.personalization_verdict("click", 0.60, clicks) is None
    assert b.personalization_verdict("click", 0.52, clicks).startswith("no personalization learned")


def test_dataset_baselines_score_only_the_given_users(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = pd.concat([TRAIN.assign(split="train"), TEST.assign(split="test")], ignore_index=True)
    path = tmp_path / "part-00000.parquet"
    pq.write_table(pa.Table.from_pandas(rows.astype({"label": "float32"}), preserve_index=False), path)
    every = b.dataset_baselines([path], "rating", "test")
    some = b.dataset_baselines([path], "rating", "test", users={"u1"})
    assert (every["rows"], every["users"]) == (4, 3) and (some["rows"], some["users"]) == (2, 1)
    assert some["user_mean"]["rmse"] == pytest.approx(math.sqrt(((4 - 2) ** 2 + (4 - 3) ** 2) / 2))


def test_a_fresh_rating_head_starts_at_the_train_mean(tmp_path):
    """prompts and adapter give a fresh rating head the train labels' mean as its output bias (issue 45: a head
    starting near 0 never reached Amazon's 4.4 mean in few steps, and every store lost to the global mean)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from puma_ray.core.tasks import TASKS
    from puma_ray.data.schema import split_label_mean

    (tmp_path / "interactions").mkdir()
    rows = pd.concat([TRAIN.assign(split="train"), TEST.assign(split="test")], ignore_index=True)
    pq.write_table(pa.Table.from_pandas(rows.astype({"label": "float32"}), preserve_index=False),
                   tmp_path / "interactions" / "part-00000.parquet")
    (tmp_path / "manifest.json").write_text(json.dumps({"shards": [{"name": "part-00000.parquet"}]}))
    assert split_label_mean(tmp_path, "train") == pytest.approx(13 / 4)
    assert split_label_mean(tmp_path, "valid") is None
    head = TASKS["rating"].head(0.2, False, 13 / 4)
    assert head.mlp[-1].bias.item() == pytest.approx(13 / 4)
    assert TASKS["rating"].head(0.2, False).mlp[-1].bias.abs().item() < 1  # without a mean: torch's default init
    assert isinstance(TASKS["click"].head(0.2, True, 0.3).predict(torch.zeros(1, 2)), torch.Tensor)
