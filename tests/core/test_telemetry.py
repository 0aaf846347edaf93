"""The telemetry message schema: a round trip, and one precise refusal per kind of bad payload."""

from __future__ import annotations

import json

import pytest

from edgefleet.core.telemetry import (
    LATENCY_EDGES_MS,
    MAX_OUTPUT_ROWS,
    MAX_OUTPUTS,
    MAX_ROW_LENGTH,
    FeatureCounts,
    OutputCounts,
    TelemetryError,
    TelemetryWindow,
    parse_telemetry,
)
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


# per-output summaries (regression values, embedding norm/projections, detections) ---------------------------
OUTPUTS = (OutputCounts("price", ((3, 2, 1, 0),)), OutputCounts("embedding", ((1, 4, 1, 0), (2, 2, 2, 0))))


def with_outputs(outputs: object) -> dict:
    return window(outputs=outputs)


def test_outputs_round_trip_and_old_payloads_without_them_still_parse():
    data = {**window(), "outputs": [{"output": o.output, "counts": [list(r) for r in o.counts]} for o in OUTPUTS]}
    parsed = parse_telemetry(json.dumps(data).encode())
    assert parsed.outputs == OUTPUTS
    assert parse_telemetry(parsed.to_payload()) == parsed
    old = {k: v for k, v in window().items() if k != "outputs"}  # an agent from before per-output summaries
    assert parse_telemetry(json.dumps(old).encode()).outputs == ()


@pytest.mark.parametrize(
    ("outputs", "reason", "fragment"),
    [
        ({"price": [[1, 2]]}, "bad_field", "outputs must be a list"),
        (None, "bad_field", "outputs must be a list"),
        (["price"], "bad_field", "outputs[0] must be an object whose 'output' is a string"),
        ([{"counts": [[1, 2]]}], "bad_field", "outputs[0] must be an object whose 'output'"),
        ([{"output": 7, "counts": [[1, 2]]}], "bad_field", "'output' is a string of 1 to 128"),
        ([{"output": "", "counts": [[1, 2]]}], "bad_field", "'output' is a string of 1 to 128"),
        ([{"output": "p" * 129, "counts": [[1, 2]]}], "bad_field", "1 to 128 characters"),
        ([{"output": "a\0b", "counts": [[1, 2]]}], "bad_field", "without NUL"),
        ([{"output": "p", "counts": [[1, 2]]}, {"output": "p", "counts": [[1, 2]]}], "bad_field",
         "outputs[1]: output 'p' is summarised twice"),
        ([{"output": "p"}], "bad_field", "outputs[0].counts must be a non-empty list of rows"),
        ([{"output": "p", "counts": []}], "bad_field", "outputs[0].counts must be a non-empty list of rows"),
        ([{"output": "p", "counts": [1, 2]}], "bad_field", "outputs[0].counts[0] must be a list of counts"),
        ([{"output": "p", "counts": [[1, 2, 0], [1, 2]]}], "bad_field", "outputs[0].counts rows differ in length"),
        ([{"output": "p", "counts": [[5]]}], "bad_field", "outputs[0].counts[0] must hold 2 to 1026 counts"),
        ([{"output": "p", "counts": [[0] * (MAX_ROW_LENGTH + 1)]}], "bad_field", "got 1027"),
        ([{"output": "p", "counts": [[1, 2]] * (MAX_OUTPUT_ROWS + 1)}], "bad_field", "257 rows, more than 256"),
        ([{"output": f"o{i}", "counts": [[1, 2]]} for i in range(MAX_OUTPUTS + 1)], "bad_field",
         "65 entries, more than 64"),
        ([{"output": "p", "counts": [[1, -1]]}], "bad_field", "outputs[0].counts[0] must hold non-negative integers"),
        ([{"output": "p", "counts": [[1, 2.0]]}], "bad_field", "got 2.0"),
        ([{"output": "p", "counts": [[1, False]]}], "bad_field", "got False"),
        ([{"output": "p", "counts": [[1, 2**31]]}], "number_out_of_range", "outputs[0].counts[0] holds 2147483648"),
    ],
)
def test_bad_outputs_each_get_their_reason(outputs, reason, fragment):
    assert fragment in refused(with_outputs(outputs), reason)


def test_a_hostile_output_name_is_shown_cut_short():
    name = "x" * 100
    message = refused(with_outputs([{"output": name, "counts": [[1, 2]]}, {"output": name, "counts": [[1, 2]]}]),
                      "bad_field")
    assert name not in message and "..." in message
