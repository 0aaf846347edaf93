"""The one place that reads environment variables."""

from __future__ import annotations

import os
from pathlib import Path

TRUST_ENV = "EDGEFLEET_TRUST"  # trusted public keys: files or directories, separated by os.pathsep
DEBUG_ENV = "EDGEFLEET_DEBUG"  # "1": the CLI shows tracebacks of internal errors
CLOUD_ENV = "EDGEFLEET_CLOUD"  # the cloud API's base URL, for the CLI's fleet commands
TOKEN_ENV = "EDGEFLEET_TOKEN"  # an admin API token for it


def trusted_key_paths() -> list[Path]:
    value = os.environ.get(TRUST_ENV, "")
    return [Path(p) for p in value.split(os.pathsep) if p]


def debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def cloud_url() -> str | None:
    return os.environ.get(CLOUD_ENV) or None


def cloud_token() -> str | None:
    return os.environ.get(TOKEN_ENV) or None
