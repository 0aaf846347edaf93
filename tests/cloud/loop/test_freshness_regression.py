"""The freshness report of a regression model: scikit-learn's diabetes data (real, bundled) and an MLP
(tests/cloud/loop/diabetes_kit.py), on rows whose target drifts upwards with the data's age (a concept
that moves: +4 a day after training), judged on mean absolute error against `--max-mae`."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.cloud.loop.freshness import DAY, FreshnessOptions, freshness
from edgefleet.core.signing import SigningKey, TrustStore
from tests.cloud.loop.diabetes_kit import diabetes_split, export_diabetes

DRIFT = 4.0  # target units per day of age


@pytest.fixture(scope="module")
def serving(tmp_path_factory):
    folder = tmp_path_factory.mktemp("diabetes-freshness")
    x_train, x_test, y_train, y_test = diabetes_split()
    key = SigningKey.generate()
    _, public = key.save(folder / "keys", "release")
    root = export_diabetes(x_train, y_train, folder / "serving", 1, key)
    return root, TrustStore.from_paths([public]), np.tile(x_test, (3, 1)), np.tile(y_test, 3)


def report_for(serving, tmp_path, drift: float, **options) -> dict:
    root, trust, x, y = serving
    age = np.random.default_rng(1).uniform(0, 20, len(y))
    trained = 1_780_000_000.0
    np.savez(tmp_path / "rows.npz", features=x, y=y + drift * age, captured_at=trained + age * DAY)
    return freshness(root, tmp_path / "rows.npz", trust=trust,
                     options=FreshnessOptions(bucket_s=4 * DAY, trained_at=trained, **options))


def test_a_drifting_target_raises_the_error_and_the_report_says_when_it_passes_the_limit(serving, tmp_path):
    report = report_for(serving, tmp_path, DRIFT, max_mae=70.0)
    assert report["metric"] == "mean_absolute_error"
    buckets = report["buckets"]
    assert len(buckets) == 5 and buckets[0]["ci95"][1] < buckets[-1]["ci95"][0]  # error up beyond noise
    trend = report["trend"]
    assert trend["state"] == "falling" and trend["slope_ci95"][0] > 0
    below = max(b["from_days"] for b in buckets if b["value"] <= 70.0)
    above = min(b["to_days"] for b in buckets if b["value"] > 70.0)
    assert below <= trend["crossing_days"] <= above
    assert "mean absolute error rises by" in report["verdict"]["text"]
    assert report["verdict"]["update_every_days"] == trend["crossing_days"]
    assert f"expected to rise above 70 about {trend['crossing_days']:.0f} days" in report["verdict"]["text"]


def test_a_stable_target_is_not_falling_and_accuracy_options_are_refused(serving, tmp_path):
    report = report_for(serving, tmp_path, 0.0, max_mae=70.0)
    assert report["trend"]["state"] == "not falling"
    assert report["verdict"]["text"].startswith("mean absolute error is not falling")
    from edgefleet.core.errors import EdgefleetError

    with pytest.raises(EdgefleetError, match="--min-accuracy is for a classifier"):
        report_for(serving, tmp_path, 0.0, min_accuracy=0.9)
