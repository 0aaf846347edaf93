"""The `labels` of a telemetry window: a round trip, windows added up, and one precise refusal per kind of
bad or hostile labels field, fed as a device's payload."""

from __future__ import annotations

import json

import pytest

from edgefleet.core.labels import ERROR_STEPS, MAX_CONFUSION_CELLS, LabelCounts, merge_labels
from edgefleet.core.telemetry import parse_telemetry
from tests.core.test_telemetry import refused, window


def test_labels_round_trip_and_a_window_without_them_has_none():
    confusion = window(labels={"count": 40, "confusion": [[3, 3, 37], [3, 5, 3]]})
    parsed = parse_telemetry(json.dumps(confusion).encode())
    assert parsed.labels == LabelCounts(40, confusion=((3, 3, 37), (3, 5, 3))) and parsed.labels.correct == 37
    assert parsed.to_dict() == confusion
    errors = [0] * (len(ERROR_STEPS) + 2)
    errors[5] = 2
    regression = window(labels={"count": 2, "errors": errors, "abs_error_sum": 0.5, "squared_error_sum": 0.13})
    assert parse_telemetry(json.dumps(regression).encode()).to_dict() == regression
    assert parse_telemetry(json.dumps(window()).encode()).labels is None
    assert parse_telemetry(json.dumps(window(labels=None)).encode()).labels is None


def test_windows_add_up_cell_by_cell():
    merged = merge_labels([LabelCounts(3, confusion=((1, 1, 2), (1, 2, 1))), None,
                           LabelCounts(2, confusion=((1, 1, 1), (0, 0, 1)))])
    assert merged == LabelCounts(5, confusion=((0, 0, 1), (1, 1, 3), (1, 2, 1)))
    assert merge_labels([None, LabelCounts(0)]) is None


@pytest.mark.parametrize(("labels", "reason", "fragment"), [
    ([1, 2], "bad_field", "labels must be an object"),
    ({"count": 1}, "bad_field", "'confusion' (a classifier) or 'errors'"),
    ({"count": -1, "confusion": []}, "number_out_of_range", "labels.count: -1 is outside"),
    ({"count": 1.0, "confusion": [[0, 0, 1]]}, "bad_field", "labels.count must hold integers"),
    ({"count": 2, "confusion": [[0, 0, 1]]}, "bad_field", "adds up to 1, not labels.count (2)"),
    ({"count": 2, "confusion": [[0, 0, 1], [0, 0, 1]]}, "bad_field", "cell (0, 0) is given twice"),
    ({"count": 1, "confusion": [[0, 1]]}, "bad_field", "must be [true class, predicted class, count]"),
    ({"count": 1, "confusion": [[0, 2_000_000, 1]]}, "number_out_of_range", "outside 0..1000000"),
    ({"count": 1, "confusion": [[0, 0, 2**31]]}, "number_out_of_range", "outside 0..2147483647"),
    ({"count": 5000, "confusion": [[i, 0, 1] for i in range(MAX_CONFUSION_CELLS + 1)]}, "bad_field",
     "4097 cells, more than 4096"),
    ({"count": 1, "errors": [1]}, "bad_field", "labels.errors must be a list of 13 counts"),
    ({"count": 1, "errors": [1] + [0] * 12, "abs_error_sum": -1, "squared_error_sum": 0}, "bad_field",
     "labels.abs_error_sum must be a number from 0"),
    ({"count": 1, "errors": [1] + [0] * 12, "abs_error_sum": 1}, "bad_field", "labels.squared_error_sum"),
    ({"count": 2, "errors": [1] + [0] * 12, "abs_error_sum": 1, "squared_error_sum": 1}, "bad_field",
     "labels.errors add up to 1, not labels.count (2)"),
])
def test_bad_labels_are_refused_with_their_reason(labels, reason, fragment):
    assert fragment in refused(window(labels=labels), reason)
