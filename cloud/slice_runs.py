"""The accuracy monitor's memory of the devices whose slices have no earlier accuracy yet, so that a pass
reads only their rows that are new since the last, not all their older rows again (cloud/performance_
monitor.py, cloud/slice_alerts.py).

A slice without a per-slice accuracy in its bundle is judged against its own earlier accuracy: its first
`min_samples` labels in the scope and model version, from the windows that ended by the start of the
lookback (`before`), of the scope's oldest BASELINE_ROWS windows (slice_alerts.earlier_accuracies, the
"full look-up"). A device that has not sent that many labels yet (a new device, a slice that began to be
labelled lately) is not found, and was looked up in full again on every pass until it was. Here, per
device scope (device, fleet, model name, version) that a full look-up left with a slice not found, a
`Run` keeps what that look-up read, as the pass's own rows go on from there:

- `slices`: per slice (`_other` never), the (end, row id, labels) of its labelled windows that ended by
  `before`, in (end, row id) order, up to the one whose labels reach min_samples (performance_baselines.
  prefix: later ones can never count);
- `rows` and `last`: how many windows ended by `before` (labelled or not: the bound counts every window),
  and the (end, row id) of the last in that order;
- `pending`: the pass's own windows of the scope, ended in (before, now], with row ids up to `top`, the
  highest row id when the pass began (every row up to it is committed: row ids follow commit order, one
  ingest transaction at a time, cloud/ingest_store.py).

The next pass (its `before'` in [before, now]) moves the pending windows that ended by `before'` into
the run and reads the rows with an id above `top` that ended by `before'` (late windows: one indexed
range of the rows stored since, `late_rows`), of all the runs' devices at once; so the run holds every
window with an id up to the new top that ended by `before'`, as a full look-up would read it. Its slice's
earlier accuracy is known the pass its labels reach min_samples, with the full look-up's value (the same
labels, integer confusion cells). Once a run has BASELINE_ROWS windows, only a late window sorting before
its last can change it; one that does, a run that would go past the bound, a changed min_samples, a
`before'` outside [before, now] (a lookback changed, a pass later than a lookback) drop the run, and the
next wanted look-up is a full one again. A run goes once all of its device's judged slices have their
earlier accuracy (kept by the monitor, fixed), or a lookback after the device last needed one.

Only devices: a fleet's look-up is one scope a fleet (and with shard workers it is read from the shards'
runs, cloud/performance_baselines.py). A device whose rows are under two fleets is looked up by device id
(slice_alerts) but has a run per fleet: its late windows are matched by device id, model and version.

Recovery: nothing here is stored. A restarted worker, or one that takes a shard over, has no run for its
devices: its first pass looks them up in full, as before, and goes on from there.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgefleet.cloud import slice_alerts
from edgefleet.cloud.db import TelemetryRecord
from edgefleet.cloud.performance_baselines import prefix
from edgefleet.cloud.slice_alerts import Read, baseline_of, labelled
from edgefleet.core.telemetry import TelemetryError, TelemetryWindow, parse_telemetry

Row = tuple[float, int, TelemetryWindow | None]  # a pass's row of a scope: (end, row id, window; None: unparsable)
Pending = tuple[float, int, tuple]  # (end, row id, labelled(window))


@dataclass(frozen=True)
class Seen:
    """A device scope of this pass: the start of its lookback, its min_samples and its rows."""

    before: float
    min_samples: int
    rows: list[Row]


@dataclass
class Run:
    """One device scope's earlier windows as read so far (module docstring)."""

    min_samples: int
    before: float
    now: float
    top: int
    rows: int
    last: tuple[float, int]
    slices: dict[str, list]
    pending: list[Pending]
    wanted_at: float

    def pend(self, seen: Seen, now: float, top: int) -> None:
        self.before, self.now, self.top = seen.before, now, top
        self.pending = [(end, row_id, labelled(window)) for end, row_id, window in seen.rows if row_id <= top]

    def take(self, fresh: list[Pending]) -> bool:
        """Adds windows that ended by the new `before` (not read before); False when the run is void."""
        if self.rows >= slice_alerts.BASELINE_ROWS:
            return all((end, row_id) > self.last for end, row_id, _ in fresh)  # after the bound: never counted
        self.rows += len(fresh)
        if self.rows > slice_alerts.BASELINE_ROWS:
            return False  # which windows are the oldest BASELINE_ROWS is for a full look-up to say
        changed = set()
        for end, row_id, parts in fresh:
            self.last = max(self.last, (end, row_id))
            for part, labels in parts:
                self.slices.setdefault(part, []).append((end, row_id, labels))
                changed.add(part)
        for part in changed:
            self.slices[part] = prefix(self.slices[part], self.min_samples)[0]
        return True

    def baseline(self, part: str) -> tuple[float, str] | None:
        entries = self.slices.get(part, [])
        return baseline_of([labels for _, _, labels in entries], entries[-1][0] if entries else 0.0,
                           self.min_samples)


