"""Stored telemetry payloads decoded once, kept in memory while their rows are read: the monitors' caches.

A monitor's pass reads its rows without payloads (`WHO`: who sent which window when) and asks `read` for
what each payload decodes to. What the last pass decoded is taken from memory; only the rows not seen
before (and, after a restart or a shard take-over, every row once) have their payload read, in one query
per PAYLOADS_PER_QUERY rows, and decoded. A row's payload never changes once stored, so a kept value is the
one decoding would give again; the key holds (device, seq, window end, model) beside the id, as SQLite may
reuse the id of a deleted newest row. A value stays kept while its row is read, about lookback / interval
passes, then is dropped. Rows whose payload the decoder refuses (None) are not kept: they are decoded (and
refused) again on the next pass.

The drift monitor keeps its checked window counts this way (cloud/drift_windows.py's WindowReader), the
accuracy monitor its parsed windows (cloud/performance_monitor.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgefleet.cloud.db import TelemetryRecord

# Who and when of a telemetry row, without its payload: the monitors' rows are read this way.
WHO = (TelemetryRecord.id, TelemetryRecord.device_id, TelemetryRecord.fleet, TelemetryRecord.model_name,
       TelemetryRecord.model_version, TelemetryRecord.seq, TelemetryRecord.window_end)
PAYLOADS_PER_QUERY = 900  # ids per IN (...) when the payloads of the misses are read (SQLite's old limit)

T = TypeVar("T")


def row_key(row) -> tuple:  # noqa: ANN001 - a row of the `WHO` columns
    return (row.id, row.device_id, row.seq, row.window_end, row.model_name, row.model_version)


class DecodedRows(Generic[T]):
    """The values the last pass decoded and those of the pass in progress (between start_run and finish_run)."""

    def __init__(self) -> None:
        self._decoded: dict[tuple, T] = {}  # what the last pass read, by `row_key`
        self._decoding: dict[tuple, T] = {}  # what this pass has read so far

    def __len__(self) -> int:
        return len(self._decoded)

    def start_run(self) -> None:
        self._decoding = {}

    def finish_run(self) -> None:
        """Keeps what this pass read, and only that, for the next pass."""
        self._decoded, self._decoding = self._decoding, {}

    def forget(self) -> None:
        """Drops every kept value: the next pass decodes every payload (as after a restart)."""
        self._decoded = {}

    def kept(self, row) -> T | None:  # noqa: ANN001 - a row of the `WHO` columns
        """The value this pass or the last one decoded for the row, if any."""
        key = row_key(row)
        return self._decoding.get(key) or self._decoded.get(key)

    def read(self, session: Session, rows: list, decode: Callable[..., T | None]) -> dict[int, T]:
        """The decoded value of each row (`WHO` columns) that has one, by row id; `decode` is called with
        the rows (`WHO` and payload) not kept, once each."""
        values: dict[int, T] = {}
        misses = []
        for row in rows:
            key = row_key(row)
            value = self._decoded.get(key) or self._decoding.get(key)
            if value is None:
                misses.append(row.id)
            else:
                values[row.id] = self._decoding[key] = value
        for start in range(0, len(misses), PAYLOADS_PER_QUERY):
            chunk = misses[start:start + PAYLOADS_PER_QUERY]
            for row in session.execute(select(*WHO, TelemetryRecord.payload).where(TelemetryRecord.id.in_(chunk))):
                value = decode(row)
                if value is not None:
                    values[row.id] = self._decoding[row_key(row)] = value
        return values
