"""Telemetry history read back through the API (cloud/window_history.py, cloud/api/windows.py) on a real
cloud with SQLite, and the library on a real PostgreSQL: raw windows, hourly and daily totals before and
after retention rolls them up (the counts of every range equal the raw counts summed), pages, bad
ranges refused with one message, and `edgefleet windows` run as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import insert

from edgefleet.cloud.db import Device, TelemetryRecord
from edgefleet.cloud.retention import DAY, HOUR, Retention, RetentionSettings
from edgefleet.cloud.window_history import Scope, check_range, history
from edgefleet.core.telemetry import LATENCY_EDGES_MS, TelemetryWindow
from tests.cloud.cloud_process import cloud_servers

START = 1_796_256_000.0  # a UTC midnight (2026-12-03)
NOW = START + 3 * DAY
DEVICES = {"cam-1": "lab", "cam-2": "lab", "far-1": "other"}


def fill(sessions, rng: np.random.Generator) -> list[dict]:
    """Windows of three devices over three days (two model versions), every 17 minutes; returns them."""
    rows = []
    for device, fleet in DEVICES.items():
        for seq, end in enumerate(np.arange(START + 10, NOW, 17 * 60.0), start=1):
            version = 1 if end < START + 1.5 * DAY else 2
            requests = int(rng.integers(0, 400))
            errors = int(rng.integers(0, requests // 10 + 1))
            latency = [0] * (len(LATENCY_EDGES_MS) + 2)
            latency[3] = requests
            window = TelemetryWindow(fleet=fleet, device=device, seq=seq, model_name="cnn", model_version=version,
                                     start=end - 10, end=float(end), requests=requests, samples=requests - errors,
                                     errors=errors, latency_ms=tuple(latency))
            rows.append({"device_id": device, "fleet": fleet, "seq": seq, "model_name": "cnn",
                         "model_version": version, "window_start": window.start, "window_end": window.end,
                         "requests": requests, "samples": window.samples, "errors": errors,
                         "payload": window.to_payload().decode()})
    with sessions.begin() as session:
        session.execute(insert(TelemetryRecord), rows)
    return rows


def expected(rows: list[dict], span: float, devices: set[str]) -> dict[tuple, tuple]:
    """(bucket start, version) -> (windows, requests, samples, errors), summed from the raw rows."""
    totals: dict[tuple, Counter] = defaultdict(Counter)
    for row in rows:
        if row["device_id"] in devices:
            key = (row["window_end"] // span * span, row["model_version"])
            totals[key].update(windows=1, requests=row["requests"], samples=row["samples"], errors=row["errors"])
    return {key: (c["windows"], c["requests"], c["samples"], c["errors"]) for key, c in totals.items()}


def got(answer_rows: list[dict]) -> dict[tuple, tuple]:
    return {(r["start"], r["model"]["version"]): (r["windows"], r["requests"], r["samples"], r["errors"])
            for r in answer_rows}


def read_all(sessions, scope: Scope, resolution: str, since: float = START, until: float = NOW + DAY) -> list[dict]:
    """Every row of the range, page by page (pages of 50)."""
    rows, offset = [], 0
    while offset is not None:
        page = history(sessions(), scope, resolution, *check_range(resolution, since, until, NOW), limit=50,
                       offset=offset)
        rows += page["rows"]
        offset = page["next_offset"]
    return rows


def check_rollup_keeps_counts(sessions) -> None:
    """The library's contract on one database: totals before and after retention equal the raw sums."""
    with sessions.begin() as session:
        session.add_all([Device(id=d, fleet=f, password_hash="x") for d, f in DEVICES.items()])
    raw = fill(sessions, np.random.default_rng(7))
    lab = Scope(fleet="lab")
    cam = Scope(device="cam-1")
    assert len(read_all(sessions, cam, "raw")) == sum(r["device_id"] == "cam-1" for r in raw)
    assert got(read_all(sessions, cam, "hour")) == expected(raw, HOUR, {"cam-1"})
    assert got(read_all(sessions, lab, "day")) == expected(raw, DAY, {"cam-1", "cam-2"})

    # day 0 goes to hourly then daily roll-ups, day 1 to hourly ones, day 2 stays raw
    done = Retention(sessions, RetentionSettings(raw_days=1, hourly_days=2)).run_once(NOW)
    assert done["raw_windows"] == sum(r["window_end"] < NOW - DAY for r in raw) and done["hourly_rollups"] > 0
    assert got(read_all(sessions, lab, "day")) == expected(raw, DAY, {"cam-1", "cam-2"})  # every day, exactly
    assert got(read_all(sessions, Scope(fleet="other"), "day")) == expected(raw, DAY, {"far-1"})
    hourly = expected(raw, HOUR, {"cam-1"})
    assert got(read_all(sessions, cam, "hour")) == {k: v for k, v in hourly.items() if k[0] >= START + DAY}
    assert len(read_all(sessions, cam, "raw")) == sum(r["device_id"] == "cam-1" and r["window_end"] >= NOW - DAY
                                                      for r in raw)
    version_2 = Scope(device="cam-2", model="cnn", version=2)
    assert got(read_all(sessions, version_2, "day")) == {
        k: v for k, v in expected(raw, DAY, {"cam-2"}).items() if k[1] == 2}


