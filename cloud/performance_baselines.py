"""A fleet slice's earlier accuracy from per-shard records, so that the accuracy monitor's fleet holder
reads no device's rows for it (cloud/slice_alerts.py, cloud/performance_monitor.py).

A slice without a per-slice accuracy in its bundle is judged against its own earlier measured accuracy:
its first `min_samples` labels in the scope and model version, from windows that ended before the
lookback. Precisely (`prefix`): of the scope's windows of this model version that carry labels with
confusion cells for the slice, taken in (window end, row id) order, the shortest run from the first
whose label count reaches `min_samples` (the window that crosses it counted whole); the baseline is the
accuracy of their labels added up, said with their count and the last window's end. One worker reading
every row finds it with `slice_alerts.earlier_accuracy` (the oldest 2,000 windows of the fleet, each pass
until found). With shard workers, each worker keeps, per (fleet, model version, shard, slice) of the
shards it holds, that run for the shard's own windows (`record`): every window of it, with its end, row
id and the slice's labels, as the monitor's passes read the shards' rows. The fleet holder takes the
entries of the (at most 64) shards' rows that ended by the start of the lookback and cuts the same run
from them (`fleet_baseline`).

Why that is the one worker's run: let w be the window where the fleet's run reaches `min_samples`. Every
window of a shard that sorts before w is in the fleet's run, so the shard's labels before w are fewer
than `min_samples`, and the shard's own run holds all its windows up to w, w too when it is the shard's.
So the shards' runs, cut at the lookback's start and put together in order, start with the fleet's run,
and the labels (integer confusion cells) add up to the same accuracy. A window sorting before the
lookback's start but after the shard's run is left out of the shard's row; it cannot be in the fleet's
run either.

What differs from the one worker's read (tests/cloud/test_performance_partials.py checks both):
- a window no pass of its shard read is in no record: one stored more than a lookback after its end, one
  stored before this table (migration 0012) or while its shard had no worker for longer than the lookback,
  and the windows a worker holding every shard read while it wrote no partials. Such a window sorting
  before the fleet's crossing makes the two baselines differ (the one worker's holds it);
- no 2,000-window bound: a fleet whose slice's first labels come after its oldest 2,000 windows gets its
  baseline here and the calibration's reference from the rows;
- a run kept for a smaller `min_samples` than the fleet's current one is extended by the windows read
  after the change only.
Both keep a baseline once found (the monitor's memory), so windows stored later change neither.

Table `performance_slice_baselines`, keyed (fleet, model name, version, shard, slice): the run's entries
([end, row id, labels] in order, JSON), their label count and the last entry's (end, row id), so that a
pass reads the entries only of runs it may change (short of `min_samples`, or a window sorting before
their last). Written with an upsert when a run changes; never deleted (one small row per fleet, model
version, shard and slice). Slices with a per-slice accuracy in the bundle, and `_other`, are not kept.

Recovery: the rows are the state; a worker taking a shard over reads them and goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from sqlalchemy import JSON, Float, Integer, String, select, tuple_
from sqlalchemy.orm import Mapped, Session, mapped_column

from edgefleet.cloud.db import Base
from edgefleet.cloud.drift_fleet_partials import upsert
from edgefleet.cloud.performance_partials import labels_from_dict
from edgefleet.cloud.slice_alerts import baseline_of
from edgefleet.core.labels import LabelCounts
from edgefleet.core.slices import MAX_SLICE_CHARS

Entry = tuple[float, int, LabelCounts]  # (window end, row id, the slice's labels)
Key = tuple[str, str, int, int, str]  # (fleet, model name, model version, shard, slice)
KEYS = ["fleet", "model_name", "model_version", "shard", "slice"]


class SliceBaseline(Base):
    """One shard's run of a fleet slice's first labelled windows (module docstring)."""

    __tablename__ = "performance_slice_baselines"
    fleet: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    model_version: Mapped[int] = mapped_column(Integer, primary_key=True)
    shard: Mapped[int] = mapped_column(Integer, primary_key=True)
    slice: Mapped[str] = mapped_column(String(MAX_SLICE_CHARS), primary_key=True)
    labels: Mapped[int] = mapped_column(Integer)  # the entries' label count
    last_end: Mapped[float] = mapped_column(Float)
    last_id: Mapped[int] = mapped_column(Integer)
    entries: Mapped[list] = mapped_column(JSON)  # [[window end, row id, labels dict], ...] in that order
    updated_at: Mapped[float] = mapped_column(Float)


def prefix(entries: Iterable[Entry], min_samples: int) -> tuple[list[Entry], int]:
    """The run of `entries` in (end, row id) order from the first until their labels reach `min_samples`
    (all of them when they do not), each row id once; and its label count."""
    run, count, seen = [], 0, set()
    for entry in sorted(entries, key=lambda e: (e[0], e[1])):
        if count >= min_samples:
            break
        if entry[1] not in seen:
            seen.add(entry[1])
            run.append(entry)
            count += entry[2].count
    return run, count


def record(session: Session, groups: Mapping[Key, list[Entry]], min_samples_of: Callable[[str, str], int],
           now: float) -> int:
    """Adds this pass's labelled windows of its shards' slices (`groups`) to their runs; writes the runs
    that changed and returns how many."""
    if not groups:
        return 0
    table = SliceBaseline
    shards = sorted({key[3] for key in groups})
    marks = {tuple(row)[:5]: tuple(row)[5:] for row in session.execute(select(
        table.fleet, table.model_name, table.model_version, table.shard, table.slice, table.labels,
        table.last_end, table.last_id).where(table.shard.in_(shards)))}
    todo: dict[Key, list[Entry]] = {}
    for key, windows in groups.items():
        minimum = min_samples_of(key[0], key[1])
        if key in marks and marks[key][0] >= minimum:
            windows = [w for w in windows if (w[0], w[1]) < (marks[key][1], marks[key][2])]
        if windows:
            todo[key] = windows
    stored: dict[Key, list[Entry]] = {}
    keyed = [k for k in todo if k in marks]
    for start in range(0, len(keyed), 500):
        for row in session.execute(select(table.fleet, table.model_name, table.model_version, table.shard,
                                          table.slice, table.entries).where(
                tuple_(*(getattr(table, c) for c in KEYS)).in_(keyed[start:start + 500]))):
            stored[tuple(row)[:5]] = [(float(e), int(i), labels_from_dict(d)) for e, i, d in row.entries]
    rows = []
    for key, windows in sorted(todo.items(), key=lambda item: item[0]):
        before = stored.get(key, [])
        run, count = prefix(before + windows, min_samples_of(key[0], key[1]))
        if [(e, i) for e, i, _ in run] == [(e, i) for e, i, _ in before]:
            continue  # nothing new in the run
        rows.append(dict(zip(KEYS, key, strict=True)) | {
            "labels": count, "last_end": run[-1][0], "last_id": run[-1][1], "updated_at": now,
            "entries": [[end, row_id, labels.to_dict()] for end, row_id, labels in run]})
    upsert(session, table.__table__, rows, KEYS)
    return len(rows)


def fleet_entries(session: Session, fleet: str, name: str, version: int, part: str, before: float) -> list[Entry]:
    """Every shard's run entries of the fleet slice that ended at or before `before`."""
    table = SliceBaseline
    found = []
    for (entries,) in session.execute(select(table.entries).where(
            table.fleet == fleet, table.model_name == name, table.model_version == version, table.slice == part)):
        found += [(float(e), int(i), labels_from_dict(d)) for e, i, d in entries if e <= before]
    return found


def fleet_baseline(session: Session, key: tuple, part: str, before: float, min_samples: int
                   ) -> tuple[float, str] | None:
    """slice_alerts.earlier_accuracy of a fleet scope from the shards' runs: (accuracy, source) of the
    fleet run's labels, None while they are fewer than `min_samples`."""
    _, fleet, _, name, version = key
    run, _ = prefix(fleet_entries(session, fleet, name, version, part, before), min_samples)
    return baseline_of([labels for _, _, labels in run], run[-1][0] if run else 0.0, min_samples)
