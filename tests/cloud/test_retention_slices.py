"""Slices and labels survive retention (cloud/retention.py): windows of two devices over three days, each
carrying real predictions of a logistic regression on scikit-learn's breast-cancer data for two slices,
"large" and "small" tumours (tests/cloud/slice_kit.py), with the labels that arrived. On day 1 cam-2's large
tumours are read by a scanner 25% low. Retention rolls day 0 into a daily roll-up and day 1 into hourly
ones; accuracy per slice and day, read through the library on SQLite and PostgreSQL and through a real
cloud's GET .../performance?by=slice, is the same before and after, and equals the raw windows' own.
A roll-up of more slice names or confusion cells than a window may hold keeps the window's bounds."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from edgefleet.cloud.db import Device
from edgefleet.cloud.performance import performance
from edgefleet.cloud.retention import DAY, Retention, RetentionSettings, add_windows
from edgefleet.core.labels import LabelCounts
from edgefleet.core.slices import MAX_SLICE_CELLS, MAX_SLICES, OTHER, SliceCounts
from edgefleet.core.telemetry import LATENCY_EDGES_MS, TelemetryWindow, parse_telemetry
from tests.cloud.cloud_process import cloud_servers
from tests.cloud.slice_kit import cancer, record, window

START = 1_796_256_000.0  # a UTC midnight (2026-12-03)
NOW = START + 3 * DAY
DEVICES = ("cam-1", "cam-2")
EVERY = 20 * 60.0
SETTINGS = RetentionSettings(raw_days=1, hourly_days=2)  # at NOW: day 0 daily, day 1 hourly, day 2 raw


def fill(sessions) -> dict[tuple, Counter]:
    """Windows every 20 minutes per device, 6 live rows per slice each; returns (day, device, slice) ->
    labels and right answers, counted from what was stored."""
    data, rng = cancer(), np.random.default_rng(3)
    clean, low = data.traffic(), data.traffic(0.75)
    truth: dict[tuple, Counter] = defaultdict(Counter)
    with sessions.begin() as session:
        session.add_all([Device(id=d, fleet="lab", password_hash="x") for d in DEVICES])
        for device in DEVICES:
            for seq, end in enumerate(np.arange(START + 10, NOW, EVERY), start=1):
                day = int((end - START) // DAY)
                traffic = low if device == "cam-2" and day == 1 else clean
                parts = {}
                for name, (true, predicted) in traffic.items():
                    rows = rng.choice(len(true), 6, replace=False)
                    parts[name] = (true[rows], predicted[rows])
                    truth[(day, device, name)].update(labels=6, right=int((true[rows] == predicted[rows]).sum()))
                session.add(record(window("lab", device, seq, float(end), parts)))
    return truth


def per_day(answer: dict) -> dict[tuple, tuple]:
    """(day, slice) -> (labels, accuracy, windows) from a performance answer with day-wide buckets."""
    return {(int((p["start"] - START) // DAY), p["slice"]): (p["labels"], p["accuracy"], p["windows"])
            for p in answer["points"]}


def expected(truth: dict[tuple, Counter], devices: tuple[str, ...]) -> dict[tuple, tuple]:
    out = {}
    for day in range(3):
        for name in ("large", "small"):
            labels = sum(truth[(day, d, name)]["labels"] for d in devices)
            right = sum(truth[(day, d, name)]["right"] for d in devices)
            out[(day, name)] = (labels, right / labels, len(devices) * int(DAY // EVERY))
    return out


def check_rollups_keep_slices(sessions) -> None:
    truth = fill(sessions)

    def read(**scope: str) -> dict[tuple, tuple]:
        with sessions() as session:
            return per_day(performance(session, lambda name, version: None, since=START, until=NOW,
                                       bucket_seconds=DAY, by="slice", **scope))

    before = read(fleet="lab")
    assert before == expected(truth, DEVICES)
    done = Retention(sessions, SETTINGS).run_once(NOW)
    assert done["raw_windows"] == 2 * 2 * int(DAY // EVERY) and done["hourly_rollups"] == 2 * 24
    assert read(fleet="lab") == before  # every day and slice, exactly
    cam_2 = read(device="cam-2")
    assert cam_2 == expected(truth, ("cam-2",))
    assert cam_2[(1, "large")][1] < cam_2[(1, "small")][1] - 0.15  # the low scanner, in an hourly roll-up
    assert cam_2[(0, "large")][1] > 0.85  # and the clean days around it


def test_rollups_keep_accuracy_per_slice_on_sqlite(tmp_path: Path):
    from edgefleet.cloud.db import make_engine, make_sessions

    check_rollups_keep_slices(make_sessions(make_engine(f"sqlite:///{tmp_path / 'cloud.db'}")))


def test_rollups_keep_accuracy_per_slice_on_postgres(postgres):
    from tests.cloud.test_postgres import fresh_sessions

    check_rollups_keep_slices(fresh_sessions(postgres, "retention_slices_test"))


def test_the_api_reads_accuracy_per_slice_over_a_rolled_up_period(tmp_path: Path, mosquitto):
    with cloud_servers() as start:
        # retention off in the server (years): the test runs it itself, at a time of its choosing
        server, client = start({"data_dir": tmp_path / "cloud", "port": 0, "mqtt_url": mosquitto.url,
                                "retention_raw_days": 3650, "retention_hourly_days": 3660})
        truth = fill(server.sessions)

        def read(path: str) -> dict[tuple, tuple]:
            answer = client.get(f"/api/v1/{path}/performance", params={"by": "slice", "since": START, "until": NOW,
                                                                       "bucket_seconds": DAY})
            assert answer.status_code == 200, answer.text
            return per_day(answer.json())

        before = {path: read(path) for path in ("fleets/lab", "devices/cam-2", "models/cancer-lr")}
        Retention(server.sessions, SETTINGS).run_once(NOW)
        after = {path: read(path) for path in before}
    assert after == before
    assert after["devices/cam-2"] == expected(truth, ("cam-2",))
    assert after["devices/cam-2"][(1, "large")][1] < after["devices/cam-2"][(1, "small")][1] - 0.15


def test_a_rollup_of_many_slices_and_cells_keeps_a_windows_bounds():
    """40 slice names across windows (each within its own bound), one with more confusion cells than a
    slice may hold once added: the roll-up parses, and samples, labels and right answers are all kept."""
    windows = []
    for index in range(40):
        cells = tuple((index * 7 + k, (index * 7 + k) % 5, 1 + k) for k in range(MAX_SLICE_CELLS // 2))
        labels = LabelCounts(sum(n for *_, n in cells), confusion=cells)
        busy = LabelCounts(4, confusion=tuple((index * 4 + j, 0, 1) for j in range(4)))  # 160 cells in all
        slices = (SliceCounts(f"cam-{index}", 10 + index, (), labels), SliceCounts("busy", 5, (), busy))
        windows.append(TelemetryWindow("f", "d", index + 1, "m", 1, index, index + 1, 15 + index, 15 + index, 0,
                                       (0,) * (len(LATENCY_EDGES_MS) + 2), labels=labels, slices=slices))
    rolled = parse_telemetry(add_windows(windows, 0.0, 3600.0).to_payload())  # within every bound of a window
    names = {s.slice: s for s in rolled.slices}
    assert len(names) == MAX_SLICES + 1 and OTHER in names and "busy" in names
    assert sum(s.samples for s in rolled.slices) == sum(w.samples for w in windows)
    busy = names["busy"].labels
    assert len(busy.confusion) <= MAX_SLICE_CELLS and busy.count == 160
    assert busy.correct == 1  # only (0, 0) was right, and it is kept
    kept = sum(s.labels.count for s in rolled.slices if s.slice != "busy")
    assert kept == sum(w.labels.count for w in windows)
    assert sum(s.labels.correct for s in rolled.slices if s.slice != "busy") == sum(w.labels.correct for w in windows)
    assert rolled.labels.count == sum(w.labels.count for w in windows)
    assert rolled.labels.correct == sum(w.labels.correct for w in windows)
