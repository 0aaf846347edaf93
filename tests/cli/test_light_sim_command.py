"""`edgefleet sim --light` as a user runs it: a real cloud (cloud up, its ingest on an anonymous Mosquitto),
300 light devices registered in bulk by the command, their replayed windows stored by the cloud."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from tests.cli.test_fleet_commands import edgefleet
from tests.cloud.cloud_process import cloud_up
from tests.mosquitto import MosquittoBroker


def test_light_devices_are_registered_and_their_windows_stored(tmp_path: Path, digits_bundle, digits_splits):
    np.save(tmp_path / "x.npy", digits_splits.x_test)
    broker = MosquittoBroker(tmp_path / "mosquitto").start()
    try:
        args = ("--data", str(tmp_path / "cloud"), "--trust", str(digits_bundle.public_key))
        with cloud_up(tmp_path, *args, env={"EDGEFLEET_MQTT_URL": broker.url}) as (_process, _lines, url, output):
            token = next(line.split(": ", 1)[1] for line in output.splitlines() if line.startswith("admin token: "))
            env = {"EDGEFLEET_CLOUD": url, "EDGEFLEET_TOKEN": token, "EDGEFLEET_TRUST": str(digits_bundle.public_key)}
            sim = edgefleet("sim", str(digits_bundle.root), "--data", str(tmp_path / "x.npy"), "--light",
                            "--devices", "300", "--window", "1", "--duration", "4", "--connections", "3",
                            "--fleet", "lightf", env=env)
            assert sim.returncode == 0, sim.stderr
            assert "registered 300 light devices" in sim.stdout
            with sqlite3.connect(tmp_path / "cloud" / "edgefleet.db") as db:
                devices = db.execute("SELECT COUNT(DISTINCT device_id) FROM telemetry WHERE device_id LIKE "
                                     "'lightf-%'").fetchone()[0]
            assert devices == 300
    finally:
        broker.stop()


def test_light_refuses_drift_in_one_line(tmp_path: Path, digits_bundle):
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 8, 8), np.float32))
    done = edgefleet("sim", str(digits_bundle.root), "--data", str(tmp_path / "x.npy"), "--light", "--drift", "noise",
                     env={"EDGEFLEET_CLOUD": "http://127.0.0.1:9", "EDGEFLEET_TOKEN": "t"})
    assert (done.returncode, done.stderr.strip()) == (
        2, "error: --light replays recorded windows: it cannot inject drift (leave out --drift)")
