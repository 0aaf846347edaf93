"""How every benchmark ends: its report, with the machine it ran on, as JSON on stdout (and in a file)."""

from __future__ import annotations

import json
from pathlib import Path

from edgefleet.edge_runtime.machine import describe_machine


def emit(report: dict, out: Path | None = None) -> None:
    text = json.dumps({**report, "machine": describe_machine()}, indent=2)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
