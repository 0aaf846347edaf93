"""Device health (issue 14): sampled from the real OS, sent in every telemetry window over a real Mosquitto
to the cloud's ingest, and shown on the device's /metrics; restarts counted across agent starts."""

from __future__ import annotations

import shutil
import time
import urllib.request

import psutil
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from edgefleet.cloud.db import Device, TelemetryRecord, make_engine, make_sessions
from edgefleet.cloud.ingest import Ingest
from edgefleet.core.telemetry import parse_telemetry
from edgefleet.edge_runtime.agent import DeviceAgent
from edgefleet.edge_runtime.device_config import DeviceConfig
from edgefleet.edge_runtime.device_health import THERMAL_ROOT, HealthSampler
from tests.mosquitto import free_port
from tests.waiting import until


def test_samples_the_machine_and_counts_starts(tmp_path):
    first = HealthSampler(tmp_path)
    health = first.sample()
    assert 0.0 <= health.cpu_load and 0.0 < health.memory_used < 1.0
    assert abs(health.disk_free_bytes - shutil.disk_usage(tmp_path).free) < 512 * 1024 * 1024
    assert health.restarts == 0 and 0.0 <= health.uptime_seconds < 60
    zones = [p for p in THERMAL_ROOT.glob("thermal_zone*/temp")] if THERMAL_ROOT.exists() else []
    assert (health.temperature_c is None) == (not zones)  # this machine: no thermal zone, so None
    assert HealthSampler(tmp_path).sample().restarts == 1 and HealthSampler(tmp_path).restarts == 2


def test_temperature_is_the_hottest_readable_zone(tmp_path):
    """A Raspberry Pi's sysfs layout (millidegrees), one zone switched off (its read fails)."""
    for name, text in (("thermal_zone0", "48500\n"), ("thermal_zone1", "61250\n"), ("thermal_zone2", "")):
        (tmp_path / "thermal" / name).mkdir(parents=True)
        (tmp_path / "thermal" / name / "temp").write_text(text)
    assert HealthSampler(tmp_path, thermal_root=tmp_path / "thermal").temperature() == 61.25


def test_windows_carry_health_to_the_cloud_and_metrics_show_it(digits_bundle, tmp_path, mosquitto):
    config_path = tmp_path / "device.toml"
    config_path.write_text(f"""
[device]
id = "pi-01"
fleet = "lab"
data_dir = "{tmp_path / 'device'}"
[model]
bundle = "{digits_bundle.root}"
trusted_keys = ["{digits_bundle.public_key}"]
threads = 1
[mqtt]
url = "{mosquitto.url}"
[telemetry]
window_seconds = 0.3
[http]
port = {free_port()}
""")
    config = DeviceConfig.load(config_path)
    sessions = make_sessions(make_engine(f"sqlite:///{tmp_path / 'cloud.db'}"))
    with sessions.begin() as session:
        session.add(Device(id="pi-01", fleet="lab", password_hash="x"))
    ingest = Ingest(sessions, mosquitto.url, flush_seconds=0.02)
    ingest.start()
    try:
        assert ingest.wait_connected(10)
        for start in range(2):  # the second start is a restart
            with DeviceAgent(config) as agent:
                with urllib.request.urlopen(agent.http_url + "/metrics", timeout=10) as response:
                    page = response.read().decode()
                gauges = {f.name: f.samples[0].value for f in text_string_to_metric_families(page)
                          if f.type == "gauge"}
                assert gauges["edgefleet_restarts"] == start and gauges["edgefleet_uptime_seconds"] >= 0
                assert 0 < gauges["edgefleet_memory_used"] < 1 and gauges["edgefleet_disk_free_bytes"] > 0
                assert "edgefleet_temperature_c" not in gauges  # absent here: no gauge rather than a false 0
                assert abs(gauges["edgefleet_cpu_load"] - psutil.getloadavg()[0] / psutil.cpu_count()) < 2.0
                time.sleep(0.7)

        def stored() -> list:
            with sessions() as session:
                return [parse_telemetry(r.payload) for r in session.scalars(select(TelemetryRecord))]

        windows = until(lambda: (w := stored()) and {x.health.restarts for x in w} == {0, 1} and w,
                        "windows of both starts", timeout=15)
    finally:
        ingest.stop()
    assert all(w.health.temperature_c is None and w.health.disk_free_bytes > 0 for w in windows)
