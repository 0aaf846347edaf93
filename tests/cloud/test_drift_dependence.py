"""Serially dependent series: the window tests judge n / F effective samples (cloud/drift_dependence.py).

US real GDP growth, annualised (statsmodels macrodata, shipped in the wheel), 1960Q1-1978Q4 as the
reference (76 quarters, lag-1 autocorrelation 0.21): recessions are runs of bad quarters, so a window of
8 quarters holds fewer than 8 independent samples. Its pre-1984 stretch (before the Great Moderation
halved its volatility) replayed one quarter per evaluation was flagged 1.82 times per 100 clean
evaluations by the iid window rule at level 0.01 (benchmarks/bench_drift_detection.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from statsmodels.datasets import macrodata, nile
from statsmodels.tsa.stattools import acf

from edgefleet.cloud.drift import DRIFT, DriftThresholds, WindowCounts, evaluate
from edgefleet.cloud.drift_dependence import inflation
from edgefleet.cloud.drift_magnitude import facts_of
from edgefleet.core.profile import bin_counts, build_profile
from edgefleet.core.schema import TensorSpec

RULE = DriftThresholds(min_samples=3)  # a slow stream's fleet setting, as in the benchmark
LOOKBACK, BLOCK, STREAMS, EVALUATIONS = 8, 4, 20, 100

MACRO = macrodata.load_pandas().data
QUARTERS = [f"{int(y)}Q{int(q)}" for y, q in zip(MACRO["year"], MACRO["quarter"], strict=True)]
GROWTH = np.diff(np.log(MACRO["realgdp"].to_numpy())) * 400  # GROWTH[i] is the growth into QUARTERS[i + 1]
START, REFERENCE_END, CHANGE = (QUARTERS.index(q) - 1 for q in ("1960Q1", "1979Q1", "1984Q1"))


def profile_of(reference: np.ndarray) -> dict:
    """The one-column profile `edgefleet import` writes for a tabular series (rows in time order)."""
    return build_profile({"x": reference[:, None]}, [TensorSpec("x", "float64", ("batch", 1))], None)


def drifts(window: np.ndarray, profile: dict) -> bool:
    edges = np.asarray(profile["features"][0]["edges"])
    counts = WindowCounts(samples=len(window), features={"x": bin_counts(window[:, None], edges)})
    return evaluate(counts, profile, RULE)["data_drift"]["verdict"] == DRIFT


def replay(stream: np.ndarray, profile: dict, lookback: int = LOOKBACK) -> list[bool]:
    """The window rule on the last `lookback` samples after each new one, from the third on."""
    return [drifts(stream[max(0, t + 1 - lookback):t + 1], profile) for t in range(RULE.min_samples - 1, len(stream))]


def test_the_profile_keeps_the_references_lag1_autocorrelation_as_statsmodels_measures_it():
    reference = GROWTH[START:REFERENCE_END]
    facts = facts_of(profile_of(reference)["features"][0], 0)
    assert facts["lag1"] == pytest.approx(acf(reference, nlags=1)[1], rel=1e-9)
    assert 0.15 < facts["lag1"] < 0.3  # a visibly dependent series, not a shuffled sample


def test_inflation_is_one_for_independent_samples_and_the_ar1_factor_for_long_windows():
    assert inflation(None, 8, 76) == 1.0  # a profile written before lag1: the iid tests
    assert inflation({"lag1": -0.3}, 8, 76) == 1.0  # negative dependence is not made bolder than iid
    rho = 0.5
    assert inflation({"lag1": rho}, 10_000, 10_000) == pytest.approx((1 + rho) / (1 - rho), rel=1e-3)
    assert 1.0 < inflation({"lag1": rho}, 8, 76) < (1 + rho) / (1 - rho)  # a short window: partial inflation


def test_gdp_growths_clean_quarters_alarm_at_most_at_the_rules_level():
    """The pre-1984 quarters (1960-1983, one regime) resampled in blocks of 4 quarters (keeping their
    short-range dependence) into STREAMS streams, replayed against the 1960-1978 reference. The rule's level
    is alpha = 0.01 per evaluation (one signal), so a test that accounts for the dependence alarms at most
    once per 100 clean evaluations; the iid test alarmed 2.2 times per 100 on these same streams."""
    profile = profile_of(GROWTH[START:REFERENCE_END])
    pre = GROWTH[START:CHANGE]
    rng = np.random.default_rng(0)
    verdicts = []
    for _ in range(STREAMS):
        starts = rng.integers(0, len(pre) - BLOCK + 1, EVALUATIONS // BLOCK + 1)
        verdicts += replay(np.concatenate([pre[s:s + BLOCK] for s in starts])[:EVALUATIONS], profile)
    assert 100.0 * np.mean(verdicts) <= 100.0 * RULE.alpha


def test_the_niles_level_shift_is_still_flagged_by_the_window_rule():
    """The correction costs power only in proportion to the dependence: the Nile (lag-1 0.10 over its 25
    reference years) still has its 1899 drop flagged by the rule within 5 years, as before it."""
    data = nile.load().data
    flow, years = data["volume"].to_numpy(np.float64), data["year"].astype(int).tolist()
    profile = profile_of(flow[:25])
    change = years.index(1899)
    stream = flow[25:]
    verdicts = replay(stream, profile, lookback=5)  # the benchmark's 5 years; verdicts[i] ends at stream[i + 2]
    first = next(i + RULE.min_samples - 1 for i, alarm in enumerate(verdicts) if alarm) - (change - 25) + 1
    assert 1 <= first <= 5
