"""The per-slice accuracy alert (cloud/slice_alerts.py) on real predictions: a logistic regression on
scikit-learn's breast-cancer data, its live traffic split into "large" and "small" tumours (tests/cloud/
slice_kit.py), the large ones then read by a scanner 25% low. The bundle's manifest holds the per-slice
accuracy of its held-out split; windows are stored as the ingest stores them, in real SQLite and
PostgreSQL, and the performance monitor judges them. End to end, a real cloud delivers the alert and its
resolution to a real webhook receiver."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from edgefleet.cloud.db import Alert, BundleRecord, Device
from edgefleet.cloud.drift import DriftThresholds
from edgefleet.cloud.drift_settings import MonitorSettings
from edgefleet.cloud.performance_monitor import PerformanceMonitor
from edgefleet.cloud.slice_alerts import KIND, slice_references
from tests.cloud.cloud_process import cloud_servers
from tests.cloud.slice_kit import MODEL, accuracy, cancer, record, split, window
from tests.cloud.webhook_receiver import Receiver
from tests.waiting import until

DROP, MIN_LABELS, LOOKBACK = 0.1, 50, 10.0
SCANNER = 0.75  # the large tumours' scanner reads every measurement 25% low
SEQ = itertools.count(1)
CALIBRATION = {"confidence": {"edges": [0.9], "calibration": {"accuracy": [0.5, 1.0], "expected_accuracy": 0.97,
                                                               "measured_accuracy": 0.97, "on": "eval"}}}


def bundle(manifest: dict, version: int = 1) -> BundleRecord:
    return BundleRecord(name=MODEL, version=version, path="unused.tar.gz", sha256="0" * 64, size=0,
                        manifest={**manifest, "version": version})


def feed(sessions, device: str, end: float, parts: dict, pieces: int = 3, version: int = 1) -> None:
    """The traffic as `pieces` windows of the device ending at `end`, `end` - 1 ..."""
    with sessions.begin() as session:
        session.add_all([record(window("f1", device, next(SEQ), end - i, piece, version))
                         for i, piece in enumerate(split(parts, pieces))])


def slice_alerts(sessions) -> list[Alert]:
    with sessions() as session:
        return list(session.scalars(select(Alert).where(Alert.kind == KIND).order_by(Alert.id)))


def check_slice_alerts(sessions) -> None:
    data = cancer()
    reference = data.metrics["per_slice"]["large"]["accuracy"]
    with sessions.begin() as session:
        session.add_all([Device(id=d, fleet="f1", password_hash="x") for d in ("d1", "d2")])
        session.add(bundle(data.manifest()))
    monitor = PerformanceMonitor(sessions, lambda name, version: CALIBRATION, drop=DROP,
                                 drift=MonitorSettings(DriftThresholds(min_samples=MIN_LABELS), LOOKBACK, 1.0))
    clean, shifted = data.traffic(), data.traffic(SCANNER)
    assert accuracy(shifted, "large") < reference - 2 * DROP < accuracy(clean, "large")  # the shift is real

    for device in ("d1", "d2"):
        feed(sessions, device, 100.0, clean)
    records = [r for r in monitor.run_once(now=101) if "slice" in r]
    assert {(r["scope_id"], r["slice"]) for r in records} == {(s, n) for s in ("d1", "d2", "f1")
                                                             for n in ("large", "small")}
    assert all(r["reference"] == "bundle metrics eval" for r in records) and not slice_alerts(sessions)

    feed(sessions, "d1", 200.0, shifted)  # d1's large tumours are read low; d2 stays clean
    feed(sessions, "d2", 200.0, clean)
    monitor.run_once(now=201)
    device, fleet = slice_alerts(sessions)
    assert (device.scope, device.scope_id, device.status, device.details["slice"]) == ("device", "d1", "open", "large")
    assert device.message.startswith(f"accuracy on slice large {accuracy(shifted, 'large'):.3f} vs {reference:.3f} "
                                      f"reference (bundle metrics eval) on device d1 ({MODEL} v1, 77 labels)")
    fleet_accuracy = (accuracy(shifted, "large") + accuracy(clean, "large")) / 2
    assert (fleet.scope, fleet.scope_id) == ("fleet", "f1") and f"slice large {fleet_accuracy:.3f}" in fleet.message
    monitor.run_once(now=202)
    assert len(slice_alerts(sessions)) == 2  # one open alert per scope and slice, not one per run

    feed(sessions, "d1", 300.0, {"large": tuple(a[:20] for a in clean["large"])}, pieces=1)
    monitor.run_once(now=301)  # 20 labels, fewer than min_samples: no verdict, the alert stays open
    assert [a.status for a in slice_alerts(sessions)] == ["open", "open"]

    feed(sessions, "d1", 400.0, clean)  # recovered: 0.948 is within drop / 2 of the reference
    monitor.run_once(now=401)
    assert [a.status for a in slice_alerts(sessions)] == ["closed", "closed"]

    # a version whose manifest has no per-slice metrics: the calibration data's accuracy is the reference,
    # and the names beyond a window's bound (_other) are not a slice
    with sessions.begin() as session:
        session.add(bundle({"name": MODEL, "metrics": {"eval": {"accuracy": 0.97, "count": 143}}}, version=2))
    feed(sessions, "d2", 500.0, {"night": shifted["large"], "_other": shifted["large"]}, version=2)
    monitor.run_once(now=501)
    night = [a for a in slice_alerts(sessions) if a.model_version == 2]
    assert {(a.scope_id, a.details["slice"]) for a in night} == {("d2", "night"), ("f1", "night")}
    assert f"vs 0.970 reference (calibration data, whole model) on device d2 ({MODEL} v2" in night[0].message


def test_a_slices_alert_opens_and_closes_on_sqlite(tmp_path: Path):
    from edgefleet.cloud.db import make_engine, make_sessions

    check_slice_alerts(make_sessions(make_engine(f"sqlite:///{tmp_path / 'cloud.db'}")))


def test_a_slices_alert_opens_and_closes_on_postgres(postgres):
    from tests.cloud.test_postgres import fresh_sessions

    check_slice_alerts(fresh_sessions(postgres, "slice_alerts_test"))


def test_a_slice_without_any_reference_is_judged_against_its_own_earlier_labels(tmp_path: Path):
    """A version whose manifest has no per-slice metrics and whose profile no calibration: its slices were
    never judged. Now the slice's first labels (from windows before the lookback) are its reference, and they
    stay so: the shifted labels that opened the alert do not become the new normal."""
    from edgefleet.cloud.db import make_engine, make_sessions

    sessions = make_sessions(make_engine(f"sqlite:///{tmp_path / 'cloud.db'}"))
    data = cancer()
    with sessions.begin() as session:
        session.add(Device(id="d1", fleet="f1", password_hash="x"))
        session.add(bundle({"name": MODEL, "metrics": {"eval": {"accuracy": 0.97, "count": 143}}}, version=3))
    monitor = PerformanceMonitor(sessions, lambda name, version: None, drop=DROP,
                                 drift=MonitorSettings(DriftThresholds(min_samples=MIN_LABELS), LOOKBACK, 1.0))
    clean, shifted = data.traffic(), data.traffic(SCANNER)
    feed(sessions, "d1", 100.0, clean, pieces=1, version=3)  # one window: its 77 large labels are the first 50+
    assert [r for r in monitor.run_once(now=101) if "slice" in r] == []  # no labels before the lookback yet

    feed(sessions, "d1", 200.0, shifted, version=3)
    records = {(r["scope_id"], r["slice"]): r for r in monitor.run_once(now=201) if "slice" in r}
    assert records[("d1", "large")]["reference_accuracy"] == pytest.approx(accuracy(clean, "large"))
    device, fleet = slice_alerts(sessions)
    assert device.message.startswith(
        f"accuracy on slice large {accuracy(shifted, 'large'):.3f} vs {accuracy(clean, 'large'):.3f} reference "
        f"(its own earlier labels, 77 up to 1970-01-01T00:01:40Z) on device d1 ({MODEL} v3, 77 labels)")
    assert (fleet.scope_id, fleet.status, fleet.details["slice"]) == ("f1", "open", "large")

    feed(sessions, "d1", 300.0, clean, version=3)
    records = {(r["scope_id"], r["slice"]): r for r in monitor.run_once(now=301) if "slice" in r}
    assert records[("d1", "large")]["reference_accuracy"] == pytest.approx(accuracy(clean, "large"))  # still the first
    assert [a.status for a in slice_alerts(sessions)] == ["closed", "closed"]


def test_per_slice_references_are_read_defensively_from_the_manifest():
    per_slice = {"night": {"accuracy": 0.8}, "day": {"accuracy": "high"}, "dusk": {"accuracy": 1.5}, "x": [1]}
    manifest = {"metrics": {"float": {"per_slice": {"night": {"accuracy": 0.9}, "dawn": {"accuracy": 0.7}}},
                            "eval": {"per_slice": per_slice}, "compression": [1, 2], "test": "broken"}}
    assert slice_references(manifest) == {"night": (0.8, "bundle metrics eval"),  # eval first, then the others
                                          "dawn": (0.7, "bundle metrics float")}
    assert slice_references({"metrics": "none"}) == {} == slice_references(None)


@pytest.fixture
def cloud(tmp_path: Path, mosquitto):
    with cloud_servers() as start:
        server, client = start({"data_dir": tmp_path / "cloud", "port": 0, "mqtt_url": mosquitto.url,
                                "drift_interval_seconds": 0.2, "drift_lookback_seconds": 2.0,
                                "drift_min_samples": MIN_LABELS, "performance_drop": DROP})
        assert client.post("/api/v1/devices", json={"id": "d1", "fleet": "f1"}).status_code == 201
        yield server, client


def test_the_cloud_sends_the_slices_alert_and_its_resolution_to_a_webhook(cloud):
    server, client = cloud
    data = cancer()
    with server.sessions.begin() as session:
        session.add(bundle(data.manifest()))
    refused = client.post("/api/v1/webhooks", json={"url": "http://127.0.0.1:9/x", "kinds": ["performance_dorp"]})
    assert refused.status_code == 422 and "unknown alert kinds ['performance_dorp']" in refused.text
    with Receiver("a-secret-of-16-chars-or-more") as receiver:
        hook = client.post("/api/v1/webhooks", json={"url": receiver.url, "secret": "a-secret-of-16-chars-or-more",
                                                     "kinds": [KIND]})
        assert hook.status_code == 201, hook.text
        feed(server.sessions, "d1", time.time(), data.traffic(SCANNER), pieces=1)
        until(lambda: len(receiver.accepted) >= 2, "the device's and the fleet's alerts", 30)
        opened = {body["alert"]["scope"]: body for body in receiver.accepted}
        assert {b["event"] for b in opened.values()} == {"alert.opened"}
        assert opened["device"]["alert"]["message"].startswith("accuracy on slice large ")
        time.sleep(2.5)  # the shifted windows leave the lookback
        feed(server.sessions, "d1", time.time(), data.traffic(), pieces=1)
        until(lambda: sum(b["event"] == "alert.resolved" for b in receiver.accepted) == 2, "both resolutions", 30)
    assert receiver.forged == 0 and {b["alert"]["kind"] for b in receiver.accepted} == {KIND}


def test_earlier_accuracies_of_many_scopes_in_one_look_up_are_each_scopes_own(tmp_path: Path, monkeypatch):
    """The monitor looks up the baselines of every scope of a pass at once (a query per device made a pass of
    100,000 devices 3.5x as long): each scope still gets its own first labels, in (window end, row id)
    order, of its model version only, ended by `before`, from its oldest BASELINE_ROWS windows."""
    from edgefleet.cloud import slice_alerts
    from edgefleet.cloud.db import make_engine, make_sessions

    sessions = make_sessions(make_engine(f"sqlite:///{tmp_path / 'cloud.db'}"))
    clean, shifted = cancer().traffic(), cancer().traffic(SCANNER)
    feed(sessions, "d1", 100.0, clean, version=3)  # three windows ending 98, 99, 100: ~26 large labels each
    feed(sessions, "d2", 100.0, shifted, pieces=1, version=3)
    feed(sessions, "d2", 50.0, clean, pieces=1, version=2)  # another version: not d2's baseline
    feed(sessions, "d3", 150.0, clean, pieces=1, version=3)  # after `before`: no baseline yet
    wanted = {("device", d, "f1", MODEL, 3): ({"large", "small"}, 120.0, MIN_LABELS) for d in ("d1", "d2", "d3")}
    wanted[("fleet", "f1", "f1", MODEL, 3)] = ({"large"}, 120.0, MIN_LABELS)
    found = slice_alerts.earlier_accuracies(sessions(), wanted)

    first_two = [piece["large"] for piece in split(clean, 3)[1:]]  # the windows ending 98 and 99
    labels = sum(len(true) for true, _ in first_two)
    assert labels >= MIN_LABELS > len(first_two[0][0])
    expected = sum(int((true == predicted).sum()) for true, predicted in first_two) / labels
    assert found[(("device", "d1", "f1", MODEL, 3), "large")] == (
        pytest.approx(expected), f"its own earlier labels, {labels} up to 1970-01-01T00:01:39Z")
    assert found[(("device", "d2", "f1", MODEL, 3), "large")][0] == pytest.approx(accuracy(shifted, "large"))
    assert not any(key[1] == "d3" for key, _ in found)
    assert found[(("fleet", "f1", "f1", MODEL, 3), "large")][1] == \
        f"its own earlier labels, {labels} up to 1970-01-01T00:01:39Z"
    with sessions() as session:  # one scope at a time, the same answers
        assert {(key, part): answer for key, (parts, before, n) in wanted.items() for part in parts
                if (answer := slice_alerts.earlier_accuracy(session, key, part, before, n)) is not None} == found

    monkeypatch.setattr(slice_alerts, "BASELINE_ROWS", 1)  # d1's oldest window alone holds too few labels
    found = slice_alerts.earlier_accuracies(sessions(), wanted)
    assert (("device", "d1", "f1", MODEL, 3), "large") not in found
    assert (("device", "d2", "f1", MODEL, 3), "large") in found
