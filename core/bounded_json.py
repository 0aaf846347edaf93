"""JSON from outside, parsed with limits: size, nesting depth and number range are checked before any
object is built, so a hostile payload costs bounded work and fails with one reason code.

Every payload that crosses a trust boundary (MQTT telemetry, birth, death and status messages, bundle
manifests and signatures, HTTP bodies) goes through `loads`. It raises `JsonLimitError(reason, message)`:

| reason | what came |
|---|---|
| `too_large` | more bytes than `max_bytes` (checked first, before decoding) |
| `not_utf8` | bytes that are not UTF-8 |
| `too_deep` | arrays/objects nested deeper than `max_depth` |
| `not_json` | not JSON at all (or trailing garbage) |
| `number_out_of_range` | an integer outside the signed 64-bit range (what every database column holds) |
| `not_finite` | `NaN`, `Infinity`, or a number literal too large for a double (`1e999`) |

Speed matters (the ingest parses every telemetry window): the depth and the suspicious-number checks are
regular-expression and numpy scans over the raw text, in C; only a payload that has a long digit run or
a three-digit exponent is parsed again with per-number hooks in Python.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np

from edgefleet.core.errors import EdgefleetError

DEFAULT_MAX_DEPTH = 32
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# The largest integer the cloud stores: SQL INTEGER (PostgreSQL's int4) holds versions, seqs and counts.
SQL_INTEGER_MAX = 2**31 - 1

# A JSON string literal (escapes included); removed before brackets are counted, so "[[[" in a string is
# not nesting.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_DEPTH_STEP = np.zeros(256, dtype=np.int8)
_DEPTH_STEP[[ord("["), ord("{")]] = 1
_DEPTH_STEP[[ord("]"), ord("}")]] = -1
# may_leave_range's pre-filter: digits -> 0, e/E -> e, every byte the exact scan takes for a sign (+, -, and
# the \v and \r that equal them in lower case) -> +, the rest -> space.
_NUMBER_SHAPE = bytes(ord("0") if b in b"0123456789" else ord("e") if b in b"eE"
                      else ord("+") if b | 0x20 in b"+-" else ord(" ") for b in range(256))


class JsonLimitError(EdgefleetError):
    """A JSON document refused before or while parsing. `reason` is a stable code (see the module)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def loads(data: bytes | bytearray | memoryview | str, *, max_bytes: int, max_depth: int = DEFAULT_MAX_DEPTH,
          what: str = "payload") -> Any:
    """Parses `data` as JSON within the limits, or raises JsonLimitError naming `what` and the limit."""
    size = len(data)
    if size > max_bytes:
        raise JsonLimitError("too_large", f"{what} of {size} bytes exceeds the limit of {max_bytes} bytes")
    if isinstance(data, str):
        text, raw = data, data.encode("utf-8", "surrogatepass")
    else:
        raw = bytes(data)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise JsonLimitError("not_utf8", f"{what} is not UTF-8 text (byte {err.start})") from err
    # No deeper than its number of opening brackets: only a document with more than max_depth of them
    # (few telemetry windows) pays for the exact scan.
    depth = nesting_depth(raw) if raw.count(b"[") + raw.count(b"{") > max_depth else 0
    if depth > max_depth:
        raise JsonLimitError("too_deep", f"{what} nests arrays/objects {depth} deep; the limit is {max_depth}")
    hooks = _checked_numbers(what) if may_leave_range(raw) else {"parse_constant": _no_constant(what)}
    try:
        return json.loads(text, **hooks)
    except JsonLimitError:
        raise
    except json.JSONDecodeError as err:
        raise JsonLimitError("not_json", f"{what} is not JSON: {err}") from err
    except (ValueError, RecursionError) as err:  # int() digit limit; recursion cannot happen below max_depth
        raise JsonLimitError("not_json", f"{what} is not JSON we accept: {err}") from err


def nesting_depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in the JSON text `raw` (0 for a scalar); brackets inside
    strings do not count. Unbalanced text gives some number, never an error: json.loads reports it."""
    brackets = (_STRING.sub(b"", raw) if b'"' in raw else raw).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    steps = _DEPTH_STEP[np.frombuffer(brackets, dtype=np.uint8)]
    return int(np.cumsum(steps, dtype=np.int64).max(initial=0))


def may_leave_range(raw: bytes) -> bool:
    """True if `raw` has a number literal that may leave the int64 or double range: 19 or more digits in
    a row that are not a fraction's (`0.1234...` is always in range), or an exponent of three or more
    digits (`1e308`). A cheap over-approximation (a digit run in a string counts too): such payloads are
    parsed again with per-number checks. A byte-translation pre-filter (C string search) answers False
    for most payloads before the exact scan (numpy calls cost more than the search on a 500-byte window)."""
    shape = raw.translate(_NUMBER_SHAPE)
    if b"0" * 19 not in shape and b"e000" not in shape and b"e+000" not in shape:
        return False
    codes = np.frombuffer(raw, dtype=np.uint8)
    is_digit = np.concatenate(([False], (codes - np.uint8(48)) < 10, [False]))
    edges = np.flatnonzero(is_digit[1:] != is_digit[:-1])
    starts, lengths = edges[::2], edges[1::2] - edges[::2]
    if not lengths.size:
        return False
    long_starts = starts[lengths >= 19]
    if long_starts.size and np.any((long_starts == 0) | (codes[long_starts - 1] != ord("."))):
        return True
    long_runs = starts[(lengths >= 3) & (starts >= 2)]
    before, two_before = codes[long_runs - 1] | 0x20, codes[long_runs - 2] | 0x20  # | 0x20: lower case
    sign = (before == ord("+") | 0x20) | (before == ord("-") | 0x20)
    return bool(np.any((before == ord("e")) | (sign & (two_before == ord("e")))))


def _no_constant(what: str):
    def refuse(name: str) -> Any:
        raise JsonLimitError("not_finite", f"{what} holds {name}: only finite numbers are accepted")

    return refuse


def _checked_numbers(what: str) -> dict:
    """json.loads hooks that refuse integers outside int64 and floats that overflow a double."""

    def parse_int(literal: str) -> int:
        digits = len(literal.lstrip("-"))
        if digits > 19:
            raise JsonLimitError("number_out_of_range", f"{what} holds a {digits}-digit integer; integers must "
                                                        f"fit in 64 bits")
        value = int(literal)
        if not INT64_MIN <= value <= INT64_MAX:
            raise JsonLimitError("number_out_of_range", f"{what} holds the integer {value}, outside the 64-bit "
                                                        f"range")
        return value

    def parse_float(literal: str) -> float:
        value = float(literal)
        if not math.isfinite(value):
            shown = literal if len(literal) <= 40 else literal[:20] + "..."
            raise JsonLimitError("not_finite", f"{what} holds the number {shown}, too large for a double")
        return value

    return {"parse_int": parse_int, "parse_float": parse_float, "parse_constant": _no_constant(what)}
