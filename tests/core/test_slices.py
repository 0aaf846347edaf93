"""The `slices` of a telemetry window: a round trip, a window without them (an older agent), and one precise
refusal per kind of bad or hostile slices field, fed as a device's payload."""

from __future__ import annotations

import json

import pytest

from edgefleet.core.labels import LabelCounts
from edgefleet.core.slices import MAX_SLICE_CELLS, MAX_SLICES, OTHER, SliceCounts, check_name
from edgefleet.core.telemetry import parse_telemetry
from tests.core.test_telemetry import refused, window


def test_slices_round_trip_and_an_older_window_has_none():
    slices = [{"slice": "cam-a", "samples": 4, "confidence": [0, 1, 3]},
              {"slice": OTHER, "samples": 2, "confidence": [2, 0, 0],
               "labels": {"count": 3, "confusion": [[1, 1, 2], [1, 0, 1]]}}]
    data = window(slices=slices)
    parsed = parse_telemetry(json.dumps(data).encode())
    assert parsed.slices == (SliceCounts("cam-a", 4, (0, 1, 3)),
                             SliceCounts(OTHER, 2, (2, 0, 0), LabelCounts(3, confusion=((1, 1, 2), (1, 0, 1)))))
    assert parsed.to_dict() == data
    assert parse_telemetry(json.dumps(window()).encode()).slices == ()
    assert "slices" not in parse_telemetry(json.dumps(window()).encode()).to_dict()  # what an older cloud gets


def test_names_follow_one_rule():
    assert [check_name(v) for v in ("cam-7", "site.a:1", "A" * 64)] == ["cam-7", "site.a:1", "A" * 64]
    assert [check_name(v) for v in ("", "a" * 65, "_x", "a b", "a/b", "caf\u00e9", 7, None)] == [None] * 8


def entry(**changes) -> dict:
    return {"slice": "cam-a", "samples": 1, "confidence": [1, 0, 0]} | changes


@pytest.mark.parametrize(("slices", "reason", "fragment"), [
    ({"cam-a": 1}, "bad_field", f"slices must be a list of at most {MAX_SLICES + 1}"),
    ([entry(slice=f"s{i}") for i in range(MAX_SLICES + 2)], "bad_field", "at most 33 entries"),
    ([entry(slice="a/b")], "bad_field", "slices[0].slice must be 1 to 64 letters"),
    ([entry(slice="_ours")], "bad_field", "slices[0].slice must be"),
    ([entry(), entry()], "bad_field", "slices[1]: slice 'cam-a' is given twice"),
    ([entry(samples=-1)], "number_out_of_range", "slices[0].samples must be an integer"),
    ([entry(samples=True)], "bad_field", "slices[0].samples must be an integer"),
    ([entry(confidence=[1.5])], "bad_field", "slices[0].confidence must be a list"),
    ([entry(confidence=[0] * 1027)], "bad_field", "slices[0].confidence must be a list of at most 1026"),
    ([entry(extra=1)], "bad_field", "slices[0] must be an object with slice, samples"),
    ([entry(labels={"count": 2, "confusion": [[0, 0, 1]]})], "bad_field", "adds up to 1, not labels.count (2)"),
    ([entry(labels={"count": MAX_SLICE_CELLS + 1, "confusion": [[i, 0, 1] for i in range(MAX_SLICE_CELLS + 1)]})],
     "bad_field", f"slices[0].labels.confusion holds {MAX_SLICE_CELLS + 1} cells, more than {MAX_SLICE_CELLS}"),
])
def test_bad_slices_are_refused_with_their_reason(slices, reason, fragment):
    assert fragment in refused(window(slices=slices), reason)
