"""The one definition of "numeric error" that export, compression and compile steps record.

It lives in core/task_quality.py (the device's bench reports it too, and edge_runtime may not import
compilers); this module keeps the name the compile side imports."""

from __future__ import annotations

from edgefleet.core.task_quality import REL_FLOOR, max_errors

__all__ = ["REL_FLOOR", "max_errors"]
