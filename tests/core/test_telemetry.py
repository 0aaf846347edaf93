"""The telemetry message schema: a round trip, and one precise refusal per kind of bad payload."""

from __future__ import annotations

import json

import pytest

from edgefleet.core.telemetry import LATENCY_EDGES_MS, FeatureCounts, TelemetryError, TelemetryWindow, parse_telemetry
from edgefleet.core.topics import TopicError, parse, subscription, topic


def window(**changes) -> dict:
    base = TelemetryWindow("lab", "d1", 7, "digits-cnn", 2, 100.0, 160.0, 5, 6, 1,
                           tuple([0] * (len(LATENCY_EDGES_MS) + 1)) + (0,),
                           (FeatureCounts("pixels", ((1, 2, 3), (3, 2, 1))),), (4, 2), (1, 5, 0)).to_dict()
    base.update(changes)
    return base


def refused(data: dict | bytes, reason: str) -> str:
    payload = data if isinstance(data, bytes) else json.dumps(data).encode()
    with pytest.raises(TelemetryError) as caught:
        parse_telemetry(payload)
    assert caught.value.reason == reason, str(caught.value)
    return str(caught.value)


def test_round_trip():
    parsed = parse_telemetry(json.dumps(window()).encode())
    assert parsed.to_dict() == window()
    assert parsed.features[0].counts == ((1, 2, 3), (3, 2, 1))


@pytest.mark.parametrize(
    ("changes", "reason", "fragment"),
    [
        ({"schema": "x"}, "wrong_schema", "schema must be"),
        ({"v": 2}, "unknown_version", "version 2"),
        ({"seq": -1}, "bad_field", "seq must be a non-negative integer"),
        ({"seq": True}, "bad_field", "seq must be a non-negative integer"),
        ({"requests": 1, "errors": 2}, "bad_field", "errors (2) exceed requests (1)"),
        ({"latency_ms": [1, 2]}, "bad_field", "latency_ms must have 21 counts"),
        ({"predictions": [1, -1]}, "bad_field", "got -1"),
        ({"predictions": [1, True]}, "bad_field", "got True"),
        ({"predictions": [1, 2.5]}, "bad_field", "got 2.5"),
        ({"window": {"start": 5, "end": 1}}, "bad_field", "ends (1.0) before it starts"),
        ({"device": "a/b"}, "bad_field", "device 'a/b'"),
        ({"model": None}, "missing_field", "model must be an object"),
        ({"features": [{"input": "x", "counts": [[1, 2], [1]]}]}, "bad_field", "rows differ in length"),
        ({"dropped": {"windows": "x"}}, "bad_field", "dropped.windows must be a non-negative integer"),
        ({"dropped": {"windows": 1, "first_seq": [1], "last_seq": 2}}, "bad_field", "dropped.first_seq"),
        ({"dropped": {"windows": 1, "first_seq": 5, "last_seq": None}}, "bad_field", "both be null or a range"),
        ({"dropped": {"windows": 1, "first_seq": 5, "last_seq": 4}}, "bad_field", "both be null or a range"),
        ({"seq": 2**31}, "number_out_of_range", "seq is 2147483648, over the largest stored integer"),
        ({"model": {"name": "m", "version": 2**40}}, "number_out_of_range", "model.version"),
        ({"predictions": [1, 2**31]}, "number_out_of_range", "predictions holds 2147483648"),
        ({"model": {"name": "m" * 129, "version": 1}}, "bad_field", "1 to 128 characters"),
        ({"model": {"name": "a\0b", "version": 1}}, "bad_field", "without NUL"),
        ({"schema": "x" * 10_000}, "wrong_schema", "..."),
    ],
)
def test_bad_fields(changes, reason, fragment):
    assert fragment in refused(window(**changes), reason)


def test_not_json_not_object_too_large():
    refused(b"{oops", "not_json")
    refused(b"[1, 2]", "not_object")
    with pytest.raises(TelemetryError, match="exceeds the limit of 100") as caught:
        parse_telemetry(json.dumps(window()).encode(), max_bytes=100)
    assert caught.value.reason == "too_large"


def test_topics():
    assert topic("lab", "d1", "telemetry") == "edgefleet/v1/lab/d1/telemetry"
    assert parse("edgefleet/v1/lab/d1/cmd").device == "d1"
    assert subscription("birth") == "edgefleet/v1/+/+/birth"
    for bad in ("edgefleet/v1/lab/d1", "edgefleet/v2/lab/d1/telemetry", "edgefleet/v1/lab/d1/other"):
        with pytest.raises(TopicError):
            parse(bad)
    with pytest.raises(TopicError, match="device 'd#1'"):
        topic("lab", "d#1", "telemetry")


def test_limits_of_outside_json_have_their_own_reasons():
    base = json.dumps(window())
    refused(base.replace('"seq": 7', '"seq": ' + "9" * 5000).encode(), "number_out_of_range")
    refused(base.replace('"start": 100.0', '"start": 1e999').encode(), "not_finite")
    refused(base.replace('"start": 100.0', '"start": NaN').encode(), "not_finite")
    refused(b"[" * 5000 + b"]" * 5000, "too_deep")
    refused(b'{"schema": "\xff"}', "not_utf8")


def test_the_dropped_record_round_trips():
    parsed = parse_telemetry(json.dumps(window(dropped={"windows": 3, "first_seq": 4, "last_seq": 6})).encode())
    assert (parsed.dropped.windows, parsed.dropped.first_seq, parsed.dropped.last_seq) == (3, 4, 6)
    assert parse_telemetry(json.dumps(window(dropped=None)).encode()).dropped.windows == 0
