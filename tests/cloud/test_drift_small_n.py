"""Small samples: the permutation test on binned counts, on a real short series with a documented change.

The Nile's annual flow at Aswan, 1871-1970 (statsmodels.datasets.nile, shipped in the wheel): the level
drops at 1898/1899 (the Aswan dam's construction; Cobb 1978, the classic change-point example). With 25
reference years, the large-sample rule needed a PSI above 5 * 9 * (1/20 + 1/25) = 4.05 and never flagged
it, while scipy's KS test gives p ~ 1e-4 on the 20 years after the change.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps
from sqlalchemy import select
from statsmodels.datasets import nile

from edgefleet.cloud.db import (
    Alert,
    Device,
    DriftResult,
    DriftSettingsRecord,
    TelemetryRecord,
    make_engine,
    make_sessions,
)
from edgefleet.cloud.drift import DRIFT, OK, DriftThresholds, WindowCounts, evaluate
from edgefleet.cloud.drift_monitor import DriftMonitor
from edgefleet.cloud.drift_small_n import chi_square_statistics, permutation_p
from edgefleet.core.profile import bin_counts, quantile_edges
from edgefleet.core.telemetry import LATENCY_EDGES_MS, FeatureCounts, TelemetryWindow

DATA = nile.load().data
FLOW = DATA["volume"].to_numpy(dtype=np.float64)
YEARS = DATA["year"].to_numpy().astype(int)
CHANGE = int(np.flatnonzero(YEARS == 1899)[0])  # the first year of the lower level
SLOW = DriftThresholds(min_samples=5)  # what a slow stream's fleet sets (PUT /api/v1/drift/settings/fleets/F)


def profile_of(reference: np.ndarray) -> dict:
    """A one-column tabular profile of the reference values, as `edgefleet import` makes one (10 quantile bins)."""
    edges = quantile_edges(reference[:, None], 10)
    return {"count": len(reference), "bins": 10, "features": [{
        "input": "flow", "kind": "columns", "names": ["flow"], "edges": edges.tolist(),
        "counts": bin_counts(reference[:, None], edges).tolist()}]}


def counts(values: np.ndarray, profile: dict) -> WindowCounts:
    edges = np.asarray(profile["features"][0]["edges"])
    return WindowCounts(samples=len(values), features={"flow": bin_counts(values[:, None], edges)})


def judge(values: np.ndarray, profile: dict, thresholds: DriftThresholds = SLOW) -> dict:
    return evaluate(counts(values, profile), profile, thresholds)["data_drift"]["signals"]["flow"]


# --- the test itself ---------------------------------------------------------------------------------------
def test_the_statistic_is_pearsons_and_the_p_value_is_reproducible():
    window, reference = np.array([7, 1, 0, 2, 5]), np.array([2, 6, 3, 4, 1])
    expected = sps.chi2_contingency(np.stack([window, reference]), correction=False).statistic
    assert chi_square_statistics(window.astype(float), (window + reference).astype(float)) == pytest.approx(expected)
    assert permutation_p(window, reference) == permutation_p(window, reference)  # fixed seed
    # the most extreme table of 5 + 5 samples in 2 bins: it or its mirror, 2 of the C(10, 5) = 252 splits
    assert permutation_p(np.array([5, 0]), np.array([0, 5])) == pytest.approx(2 / 252, rel=0.3)
    assert permutation_p(np.array([3, 0]), np.array([7, 0])) == 1.0  # one non-empty bin says nothing


def test_its_false_alarm_rate_is_at_most_its_level_on_null_tables():
    """Windows and references that are splits of one pooled sample (the null hypothesis itself)."""
    rng = np.random.default_rng(3)
    pooled = np.array([4, 6, 2, 5, 3, 3, 2])  # 25 samples in 7 bins: far below Cochran's 5 per cell
    ps = []
    for _ in range(300):
        window = rng.multivariate_hypergeometric(pooled, 10)
        ps.append(permutation_p(window, pooled - window, permutations=999, seed=int(rng.integers(1 << 30))))
    ps = np.asarray(ps)
    assert np.mean(ps <= 0.05) <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / 300)  # at most its level (within 2 SE)
    assert np.mean(ps <= 0.5) > 0.3  # and not a test that never rejects


# --- the Nile ------------------------------------------------------------------------------------------------
def test_the_nile_level_shift_is_flagged_with_25_reference_years():
    profile = profile_of(FLOW[:25])  # 1871-1895
    after = judge(FLOW[CHANGE:CHANGE + 20], profile)  # 1899-1918
    assert after["verdict"] == DRIFT and after["chi2"]["exact_p"] < 0.001 < 0.01
    assert after["psi_threshold"] == SLOW.psi_floor  # the floor alone; the noise term would have asked for:
    assert SLOW.psi_threshold(9, 20, 25) == pytest.approx(4.05) and after["psi"] < 4.05
    assert sps.ks_2samp(FLOW[CHANGE:CHANGE + 20], FLOW[:25]).pvalue < 1e-3  # the change is real

    # as a stream: years arrive one by one after the change; drift on the first window that may be judged
    # (the chi-square permutation test alone needed 7 years; KS on the ordered bins adds the location shift)
    delay = next(k for k in range(SLOW.min_samples, 21) if judge(FLOW[CHANGE:CHANGE + k], profile)["verdict"] == DRIFT)
    assert delay == SLOW.min_samples == 5
    before = [judge(FLOW[25:CHANGE], profile, DriftThresholds(min_samples=3))["verdict"]]  # 1896-1898
    assert before == [OK]


def test_clean_replays_give_at_most_one_false_alarm_per_100_evaluations():
    rng = np.random.default_rng(7)
    pre_profile = profile_of(FLOW[:25])
    replays = [judge(rng.choice(FLOW[:CHANGE], size), pre_profile)["verdict"] for size in (10, 20) for _ in range(100)]
    # the second regime (1899-1970) is long enough to replay without resampling: 25 reference years, then
    # every 10-, 15- and 20-year window of the 47 after them
    post_profile = profile_of(FLOW[CHANGE:CHANGE + 25])
    rest = FLOW[CHANGE + 25:]
    sliding = [judge(rest[start:start + size], post_profile)["verdict"] for size in (10, 15, 20)
               for start in range(len(rest) - size + 1)]
    evaluations = replays + sliding
    assert len(evaluations) == 299 and set(evaluations) <= {OK, DRIFT}
    assert evaluations.count(DRIFT) <= len(evaluations) // 100


def test_large_samples_keep_the_large_sample_rule():
    profile = profile_of(np.repeat(FLOW[:25], 8))  # 200 reference rows: the same values, another regime of n
    signal = judge(np.repeat(FLOW[CHANGE:CHANGE + 20], 6), profile, DriftThresholds())  # 120 samples
    assert signal["chi2"]["exact_p"] is None and signal["psi_threshold"] > DriftThresholds().psi_floor


# --- end to end: a slow stream through the monitor, with its fleet's settings in the database -----------------
def window(seq: int, value: float, profile: dict) -> TelemetryWindow:
    edges = np.asarray(profile["features"][0]["edges"])
    row = tuple(int(v) for v in bin_counts(np.array([[value]]), edges)[0])
    return TelemetryWindow("river", "gauge-1", seq, "nile-flow", 1, 1000.0 + seq, 1001.0 + seq, 1, 1, 0,
                           (0,) * (len(LATENCY_EDGES_MS) + 2), (FeatureCounts("flow", (row,)),))


def test_a_slow_stream_one_reading_per_window_raises_its_alert_after_the_change(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'cloud.db'}")
    sessions = make_sessions(engine)
    profile = profile_of(FLOW[:25])
    with sessions.begin() as session:
        session.add(Device(id="gauge-1", fleet="river", password_hash="$7$unused"))
        session.add(DriftSettingsRecord(fleet="river", min_samples=8, lookback_seconds=15.0))
    monitor = DriftMonitor(sessions, lambda name, version: profile if name == "nile-flow" else None)
    opened_in = None
    for seq, index in enumerate(range(25, 60), start=1):  # 1896 onwards, one year per window
        with sessions.begin() as session:
            w = window(seq, FLOW[index], profile)
            session.add(TelemetryRecord(device_id="gauge-1", fleet="river", seq=seq, model_name="nile-flow",
                                        model_version=1, window_start=w.start, window_end=w.end, requests=1,
                                        samples=1, errors=0, payload=w.to_payload().decode()))
        monitor.run_once(w.end)
        with sessions() as session:
            if session.scalars(select(Alert).where(Alert.scope == "device")).first() is not None:
                opened_in = int(YEARS[index])
                break
    with sessions() as session:
        results = session.scalars(select(DriftResult).where(DriftResult.scope == "device")).all()
        [alert] = session.scalars(select(Alert).where(Alert.scope == "device")).all()
    engine.dispose()
    # judged on 8 readings (the fleet's min_samples) of the last 15 (its lookback), never before the change
    assert results[0].verdict == "insufficient" and results[7].report["thresholds"]["min_samples"] == 8
    assert opened_in is not None and 1899 < opened_in <= 1899 + 10, opened_in
    assert "permutation p" in alert.message and alert.kind == "data_drift" and alert.late_by is None
