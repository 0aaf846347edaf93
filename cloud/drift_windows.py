"""The telemetry windows the drift monitor judges, each stored payload decoded once (cloud/drift_monitor.py).

A run reads its rows without payloads (`WHO`: who sent which window when) and asks `WindowReader.read` for
their windows: the windows the last run decoded are taken from memory (cloud/decoded_rows.py), and only
the rows not seen before have their payload read and decoded, checked against the model's reference
profile. A kept window holds int64 histograms: 1.1 KB for 2 features of 3 bins, 9 KB for 64 of 16
(tracemalloc). Refused rows are not kept: they are refused (and logged once) again.

Also the scopes those windows are grouped into (`Scope`, `Scopes`) and what one run of a worker judges
(`Share`: its device shards, the fleet scopes or not, from rows or from the shards' partial sums).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sqlalchemy.orm import Session

from edgefleet.cloud.db import TelemetryRecord
from edgefleet.cloud.decoded_rows import DecodedRows
from edgefleet.cloud.drift import CountsMismatch, WindowCounts, check_against_profile
from edgefleet.cloud.leases import FLEETS, ShardLeases, shard_of
from edgefleet.core.telemetry import TelemetryError, parse_telemetry

LogOnce = Callable[..., None]  # log_once(message, key=None): the monitor's de-duplicated warning


@dataclass(frozen=True)
class Window:
    counts: WindowCounts
    start: float
    end: float
    row_id: int = 0
    at: float = 0.0  # the row's window end: the CUSUM's event order (cloud/drift_cusum_batch.py)
    windows: int = 1  # how many telemetry windows it adds up (a fleet's shard sums: cloud/drift_fleet_partials.py)


class WindowReader(DecodedRows[Window]):
    """The decoded windows of the last run and of the run in progress (between start_run and finish_run)."""

    def __init__(self, log_once: LogOnce) -> None:
        super().__init__()
        self._log_once = log_once

    def read(self, session: Session, rows: list, profiles: Mapping[tuple[str, int], Mapping | None]
             ) -> dict[int, Window]:
        """The decoded window of each row (`WHO` columns) that has one, by row id."""
        return super().read(session, rows, lambda row: self.decode(row, profiles[(row.model_name,
                                                                                  row.model_version)]))

    def window_of(self, row: TelemetryRecord, profile: Mapping) -> Window | None:
        """The CUSUM store's reader (its one-scope path reads a scope's rows itself): the window this run
        read for the row when there is one, else the row's payload decoded."""
        return self.kept(row) or self.decode(row, profile)

    def decode(self, row: TelemetryRecord, profile: Mapping) -> Window | None:
        """The row's payload parsed and checked against the reference profile; None (logged once) when refused."""
        where = f"device {row.device_id} seq {row.seq} ({row.model_name} v{row.model_version})"
        try:
            parsed = parse_telemetry(row.payload, max_bytes=len(row.payload))  # the ingest checked the size
            counts = WindowCounts.from_telemetry(parsed)
            check_against_profile(counts, profile)
        except TelemetryError as err:
            self._log_once(f"{where}: stored payload refused ({err.reason}): {err}")
            return None
        except CountsMismatch as err:
            self._log_once(f"{where}: window refused, counts do not fit the reference profile: {err}",
                           key=f"{row.device_id}/{row.model_name}/{row.model_version}: {err}")
            return None
        except (KeyError, IndexError, TypeError, ValueError) as err:  # a malformed profile, not the window
            self._log_once(f"{where}: cannot compare with the reference profile ({type(err).__name__}: {err})",
                           key=f"profile {row.model_name}/{row.model_version}: {err!r}")
            return None
        return Window(counts, parsed.start, parsed.end, row.id, row.window_end)


@dataclass(frozen=True)
class Scope:
    """A device or fleet with one model version, judged from its windows (late: of the period ending at
    `period_end`)."""

    scope: str  # "device" or "fleet"
    scope_id: str
    fleet: str
    model_name: str
    model_version: int
    period_end: float | None = None  # a late evaluation of the period ((p - 1) L, p L] ending here


Scopes = dict[Scope, tuple[Mapping, list[Window]]]


@dataclass(frozen=True)
class Share:
    """What one run of this worker evaluates: the device shards it holds (None: all), the fleet scopes or
    not, the SQL filter that keeps only its devices' rows (None: every row is needed), the one for the new
    rows the late periods are found in (and their periods' rows read with), and whether it writes its
    shards' fleet sums (`partials`) and makes the fleet scopes from every shard's sums (`from_partials`)
    instead of from the rows."""

    shards: set[int] | None
    fleets: bool
    where: object | None
    late_where: object | None = None
    partials: bool = False
    from_partials: bool = False

    @classmethod
    def of(cls, shards: ShardLeases | None, fleet_partials: bool | None, device_column) -> Share:  # noqa: ANN001
        """What the worker holding `shards` judges this run (cloud/drift_monitor.py's `fleet_partials`)."""
        if shards is None:
            return cls(None, True, None)
        held = shards.held_shards()
        fleets = shards.holds(FLEETS)
        mine = shards.device_filter(device_column, held)
        everything = len(held) == shards.shards
        # a worker that reads every row for the fleets itself writes no sums (they would cost it what the
        # fleets' sums cost again); the other workers' fleet holder waits a pass for them after a hand-over
        partials = fleet_partials or (fleet_partials is None and not shards.everything
                                      and not (fleets and everything))
        from_partials = fleets and (fleet_partials or (partials and not everything))
        rows_for_fleets = fleets and not from_partials  # the fleet holder reads every device's rows
        return cls(held, fleets, None if rows_for_fleets else mine, None if rows_for_fleets else mine, partials,
                   bool(from_partials))

    def keep(self, scopes: Scopes) -> Scopes:
        return {scope: item for scope, item in scopes.items()
                if (self.fleets if scope.scope == "fleet" else self.shards is None or shard_of(scope.scope_id)
                    in self.shards)}