def test_rollups_keep_the_counts_on_sqlite(tmp_path: Path):
    from edgefleet.cloud.db import make_engine, make_sessions

    check_rollup_keeps_counts(make_sessions(make_engine(f"sqlite:///{tmp_path / 'cloud.db'}")))


def test_rollups_keep_the_counts_on_postgres(postgres):
    from tests.cloud.test_postgres import fresh_sessions

    check_rollup_keeps_counts(fresh_sessions(postgres, "window_history_test"))


# --- the API and the CLI on a running cloud -----------------------------------------------------------------
@pytest.fixture
def cloud(tmp_path: Path, mosquitto):
    with cloud_servers() as start:
        # retention off in the server (years): the test runs it itself, at a time of its choosing
        server, client = start({"data_dir": tmp_path / "cloud", "port": 0, "mqtt_url": mosquitto.url,
                                "retention_raw_days": 3650, "retention_hourly_days": 3660})
        for device, fleet in DEVICES.items():
            assert client.post("/api/v1/devices", json={"id": device, "fleet": fleet}).status_code == 201
        yield server, client


def api_rows(client, path: str, **query: object) -> list[dict]:
    rows, offset = [], 0
    while offset is not None:
        answer = client.get(path, params={**query, "offset": offset, "limit": 40})
        assert answer.status_code == 200, answer.text
        rows += answer.json()["rows"]
        offset = answer.json()["next_offset"]
    return rows


def test_the_api_reads_the_same_counts_before_and_after_a_rollup(cloud):
    server, client = cloud
    raw = fill(server.sessions, np.random.default_rng(11))
    window = {"since": START, "until": NOW + 1}
    before = api_rows(client, "/api/v1/fleets/lab/windows", resolution="day", **window)
    assert got(before) == expected(raw, DAY, {"cam-1", "cam-2"})
    hours = api_rows(client, "/api/v1/devices/cam-2/windows", resolution="hour", **window)
    assert got(hours) == expected(raw, HOUR, {"cam-2"}) and all(r["device"] == "cam-2" for r in hours)
    Retention(server.sessions, RetentionSettings(raw_days=1, hourly_days=2)).run_once(NOW)
    assert api_rows(client, "/api/v1/fleets/lab/windows", resolution="day", **window) == before
    after = api_rows(client, "/api/v1/devices/cam-2/windows", resolution="hour", **window)
    assert after == [r for r in hours if r["start"] >= START + DAY]  # day 0 is a daily roll-up now
    everywhere = api_rows(client, "/api/v1/models/cnn/windows", resolution="day", **window)
    assert got(everywhere) == expected(raw, DAY, set(DEVICES))  # both fleets' devices
    (first, *_) = api_rows(client, "/api/v1/fleets/lab/windows", resolution="raw", **window)
    assert first["end"] >= NOW - DAY and first["windows"] == 1 and first["device"] in ("cam-1", "cam-2")


