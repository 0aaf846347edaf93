"""The figures offline evaluation decides on: ECE against a case worked by hand, the paired bootstrap
interval against the binomial and normal intervals it should approach, and the verdict rule."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.cloud.loop.eval_stats import (
    bin_index,
    calibration,
    expected_calibration_error,
    paired_interval,
    proportion,
    verdict,
)


def test_ece_of_a_hand_worked_case():
    """Ten bins (lo, hi]. (0.9, 1]: two answers at 0.95, both right: gap 0.05 x 2. (0.5, 0.6]: two at 0.55,
    one right: gap 0.05 x 2. (0.2, 0.3]: one at 0.25, wrong: gap 0.25. ECE = (0.1 + 0.1 + 0.25) / 5 = 0.09."""
    confidence = np.array([0.95, 0.95, 0.55, 0.55, 0.25])
    correct = np.array([True, True, True, False, False])
    assert expected_calibration_error(confidence, correct, 10) == pytest.approx(0.09, abs=1e-12)
    result = calibration(confidence, correct, 10)
    assert result["ece"] == pytest.approx(0.09, abs=1e-12)
    by_bin = {b["hi"]: b for b in result["bins"] if b["count"]}
    assert sorted(by_bin) == pytest.approx([0.3, 0.6, 1.0])
    assert by_bin[1.0]["count"] == 2 and by_bin[1.0]["confidence"] == pytest.approx(0.95)
    assert by_bin[1.0]["accuracy"] == 1.0
    assert by_bin[0.6]["accuracy"] == 0.5 and by_bin[0.3]["accuracy"] == 0.0
    assert sum(b["count"] for b in result["bins"]) == 5
    low, high = result["ci95"]
    assert 0.0 <= low <= high <= 1.0


def test_perfectly_calibrated_bins_give_zero_and_one_bin_gives_the_gap():
    confidence = np.array([0.75] * 4 + [0.25] * 4)
    correct = np.array([1, 1, 1, 0, 1, 0, 0, 0], bool)  # 3 of 4 right at 0.75, 1 of 4 at 0.25
    assert expected_calibration_error(confidence, correct, 4) == pytest.approx(0.0, abs=1e-12)
    assert expected_calibration_error(np.full(10, 0.9), np.zeros(10, bool), 5) == pytest.approx(0.9)


def test_bins_are_closed_on_the_right_and_zero_goes_to_the_first():
    assert bin_index(np.array([0.0, 0.1, 0.1000001, 0.3, 0.5, 1.0]), 10).tolist() == [0, 0, 1, 2, 4, 9]


def test_paired_interval_of_counts_matches_the_binomial_quantiles():
    """30 of 100 rows +1, the rest 0: the bootstrap mean is Binomial(100, 0.3) / 100, whose 2.5% and 97.5%
    quantiles are 0.21 and 0.39."""
    a = np.r_[np.ones(30), np.zeros(70)]
    result = paired_interval(a, np.zeros(100))
    assert result["value"] == pytest.approx(0.3) and result["count"] == 100
    low, high = result["ci95"]
    assert abs(low - 0.21) <= 0.02 and abs(high - 0.39) <= 0.02


def test_paired_interval_of_continuous_values_resamples_rows():
    """400 distinct differences (normal, sd 2): the interval's half-width approaches 1.96 * 2 / 20."""
    d = np.random.default_rng(3).normal(1.0, 2.0, 400)
    result = paired_interval(d)
    low, high = result["ci95"]
    assert low < result["value"] < high
    assert (high - low) / 2 == pytest.approx(1.96 * d.std() / 20, rel=0.15)


def test_identical_models_differ_by_exactly_nothing():
    scores = np.random.default_rng(0).integers(0, 2, 500).astype(float)
    result = paired_interval(scores, scores)
    assert result["value"] == 0.0 and result["ci95"] == [0.0, 0.0]
    assert verdict(result, 20) == "within noise"


def test_verdict_needs_the_whole_interval_on_one_side():
    assert verdict({"count": 100, "ci95": [-0.1, -0.01]}, 20) == "worse"
    assert verdict({"count": 100, "ci95": [0.01, 0.1]}, 20) == "better"
    assert verdict({"count": 100, "ci95": [-0.1, 0.01]}, 20) == "within noise"
    assert verdict({"count": 10, "ci95": [-0.9, -0.5]}, 20) == "too few rows"


def test_an_accepted_drop_moves_the_worse_line_below_zero():
    interval = {"count": 450, "ci95": [-0.027, -0.002]}  # a retrained digits CNN on clean digits, on another CPU
    assert verdict(interval, 20) == "worse"
    assert verdict(interval, 20, max_drop=0.02) == "within noise"
    assert verdict({"count": 450, "ci95": [-0.08, -0.03]}, 20, max_drop=0.02) == "worse"
    assert verdict({"count": 450, "ci95": [0.01, 0.05]}, 20, max_drop=0.02) == "better"


def test_proportion_has_the_wilson_interval():
    result = proportion(45, 50)
    assert result["value"] == 0.9
    low, high = result["ci95"]
    assert low == pytest.approx(0.7864, abs=1e-3) and high == pytest.approx(0.9565, abs=1e-3)
