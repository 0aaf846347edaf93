"""Performance over time and the label-free accuracy alert, on a real SQLite database: windows stored the way
the ingest stores them, a profile whose calibration says the lowest confidence bin is right half the time.
The API's refusals are fed as HTTP requests to a real cloud."""

from __future__ import annotations

import math

import pytest

from edgefleet.cloud.db import Alert, Device, TelemetryRecord, make_engine, make_sessions
from edgefleet.cloud.performance import performance
from edgefleet.cloud.performance_monitor import PerformanceMonitor
from edgefleet.core.labels import ERROR_STEPS, LabelCounts
from edgefleet.core.telemetry import LATENCY_EDGES_MS, TelemetryWindow

# two confidence bins (edge 0.9) and the NaN column; below 0.9 right half the time, above always
PROFILE = {"confidence": {"edges": [0.9], "counts": [10, 90, 0],
                          "calibration": {"method": "isotonic-binned", "on": "eval", "count": 100,
                                          "accuracy": [0.5, 1.0], "expected_accuracy": 0.95,
                                          "measured_accuracy": 0.95}}}
REGRESSION = {"outputs": [{"edges": [[0.0, 2.0]]}]}


@pytest.fixture
def sessions(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'cloud.db'}")
    made = make_sessions(engine)
    with made() as session:
        session.add_all([Device(id="d1", fleet="f1", password_hash="$7$unused"),
                         Device(id="d2", fleet="f1", password_hash="$7$unused")])
        session.commit()
    yield made
    engine.dispose()


def store(sessions, device: str, seq: int, end: float, low: int, high: int, labels: LabelCounts | None = None,
          model: str = "digits-cnn") -> None:
    window = TelemetryWindow("f1", device, seq, model, 1, end - 1, end, low + high, low + high, 0,
                             (0,) * (len(LATENCY_EDGES_MS) + 2), confidence=(low, high, 0) if model != "mlp" else (),
                             labels=labels)
    with sessions() as session:
        session.add(TelemetryRecord(device_id=device, fleet="f1", seq=seq, model_name=model, model_version=1,
                                    window_start=end - 1, window_end=end, requests=low + high, samples=low + high,
                                    errors=0, payload=window.to_payload().decode()))
        session.commit()


def alerts(sessions) -> list[Alert]:
    with sessions() as session:
        return list(session.query(Alert).order_by(Alert.id))


def test_points_put_the_estimate_beside_the_labels_that_arrived(sessions):
    store(sessions, "d1", 1, 10.5, 10, 90, LabelCounts(4, confusion=((1, 1, 3), (2, 1, 1))))
    store(sessions, "d1", 2, 11.5, 60, 40)
    store(sessions, "d2", 1, 10.2, 0, 50, LabelCounts(2, confusion=((5, 5, 2),)))
    with sessions() as session:
        device = performance(session, lambda name, version: PROFILE, device="d1", bucket_seconds=1)
        fleet = performance(session, lambda name, version: PROFILE, fleet="f1", bucket_seconds=60)
    first, second = device["points"]
    assert (first["start"], first["samples"], first["labels"], first["accuracy"]) == (10, 100, 4, 0.75)
    assert first["estimated_accuracy"] == pytest.approx(0.95)  # 10 * 0.5 + 90 * 1.0
    assert second["estimated_accuracy"] == pytest.approx(0.7) and second["accuracy"] is None  # no labels yet
    assert device["models"] == [{"model": {"name": "digits-cnn", "version": 1}, "reference_accuracy": 0.95,
                                 "calibrated_on": "eval"}]
    [both] = fleet["points"]
    assert (both["samples"], both["labels"], both["accuracy"]) == (250, 6, 5 / 6)
    assert both["estimated_accuracy"] == pytest.approx((10 * 0.5 + 90 + 60 * 0.5 + 40 + 50) / 250)


def test_regression_labels_give_mae_and_rmse(sessions):
    errors = [0] * (len(ERROR_STEPS) + 2)
    errors[6] = 2
    store(sessions, "d1", 1, 5.0, 2, 0, LabelCounts(2, errors=tuple(errors), abs_error_sum=1.0,
                                                    squared_error_sum=0.5), model="mlp")
    with sessions() as session:
        [point] = performance(session, lambda name, version: REGRESSION, device="d1")["points"]
    assert point["mae"] == 0.5 and point["rmse"] == pytest.approx(math.sqrt(0.25))
    assert point["estimated_accuracy"] is None and "accuracy" not in point


def test_the_alert_opens_on_a_drop_without_labels_and_closes_when_the_estimate_is_back(sessions):
    monitor = PerformanceMonitor(sessions, lambda name, version: PROFILE, drop=0.05, lookback_seconds=10,
                                 min_samples=100)
    store(sessions, "d1", 1, 100.0, 10, 90)
    assert {r["scope"] for r in monitor.run_once(now=101)} == {"device", "fleet"} and not alerts(sessions)
    store(sessions, "d1", 2, 120.0, 30, 20)  # 50 samples: fewer than min_samples, not judged
    assert monitor.run_once(now=121) == [] and not alerts(sessions)
    store(sessions, "d1", 3, 121.0, 60, 40, LabelCounts(10, confusion=((1, 1, 9), (1, 2, 1))))
    records = monitor.run_once(now=122)  # 150 samples at 0.5 * 90/150 + 60/150 = 0.7
    device = next(r for r in records if r["scope"] == "device")
    assert device["estimated_accuracy"] == pytest.approx(0.7) and device["measured_accuracy"] == 0.9
    [opened, fleet] = alerts(sessions)
    assert (opened.kind, opened.scope, opened.scope_id, opened.status) == ("estimated_accuracy", "device", "d1",
                                                                              "open")
    assert "is 0.700, 0.250 below the 0.950 its calibration expects" in opened.message
    assert "measured on 10 labels: 0.900" in opened.message and fleet.scope == "fleet"
    monitor.run_once(now=123)
    assert len(alerts(sessions)) == 2  # one open alert per scope, not one per run
    store(sessions, "d1", 4, 140.0, 5, 95)  # 0.975: back within drop / 2
    monitor.run_once(now=141)
    assert [a.status for a in alerts(sessions)] == ["closed", "closed"]


def test_a_model_without_calibration_is_never_judged(sessions):
    monitor = PerformanceMonitor(sessions, lambda name, version: {"confidence": {"edges": [0.9]}}, min_samples=1)
    store(sessions, "d1", 1, 100.0, 100, 0)
    assert monitor.run_once(now=101) == [] and not alerts(sessions)


@pytest.mark.parametrize(("path", "status", "fragment"), [
    ("/api/v1/devices/nobody/performance", 404, "no device 'nobody'"),
    ("/api/v1/devices/d1/performance?bucket_seconds=0", 422, "bucket_seconds"),
    ("/api/v1/devices/d1/performance?since=nan", 422, "since"),
    ("/api/v1/fleets/bad%20fleet/performance", 400, "fleet"),
    ("/api/v1/models/m/performance?version=0", 422, "version"),
])
def test_bad_performance_queries_get_one_precise_4xx(cloud, path, status, fragment):
    cloud.client.post("/api/v1/devices", json={"id": "d1", "fleet": "f1"})
    response = cloud.client.get(path)
    assert response.status_code == status and fragment in response.text
