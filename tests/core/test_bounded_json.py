"""core/bounded_json: every refusal reason, and the edges around each limit (strings with brackets, int64,
NaN/Infinity/1e999). Speed is the benchmarks' business, not tested here."""

from __future__ import annotations

import json

import pytest

from edgefleet.core import bounded_json
from edgefleet.core.bounded_json import INT64_MAX, INT64_MIN, JsonLimitError, loads, may_leave_range, nesting_depth
from edgefleet.core.errors import EdgefleetError


def refused(data: bytes | str, reason: str, **limits) -> str:
    limits.setdefault("max_bytes", 10_000_000)
    with pytest.raises(JsonLimitError) as caught:
        loads(data, what="test document", **limits)
    assert caught.value.reason == reason, str(caught.value)
    assert "test document" in str(caught.value)
    return str(caught.value)


def test_a_plain_document_round_trips_from_bytes_and_str():
    document = {"a": [1, 2.5, -3, None, True, "x"], "b": {"c": "d"}}
    text = json.dumps(document)
    assert loads(text.encode(), max_bytes=1000) == document
    assert loads(text, max_bytes=1000) == document
    assert loads(bytearray(text.encode()), max_bytes=1000) == document


def test_too_large_is_checked_before_anything_else():
    assert "of 11 bytes exceeds the limit of 10 bytes" in refused(b'"123456789"', "too_large", max_bytes=10)
    assert loads(b'"12345678"', max_bytes=10) == "12345678"  # exactly at the limit
    refused(b"\xff" * 11, "too_large", max_bytes=10)  # not even decoded
    refused(b"[" * 100_000, "too_large", max_bytes=1000)


def test_not_utf8():
    assert "byte 7" in refused(b'{"a": "\xff"}', "not_utf8")
    refused(b'"\xc3"', "not_utf8")  # a truncated two-byte sequence


@pytest.mark.parametrize("opening", ["[", '{"k":'])
def test_depth_limit_is_exact_for_arrays_and_objects(opening):
    closing = "]" if opening == "[" else "}"
    at_limit = opening * 32 + "1" + closing * 32
    assert loads(at_limit, max_bytes=10_000) is not None
    assert "33 deep; the limit is 32" in refused(opening * 33 + "1" + closing * 33, "too_deep")
    assert loads(opening * 3 + "1" + closing * 3, max_bytes=100, max_depth=3) is not None
    refused(opening * 4 + "1" + closing * 4, "too_deep", max_depth=3)


def test_nesting_thousands_deep_is_refused_without_recursion():
    refused(b"[" * 50_000 + b"]" * 50_000, "too_deep")
    refused(b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "too_deep")
    refused(b"[" * 50_000, "too_deep")  # unbalanced: still a depth, not a crash


@pytest.mark.parametrize("text", [
    '{"a": "[[[[[[[[[[{{{{{{{{{{"}',
    '{"[[[[[[": "]]]]]]]]]]"}',
    '["\\"[[[[[[[[[[", "\\\\", "{{{{{"]',  # an escaped quote does not end the string
    '{"a": "\\u005b\\u005b\\u005b"}',
])
def test_brackets_inside_strings_are_not_nesting(text):
    assert loads(text, max_bytes=1000, max_depth=2) == json.loads(text)


def test_nesting_depth_scan():
    assert nesting_depth(b"1") == 0
    assert nesting_depth(b'[1, [2, {"a": [3]}]]') == 4
    assert nesting_depth(b'["]]]]", [["[[["]]]') == 3


@pytest.mark.parametrize("text", ["{oops", "[1, 2", '{"a": 1} x', "", "nul", "[1,]", "'single'"])
def test_not_json(text):
    refused(text, "not_json")


@pytest.mark.parametrize("value", [INT64_MAX, INT64_MIN, 0, -1, 10**18, -(10**18)])
def test_int64_edges_are_accepted(value):
    assert loads(json.dumps({"n": value}), max_bytes=1000) == {"n": value}


@pytest.mark.parametrize("literal", [str(INT64_MAX + 1), str(INT64_MIN - 1), "9" * 20, "-" + "9" * 20, "1" * 400])
def test_integers_outside_int64_are_refused(literal):
    refused('{"n": ' + literal + "}", "number_out_of_range")


def test_a_5000_digit_integer_is_refused_by_range_not_by_python():
    """Python refuses to convert more than 4,300 digits with a ValueError; the caller sees our reason."""
    message = refused('{"n": ' + "7" * 5000 + "}", "number_out_of_range")
    assert "5000-digit integer" in message
    refused("[" + "1" * 100_000 + "]", "number_out_of_range")


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1E400", "1e+309",
                                     "1234567890.0e300"])
def test_nan_infinity_and_overflowing_floats_are_refused(literal):
    refused('{"x": [1.5, ' + literal + "]}", "not_finite")


@pytest.mark.parametrize(("literal", "value"), [("1e308", 1e308), ("-1.7976931348623157e308", -1.7976931348623157e308),
                                                 ("1e-999", 0.0), ("12345678901234567890.5", 12345678901234567890.5),
                                                 ("5e-324", 5e-324)])
def test_finite_floats_at_the_edges_are_accepted(literal, value):
    assert loads('{"x": ' + literal + "}", max_bytes=1000) == {"x": value}


def test_long_digit_runs_inside_strings_are_only_strings():
    text = '{"id": "123456789012345678901234567890", "e": "1e999", "n": "NaN"}'
    assert may_leave_range(text.encode())  # the cheap scan is suspicious ...
    assert loads(text, max_bytes=1000) == json.loads(text)  # ... the per-number parse is not


def test_the_error_is_an_edgefleet_error_with_a_reason():
    with pytest.raises(EdgefleetError):
        bounded_json.loads(b"[", max_bytes=10)
