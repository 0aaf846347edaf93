"""The one place that reads environment variables."""

from __future__ import annotations

import os
from pathlib import Path

TRUST_ENV = "EDGEFLEET_TRUST"  # trusted public keys: files or directories, separated by os.pathsep
DEBUG_ENV = "EDGEFLEET_DEBUG"  # "1": the CLI shows tracebacks of internal errors


def trusted_key_paths() -> list[Path]:
    value = os.environ.get(TRUST_ENV, "")
    return [Path(p) for p in value.split(os.pathsep) if p]


def debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")
