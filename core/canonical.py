"""Canonical JSON: the exact bytes that get hashed and signed, identical on every machine."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone

from edgefleet.core.errors import VerificationError


def canonical_bytes(obj: object) -> bytes:
    """Sorted keys, no whitespace, UTF-8, no NaN/Infinity (which JSON cannot carry portably).

    A string that is not valid Unicode (a lone surrogate, which JSON's `\\ud800` escape can carry) has no
    UTF-8 form: VerificationError("not_unicode"), so hostile input cannot end in a UnicodeEncodeError."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    try:
        return text.encode()
    except UnicodeEncodeError as err:
        raise VerificationError("not_unicode", f"a JSON document holds a string that is not valid Unicode (a lone "
                                               f"surrogate {text[err.start]!r}); it has no canonical form") from err


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def format_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
