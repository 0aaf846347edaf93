"""Canonical JSON: the exact bytes that get hashed and signed, identical on every machine."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone


def canonical_bytes(obj: object) -> bytes:
    """Sorted keys, no whitespace, UTF-8, no NaN/Infinity (which JSON cannot carry portably)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def format_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