class EarlierRuns:
    """The runs of one monitor worker (module docstring); `look_up` is slice_alerts.earlier_accuracies for
    a pass, through the runs."""

    def __init__(self) -> None:
        self.runs: dict[tuple, Run] = {}

    def look_up(self, session: Session, wanted: Mapping[tuple, tuple[set[str], float, int]],
                seen: Mapping[tuple, Seen], now: float, top: int) -> dict[tuple, tuple[float, str]]:
        """The earlier accuracies `wanted` (as earlier_accuracies'), of device scopes from their runs where
        they have one; `seen`: every device scope of this pass, whose runs go on; `top`: the highest row id
        when the pass began (its rows were read up to it)."""
        self._go_on(session, seen, now, top)
        found, rest = {}, {}
        for key, (parts, before, min_samples) in wanted.items():
            run = self.runs.get(key)
            if run is None:
                rest[key] = (parts, before, min_samples)
                continue
            run.wanted_at = now
            answers = {part: run.baseline(part) for part in parts}
            found.update({(key, part): answer for part, answer in answers.items() if answer is not None})
            if None not in answers.values():
                del self.runs[key]  # every judged slice has its accuracy now, kept by the monitor
        if rest:
            reads: dict[tuple, Read] = {}
            found.update(slice_alerts.earlier_accuracies(session, rest, top=top, reads=reads))
            for key, read in reads.items():
                if key[0] == "device" and key in seen:
                    run = Run(rest[key][2], 0.0, 0.0, 0, read.rows, read.last, read.slices, [], now)
                    run.pend(seen[key], now, top)
                    self.runs[key] = run
        return found

    def _go_on(self, session: Session, seen: Mapping[tuple, Seen], now: float, top: int) -> None:
        """Drops the runs that are void or no longer needed, and moves the others on to this pass."""
        for key, run in list(self.runs.items()):
            lookback = run.now - run.before
            if now - run.wanted_at > lookback or (key in seen and not (
                    seen[key].min_samples == run.min_samples and run.before <= seen[key].before <= run.now)):
                del self.runs[key]
        going = {key: run for key, run in self.runs.items() if key in seen}
        late = late_rows(session, going, seen, top)
        for key, run in going.items():
            fresh = [p for p in run.pending if p[0] <= seen[key].before] + late.get(key, [])
            if run.take(fresh):
                run.pend(seen[key], now, top)
            else:
                del self.runs[key]


def late_rows(session: Session, runs: Mapping[tuple, Run], seen: Mapping[tuple, Seen], top: int
              ) -> dict[tuple, list[Pending]]:
    """The rows of the runs' devices stored since their run's `top` (up to this pass's) that ended by the
    start of this pass's lookback, by scope: one query over the rows stored since the oldest run's top."""
    if not runs:
        return {}
    low = min(run.top for run in runs.values())
    if low >= top:
        return {}
    by_owner: dict[tuple, list[tuple]] = defaultdict(list)
    for key in runs:
        by_owner[(key[1], key[3], key[4])].append(key)
    query = select(TelemetryRecord.device_id, TelemetryRecord.model_name, TelemetryRecord.model_version,
                   TelemetryRecord.id, TelemetryRecord.window_end, TelemetryRecord.payload).where(
        TelemetryRecord.id > low, TelemetryRecord.id <= top,
        TelemetryRecord.window_end <= max(seen[key].before for key in runs))
    found: dict[tuple, list[Pending]] = defaultdict(list)
    for device, name, version, row_id, end, payload in session.execute(query):
        for key in by_owner.get((device, name, version), ()):
            if row_id > runs[key].top and end <= seen[key].before:
                found[key].append((end, row_id, labelled(parsed(payload))))
    return found


def parsed(payload: str) -> TelemetryWindow | None:
    try:
        return parse_telemetry(payload, max_bytes=len(payload))
    except TelemetryError:
        return None  # counted among the windows, as the full look-up counts it; the drift monitor logs it

