"""The telemetry gate's bounds on data quality and device health (core/window_quality.py): each refusal
has its reason and one message naming the field."""

from __future__ import annotations

import json

import pytest

from edgefleet.core.telemetry import LATENCY_EDGES_MS, TelemetryError, TelemetryWindow, parse_telemetry
from edgefleet.core.window_quality import DeviceHealth, QualityCounts


def window(**changes) -> dict:
    base = TelemetryWindow(fleet="f", device="d", seq=1, model_name="m", model_version=1, start=0.0, end=1.0,
                           requests=10, samples=10, errors=0, latency_ms=(0,) * (len(LATENCY_EDGES_MS) + 2),
                           quality=(QualityCounts("x", ((1, 2, 3, 10), (0, 0, 0, 0))),),
                           health=DeviceHealth(0.5, 0.25, 10 ** 12, None, 12.5, 3)).to_dict()
    return base | changes


def test_quality_and_health_round_trip():
    parsed = parse_telemetry(json.dumps(window()))
    assert parsed.quality == (QualityCounts("x", ((1, 2, 3, 10), (0, 0, 0, 0))),)
    assert parsed.health == DeviceHealth(0.5, 0.25, 10 ** 12, None, 12.5, 3)
    older = window()
    del older["quality"], older["health"]
    assert parse_telemetry(json.dumps(older)).quality == () and parse_telemetry(json.dumps(older)).health is None


@pytest.mark.parametrize(("change", "reason", "words"), [
    ({"quality": {"x": 1}}, "bad_field", "quality must be a list"),
    ({"quality": [{"input": "x", "counts": [[1, 2, 3]]}]}, "bad_field", "must hold 4 counts"),
    ({"quality": [{"input": "x", "counts": [[1, 2, 3, 11]]}]}, "number_out_of_range", "10 samples"),
    ({"quality": [{"input": "x", "counts": [[4, 4, 4, 0]]}]}, "number_out_of_range", "10 samples"),
    ({"quality": [{"input": "x", "counts": [[1, -1, 0, 0]]}]}, "bad_field", "non-negative integers"),
    ({"quality": [{"input": "x", "counts": [[1, True, 0, 0]]}]}, "bad_field", "non-negative integers"),
    ({"quality": [{"input": "x", "counts": [[0, 0, 0, 0]]}] * 2}, "bad_field", "each input once"),
    ({"quality": [{"input": "x", "counts": [[0, 0, 0, 0]] * 5000}]}, "bad_field", "1 to 4096 rows"),
    ({"quality": [{"input": "x" * 200, "counts": [[0, 0, 0, 0]]}]}, "bad_field", "1 to 128"),
    ({"health": [1]}, "bad_field", "health must be an object"),
    ({"health": {"cpu_load": 1, "rootkit": 1}}, "bad_field", "unknown fields ['rootkit']"),
    ({"health": {"memory_used": 1.5}}, "number_out_of_range", "health.memory_used"),
    ({"health": {"temperature_c": -300}}, "number_out_of_range", "health.temperature_c"),
    ({"health": {"restarts": 1.5}}, "bad_field", "health.restarts must be an integer"),
    ({"health": {"cpu_load": "high"}}, "bad_field", "health.cpu_load must be a number"),
    ({"health": {"disk_free_bytes": -5}}, "number_out_of_range", "health.disk_free_bytes"),
])
def test_hostile_quality_and_health_are_refused_with_a_reason(change, reason, words):
    with pytest.raises(TelemetryError) as caught:
        parse_telemetry(json.dumps(window(**change)))
    assert caught.value.reason == reason and words in str(caught.value)
