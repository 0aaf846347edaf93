"""Magnitude-aware profiles on a real series (the Nile's flow, statsmodels): tail bins beyond the reference's
range and location statistics in reference standard deviations (core/magnitude.py, cloud/drift_magnitude.py)."""

from __future__ import annotations

import numpy as np
import pytest
from statsmodels.datasets import nile

from edgefleet.cloud.drift import DRIFT, OK, DriftThresholds, WindowCounts, evaluate
from edgefleet.cloud.drift_magnitude import SHIFT_FLOOR
from edgefleet.core.magnitude import TAIL_EDGES
from edgefleet.core.profile import bin_counts, build_profile, quantile_edges
from edgefleet.core.schema import TensorSpec

RULE = DriftThresholds(min_samples=5)
SPEC = TensorSpec("flow", "float64", ("batch", 1))


@pytest.fixture(scope="module")
def flow() -> np.ndarray:
    return nile.load().data["volume"].to_numpy(np.float64)


@pytest.fixture(scope="module")
def profile(flow) -> dict:
    return build_profile({"flow": flow[:28, None]}, [SPEC], None)  # 1871-1898, before the documented shift


def judge(values: np.ndarray, profile: dict) -> dict:
    counts = bin_counts(values[:, None], np.asarray(profile["features"][0]["edges"]))
    report = evaluate(WindowCounts(samples=len(values), features={"flow": counts}), profile, RULE)
    return report["data_drift"]["signals"]["flow[0]"]


def test_the_reference_fills_only_its_quantile_bins_and_the_tails_say_how_far(flow, profile):
    feature = profile["features"][0]
    counts = np.asarray(feature["counts"][0])
    tail = TAIL_EDGES // 2
    assert counts[:tail].sum() == 0 and counts[tail + 10:].sum() == 0 and counts.sum() == 28
    low, std = flow[:28].min(), flow[:28].std()
    assert feature["magnitude"]["mean"][0] == pytest.approx(flow[:28].mean())
    assert feature["magnitude"]["std"][0] == pytest.approx(std)
    # a year 1.5 reference sds below the minimum lands in the tail bin [min - 2s, min - s)
    landed = bin_counts(np.array([[low - 1.5 * std]]), np.asarray(feature["edges"]))[0]
    assert np.flatnonzero(landed).tolist() == [tail - 2]


def test_a_collapse_to_a_quarter_is_drift_with_its_size(flow, profile):
    signal = judge(flow[:10] * 0.25, profile)
    assert signal["verdict"] == DRIFT
    # the true move: (0.25 - 1) * mean / s, about -5 sds; the tails place it within a bin's width
    true_shift = (flow[:10].mean() * 0.25 - flow[:28].mean()) / flow[:28].std()
    assert signal["location"]["shift"] == pytest.approx(true_shift, abs=1.0)
    assert signal["location"]["wasserstein"] >= abs(signal["location"]["shift"])


def test_a_small_level_rise_does_not_fire(flow, profile):
    signal = judge(flow[:28] * 1.004, profile)  # +0.4%: 0.03 reference sds
    assert signal["verdict"] == OK and signal["location"]["wasserstein"] < SHIFT_FLOOR


def test_the_documented_shift_is_measured_in_sds(flow, profile):
    signal = judge(flow[28:48], profile)  # the 20 years after 1898
    true_shift = (flow[28:48].mean() - flow[:28].mean()) / flow[:28].std()
    assert signal["verdict"] == DRIFT and signal["location"]["shift"] == pytest.approx(true_shift, abs=0.25)


def test_an_old_profile_without_tail_bins_keeps_working(flow):
    """A profile written before the tail bins (quantile edges only, no magnitude facts) and the windows
    its agents send: same statistics as before, no location, same verdicts."""
    edges = quantile_edges(flow[:28, None], 10)
    old = {"count": 28, "bins": 10, "features": [{"input": "flow", "kind": "elements", "names": ["flow[0]"],
                                                  "edges": edges.tolist(),
                                                  "counts": bin_counts(flow[:28, None], edges).tolist()}]}
    assert len(old["features"][0]["counts"][0]) == 11
    clean, shifted = judge(flow[:20], old), judge(flow[28:48], old)
    assert clean["location"] is None and clean["verdict"] == OK
    assert shifted["location"] is None and shifted["verdict"] == DRIFT and shifted["chi2"]["exact_p"] < 0.01
