"""`puma-ray data --calibrate-from`: the fit recovers the parameters a population was generated with; the data
stage generates a calibrated population, writes its calibration.json, and refuses bad input touching nothing."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from puma_ray.config import DataConfig
from puma_ray.data.calibrate import population_from_rows
from puma_ray.data.population import Population
from puma_ray.data.synthetic import calibrated_shard, make_catalogue
from puma_ray.errors import PumaError
from puma_ray.stages.data import run_data

KNOWN = Population(floor=10, activity_shape=1.5, activity_scale=20.0, popularity_exponent=1.0,
                   label_levels=[1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0], label_base=3.4, bias_std=0.4,
                   spread_log_mean=float(np.log(0.8)), spread_log_std=0.3, quality_share=0.15, taste_share=0.4,
                   group_shares=[0.55, 0.3, 0.15], items=300)


def most_recent(rows: pd.DataFrame, cap: int) -> pd.DataFrame:
    """What the data stage keeps of each user: the `cap` most recent rows."""
    return rows.sort_values(["user_id", "ts"]).groupby("user_id").tail(cap)


def test_the_fit_recovers_the_parameters_a_population_was_generated_with():
    """Tolerances: activity shape and scale 20% (3,000 users), popularity exponent 0.15, label mean 0.1 and spreads
    20% / 0.1 in log, the number of groups exactly and each share within 0.08 (K-means on sparse noisy ratings
    pulls boundary users from the largest group), variance shares within 0.06."""
    cat = make_catalogue(1, KNOWN.items, 8, 8, KNOWN.popularity_exponent)
    rows, latents = calibrated_shard(1, 0, 0, 3000, cat, KNOWN)
    assert set(latents["group"]) == {0, 1, 2} and rows["label"].isin(KNOWN.label_levels).all()
    fit = population_from_rows(most_recent(rows, 85), 85, seed=0, fitted_from={})
    assert fit.floor == KNOWN.floor and fit.items == KNOWN.items and fit.label_levels == KNOWN.label_levels
    assert fit.activity_shape == pytest.approx(KNOWN.activity_shape, rel=0.2)
    assert fit.activity_scale == pytest.approx(KNOWN.activity_scale, rel=0.2)
    assert fit.popularity_exponent == pytest.approx(KNOWN.popularity_exponent, abs=0.15)
    assert fit.label_base == pytest.approx(KNOWN.label_base, abs=0.1)
    assert fit.bias_std == pytest.approx(KNOWN.bias_std, rel=0.2)
    assert fit.spread_log_mean == pytest.approx(KNOWN.spread_log_mean, abs=0.1)
    assert fit.spread_log_std == pytest.approx(KNOWN.spread_log_std, rel=0.2)
    assert len(fit.group_shares) == 3 and np.allclose(fit.group_shares, KNOWN.group_shares, atol=0.08)
    assert fit.quality_share == pytest.approx(KNOWN.quality_share, abs=0.06)
    assert fit.taste_share == pytest.approx(KNOWN.taste_share, abs=0.06)


def test_a_shard_is_the_same_generated_alone_or_again():
    cat = make_catalogue(2, KNOWN.items, 8, 8, KNOWN.popularity_exponent)
    a, _ = calibrated_shard(2, 1, 500, 200, cat, KNOWN)
    b, _ = calibrated_shard(2, 1, 500, 200, cat, KNOWN)
    other, _ = calibrated_shard(2, 0, 0, 200, cat, KNOWN)
    pd.testing.assert_frame_equal(a, b)
    assert a["user_id"].iloc[0] == "u00000500" and not a["label"].equals(other["label"])


def test_the_data_stage_generates_a_calibrated_population(ray_local, synthetic_dataset, tmp_path):
    out = tmp_path / "calibrated"
    summary = run_data(DataConfig(source="synthetic", calibrate_from=str(synthetic_dataset), users=300,
                                  users_per_shard=120, out=str(out), seed=4))
    pop = Population.load(out / "calibration.json")
    assert pop.fitted_from["dataset"] == str(synthetic_dataset.resolve()) and pop.items == summary["items_read"]
    assert summary["users"] == 300 and summary["task"] == "rating"
    manifest = json.loads((out / "manifest.json").read_text())
    assert "calibration.json" in manifest["notes"]["calibration"]
    report = (out / "calibration.md").read_text()  # real vs generated, each parameter fitted on both
    assert "| activity_shape |" in report and "| taste groups |" in report and (out / "calibration.png").stat().st_size
    rows = pd.read_parquet(out / "interactions")
    assert rows.groupby("user_id").size().min() >= pop.floor and rows["label"].isin(pop.label_levels).all()


def test_calibration_input_that_cannot_be_used_is_refused_and_touches_nothing(ray_local, synthetic_dataset, tmp_path):
    out = tmp_path / "d"
    shutil.copytree(synthetic_dataset, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (tmp_path / "empty").mkdir()
    with pytest.raises(PumaError, match="not a dataset written by `puma-ray data`.*nothing was changed"):
        run_data(DataConfig(source="synthetic", calibrate_from=str(tmp_path / "empty"), out=str(out)))
    with pytest.raises(PumaError, match="calibrate_from.*would be replaced"):
        DataConfig(source="synthetic", calibrate_from=str(out), out=str(out))
    with pytest.raises(PumaError, match="calibrate_from.*only the synthetic source"):
        DataConfig(source="movielens", input=str(tmp_path), calibrate_from=str(synthetic_dataset), out=str(out))
    with pytest.raises(PumaError, match="calibrate_from.*rating"):
        DataConfig(source="synthetic", task="click", calibrate_from=str(synthetic_dataset), out=str(out))
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_the_clustering_finds_the_taste_groups_users_were_generated_with():
    """What a real rating sample is diagnosed by (benchmarks/selection_quality.py --population real): each user's
    group as the calibration's clustering finds it agrees with the generator's (adjusted Rand index >= 0.6; 0.73
    measured with these 3,000 users of 3 groups), one row per user."""
    from sklearn.metrics import adjusted_rand_score

    from puma_ray.data.calibrate import user_groups

    cat = make_catalogue(1, KNOWN.items, 8, 8, KNOWN.popularity_exponent)
    rows, latents = calibrated_shard(1, 0, 0, 3000, cat, KNOWN)
    found = user_groups(most_recent(rows, 85), seed=0)
    assert found.index.is_unique and len(found) == 3000 and found.nunique() == 3
    truth = latents.set_index("user_id")["group"].reindex(found.index)
    assert adjusted_rand_score(truth, found) >= 0.6


def test_planted_structure_replaces_the_fitted_shares_and_is_recorded(tmp_path):
    """The positive control (issue 45): planted_* keys put chosen taste groups and variance shares in place of the
    fitted ones, the rest of the fit is kept, and the change is recorded; without --calibrate-from they are refused."""
    from puma_ray.errors import ConfigError
    from puma_ray.stages.data import planted

    cfg = DataConfig(source="synthetic", calibrate_from=str(tmp_path / "real"), out=str(tmp_path / "c"),
                     planted_group_shares=[0.6, 0.3, 0.1], planted_taste_share=0.7)
    pop = planted(KNOWN, cfg)
    assert pop.group_shares == [0.6, 0.3, 0.1] and pop.taste_share == 0.7
    assert pop.quality_share == KNOWN.quality_share and pop.activity_shape == KNOWN.activity_shape
    assert pop.fitted_from["planted"] == {"group_shares": [0.6, 0.3, 0.1], "taste_share": 0.7}
    assert planted(KNOWN, DataConfig(source="synthetic", calibrate_from="x", out=str(tmp_path / "d"))) is KNOWN
    cat = make_catalogue(1, KNOWN.items, 8, 8, KNOWN.popularity_exponent)
    _, latents = calibrated_shard(1, 0, 0, 2000, cat, pop)
    shares = latents["group"].value_counts(normalize=True).sort_index().to_numpy()
    assert np.allclose(shares, [0.6, 0.3, 0.1], atol=0.04)
    with pytest.raises(ConfigError, match="planted_taste_share"):
        DataConfig(source="synthetic", out=str(tmp_path / "e"), planted_taste_share=0.5)
    with pytest.raises(ConfigError, match="planted_group_shares"):
        DataConfig(source="synthetic", calibrate_from="x", out=str(tmp_path / "e"), planted_group_shares=[0.5, 0.4])
    with pytest.raises(ConfigError, match="planted_taste_share"):
        DataConfig(source="synthetic", calibrate_from="x", out=str(tmp_path / "e"), planted_taste_share=0.8,
                   planted_quality_share=0.3)
