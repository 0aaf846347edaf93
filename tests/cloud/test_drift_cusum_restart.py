"""The CUSUM sums survive a restart of the real `edgefleet cloud up` process (cloud/drift_cusum_store.py): a
digits device whose images brighten by 0.02 is stopped with SIGTERM one window before its alarm, a new
process starts on the same data directory once those windows are older than the drift lookback (so a
process that lost the sums could not rebuild them from the lookback), and its sequential alert comes at
the same window, with the same sums, as one ScopeDetectors fed every window without a restart."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx
import numpy as np
from sqlalchemy import select

from edgefleet.cloud.db import Alert, Device, DriftResult, make_engine, make_sessions
from edgefleet.cloud.drift_sequential import SEQUENTIAL, ScopeDetectors
from edgefleet.core.bundle import Bundle
from edgefleet.core.profile import bin_counts, extract_features
from edgefleet.core.telemetry import LATENCY_EDGES_MS, FeatureCounts, TelemetryWindow
from tests.cloud.api_kit import GZIP
from tests.cloud.cloud_process import cloud_up
from tests.cloud.test_scaleout_monitor import store
from tests.waiting import until

SAMPLES, CLEAN, WINDOWS = 20, 10, 40  # images per window; clean windows, then brightened ones
LOOKBACK = 15.0


def stream(profile: dict, x_test: np.ndarray, y_test: np.ndarray) -> list[tuple[tuple[tuple[int, ...], ...],
                                                                             tuple[int, ...]]]:
    """Each window's feature counts and its labels' counts (standing in for predictions, which the
    sequential detector does not read): CLEAN windows of held-out digits, then the same brightened by 0.02."""
    feature = profile["features"][0]
    edges = np.asarray(feature["edges"], np.float64)
    rng = np.random.default_rng(1)
    out = []
    for index in range(WINDOWS):
        picked = rng.integers(0, len(x_test), SAMPLES)
        batch = x_test[picked]
        if index >= CLEAN:
            batch = np.clip(batch + 0.02, 0.0, 1.0).astype(np.float32)
        counts = bin_counts(extract_features(batch, feature["kind"]), edges)
        classes = np.bincount(y_test[picked], minlength=len(profile["predictions"]["counts"]))
        out.append((tuple(tuple(int(v) for v in row) for row in counts), tuple(int(v) for v in classes)))
    return out


def without_restart(profile: dict, counts: list) -> tuple[int, dict]:
    """The window index of the first alarm and its evidence, one ScopeDetectors fed every window."""
    detectors = ScopeDetectors(profile, SAMPLES)
    name = profile["features"][0]["input"]
    for index, (rows, _) in enumerate(counts):
        section = detectors.feed([(float(index), {name: np.asarray(rows)})])
        if section["verdict"] == "drift":
            return index, next(e for e in section["signals"].values() if e["alarm"])
    raise AssertionError("no alarm in memory")


def sequential_sections(sessions) -> list[dict]:
    with sessions() as session:
        results = session.scalars(select(DriftResult).where(DriftResult.scope == "device")
                                  .order_by(DriftResult.id)).all()
        return [r.report[SEQUENTIAL] for r in results if r.report.get(SEQUENTIAL)]


def test_a_cloud_up_process_restarted_mid_drift_alarms_at_the_same_window(tmp_path: Path, mosquitto, digits_bundle,
                                                                          digits_splits):
    bundle = Bundle.open(digits_bundle.root)
    profile = json.loads((digits_bundle.root / "profile.json").read_text())
    counts = stream(profile, digits_splits.x_test, digits_splits.y_test)
    latency = [0] * (len(LATENCY_EDGES_MS) + 2)
    latency[3] = SAMPLES
    confidence = [0] * len(profile["confidence"]["counts"])
    confidence[-2] = SAMPLES  # confident answers: the top finite bin
    expected, evidence = without_restart(profile, counts)
    restart_after = expected - 1  # every drifted window but the alarming one fed before the stop
    assert CLEAN + 2 <= restart_after and expected < WINDOWS, expected

    data = tmp_path / "data"
    args = ("--data", str(data), "--mqtt-url", mosquitto.url, "--trust", str(digits_bundle.public_key),
            "--drift-interval", "0.3", "--drift-lookback", str(LOOKBACK))
    archive = bundle.pack(tmp_path / "digits.tar.gz")
    ends: list[float] = []

    def send(sessions, indices: range) -> None:
        now = time.time()
        windows = []
        for index in indices:
            ends.append(now - 0.01 * (len(indices) - len(windows)))  # in event order, all ended already
            rows, classes = counts[index]
            windows.append(TelemetryWindow("lab", "cam-1", index + 1, bundle.name, bundle.version, ends[-1] - 60,
                                           ends[-1], SAMPLES, SAMPLES, 0, tuple(latency),
                                           (FeatureCounts(profile["features"][0]["input"], rows),), classes,
                                           tuple(confidence)))
        store(sessions, windows)

    with cloud_up(tmp_path, *args) as (process, _lines, url, output):
        token = next(line.split(": ", 1)[1] for line in output.splitlines() if line.startswith("admin token: "))
        pushed = httpx.post(url + "/api/v1/bundles", content=archive.read_bytes(), timeout=30,
                            headers={"Authorization": f"Bearer {token}", **GZIP})
        assert pushed.status_code == 201, pushed.text
        engine = make_engine(f"sqlite:///{(data / 'edgefleet.db').resolve()}")
        sessions = make_sessions(engine)
        with sessions.begin() as session:
            session.add(Device(id="cam-1", fleet="lab", password_hash="-"))
        send(sessions, range(restart_after))
        fed = until(lambda: [s for s in sequential_sections(sessions)
                             if max(e["samples"] for e in s["signals"].values()) == restart_after * SAMPLES],
                    "the first process fed the first windows to the sums", 60)
        assert fed[-1]["verdict"] == "ok"
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    # the windows fed before the stop leave the lookback: only the stored sums remember them
    time.sleep(max(0.0, ends[-1] + LOOKBACK + 1.0 - time.time()))

    with cloud_up(tmp_path, *args) as (process, _lines, url, _output):
        send(sessions, range(restart_after, WINDOWS))
        alarmed = until(lambda: [s for s in sequential_sections(sessions) if s["verdict"] == "drift"],
                        "a sequential alarm after the restart", 90)[0]
        with sessions() as session:
            alerts = session.scalars(select(Alert).where(Alert.kind == SEQUENTIAL)).all()
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    engine.dispose()
    signal_name = alarmed["drifting"][0]
    restarted = alarmed["signals"][signal_name]
    assert restarted["at"] == ends[expected]  # the same window as without the restart
    assert restarted["samples"] == evidence["samples"] == (expected + 1) * SAMPLES  # sums since window 0
    for key in ("up", "down", "up_large", "down_large", "wider", "narrower", "threshold", "statistic"):
        assert restarted[key] == evidence[key], key
    device_alerts = [a for a in alerts if a.scope == "device"]  # (the fleet of this one device alerts too)
    assert [a.scope_id for a in device_alerts] == ["cam-1"] and device_alerts[0].status == "open"