@pytest.mark.parametrize(("query", "code", "detail"), [
    ({"since": NOW, "until": NOW - 60}, 400, "since (1796515200) must be before until (1796515140)"),
    ({"resolution": "hour", "since": START + 60, "until": START}, 400, "since (1796256000) must be before until "
                                                                      "(1796256000)"),
    ({"since": START - 40 * DAY, "until": NOW}, 400, "a raw range may cover at most 31 days, got 43; narrow "
                                                     "since/until or use a coarser resolution"),
    ({"resolution": "minute"}, 400, "resolution must be one of raw, hour, day, got 'minute'"),
    ({"since": "yesterday"}, 422, "query.since: Input should be a valid number, unable to parse string as a number"),
    ({"since": -1}, 422, "query.since: Input should be greater than or equal to 0"),
    ({"limit": 5000}, 422, "query.limit: Input should be less than or equal to 1000"),
    ({"model": "../x"}, 400, "model '../x' must be 1-64 characters of letters, digits, '_', '.', '-', starting "
                             "with a letter or digit"),
])
def test_bad_ranges_get_one_precise_error(cloud, query, code, detail):
    _server, client = cloud
    answer = client.get("/api/v1/devices/cam-1/windows", params=query)
    assert (answer.status_code, answer.json()) == (code, {"detail": detail})
    assert client.get("/api/v1/devices/cam-1/windows").status_code == 200  # still serving


def test_an_unknown_device_is_a_404(cloud):
    _server, client = cloud
    answer = client.get("/api/v1/devices/nobody/windows")
    assert (answer.status_code, answer.json()) == (404, {"detail": "no device 'nobody' is registered"})


def cli(server, client, *args: str) -> subprocess.CompletedProcess:
    token = client.headers["Authorization"].removeprefix("Bearer ")
    return subprocess.run([sys.executable, "-m", "edgefleet.cli.main", "windows", *args, "--cloud", server.url,
                           "--token", token], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "200"}, check=False)


def test_the_cli_prints_the_totals_as_a_table_or_json_and_refuses_bad_times(cloud):
    server, client = cloud
    raw = fill(server.sessions, np.random.default_rng(3))
    shown = cli(server, client, "--fleet", "lab", "--resolution", "day", "--since", "2026-12-03",
                "--until", str(NOW), "--json")
    assert shown.returncode == 0, shown.stderr
    assert got(json.loads(shown.stdout)["rows"]) == expected(raw, DAY, {"cam-1", "cam-2"})
    model = cli(server, client, "--model", "cnn", "--resolution", "day", "--since", str(START), "--until", str(NOW),
                "--json")
    assert model.returncode == 0 and got(json.loads(model.stdout)["rows"]) == expected(raw, DAY, set(DEVICES))
    table = cli(server, client, "--device", "cam-1", "--resolution", "hour", "--since", str(START),
                "--until", str(START + 2 * HOUR))
    assert table.returncode == 0, table.stderr
    first = expected(raw, HOUR, {"cam-1"})[(START, 1)]
    assert "hour telemetry of device cam-1" in table.stdout
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in table.stdout.splitlines() if line.startswith("│")]
    assert cells[0] == ["2026-12-03 00:00", "cnn:1", *map(str, first), f"{first[3] / first[1]:.2%}"]
    assert len(cells) == 2  # [since, until) holds two hours
    paged = cli(server, client, "--device", "cam-1", "--since", str(NOW - 3 * HOUR), "--until", str(NOW),
                "--limit", "5")
    assert paged.returncode == 0 and "more rows: --offset 5" in paged.stdout
    for args, message in ((("--device", "cam-1", "--since", "yesterday"), "--since: expected Unix seconds or an "
                                                                          "ISO 8601 date/time"),
                          (("--device", "cam-1", "--since", str(NOW), "--until", str(START)), "must be before until"),
                          (("--fleet", "lab", "--device", "cam-1"), "pass one of --device ID or --fleet ID")):
        refused = cli(server, client, *args)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
        assert message in " ".join(refused.stderr.split())
