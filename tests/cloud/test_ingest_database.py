"""The ingest against its database. On a real PostgreSQL, where the columns are narrower than SQLite's,
values that fit 64 bits but not an INTEGER column are refused by reason before the insert. A database
outage (or a lock held longer than the busy timeout) is the one thing that leaves messages
unacknowledged; they are stored once the database answers again, nothing lost, nothing counted as bad."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from sqlalchemy import delete, event, func, select, text
from sqlalchemy.exc import IntegrityError

from edgefleet.cloud.db import Device, TelemetryRecord, make_engine, make_sessions
from edgefleet.cloud.ingest import Ingest
from edgefleet.cloud.ingest_store import Checked, store
from edgefleet.core.ota import Status
from edgefleet.core.topics import topic
from tests.cloud.test_ingest import counters, presence, publish, wait_for, window
from tests.cloud.test_postgres import fresh_sessions


@pytest.fixture
def publisher(mosquitto):
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pg-device", protocol=mqtt.MQTTv311)
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()
    yield client
    client.loop_stop()
    client.disconnect()


def start_ingest(sessions, mosquitto) -> Ingest:
    ingest = Ingest(sessions, mosquitto.url, flush_seconds=0.02)
    ingest.start()
    assert ingest.wait_connected(10)
    time.sleep(0.3)
    return ingest


def stored(sessions) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(TelemetryRecord))


def test_values_over_the_integer_columns_are_refused_by_reason(postgres, mosquitto, publisher):
    sessions = fresh_sessions(postgres, "ingest_columns")
    with sessions.begin() as session:
        session.add(Device(id="d1", fleet="lab", password_hash="x"))
    ingest = start_ingest(sessions, mosquitto)
    try:
        big_seq = {**window("d1", 1).to_dict(), "seq": 2**31}
        birth = {"schema": "edgefleet.birth", "v": 1, "connection": 3, "model": {"name": "m", "version": 2**40}}
        for name, payload in [
            (topic("lab", "d1", "telemetry"), window("d1", 1).to_payload()),
            (topic("lab", "d1", "telemetry"), json.dumps(big_seq).encode()),
            (topic("lab", "d1", "presence"), json.dumps(birth).encode()),
            (topic("lab", "d1", "status"), Status("lab", "d1", "c-1", "d-1", "active", seq=2**40).to_payload()),
            (topic("lab", "d1", "status"), Status("lab", "d1", "c" * 65, "d-1", "active", seq=2).to_payload()),
            (topic("lab", "d1", "telemetry"), window("d1", 2).to_payload()),
        ]:
            publish(publisher, name, payload)
        wait_for(lambda: sum(counters(sessions).values()) >= 6)
        assert counters(sessions) == {"accepted": 2, "number_out_of_range": 1, "presence_number_out_of_range": 1,
                                      "status_number_out_of_range": 1, "status_bad_field": 1}
    finally:
        ingest.stop()
        sessions.kw["bind"].dispose()


def test_a_database_outage_leaves_messages_unacknowledged_until_it_answers(postgres, mosquitto, publisher):
    sessions = fresh_sessions(postgres, "ingest_outage")
    admin = make_engine(postgres.url).execution_options(isolation_level="AUTOCOMMIT")
    with sessions.begin() as session:
        session.add(Device(id="d1", fleet="lab", password_hash="x"))
    ingest = start_ingest(sessions, mosquitto)
    try:
        for seq in range(1, 6):
            publish(publisher, topic("lab", "d1", "telemetry"), window("d1", seq).to_payload())
        wait_for(lambda: stored(sessions) == 5)
        with admin.connect() as connection:  # the database goes away
            connection.execute(text("ALTER DATABASE ingest_outage ALLOW_CONNECTIONS false"))
            connection.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                    "WHERE datname = 'ingest_outage' AND pid <> pg_backend_pid()"))
        for seq in range(6, 16):
            publish(publisher, topic("lab", "d1", "telemetry"), window("d1", seq).to_payload())
        time.sleep(1.5)  # the writer fails, keeps the batch, backs off, tries again
        assert ingest.counts["accepted"] == 5 and "store_error" not in ingest.counts
        with admin.connect() as connection:
            connection.execute(text("ALTER DATABASE ingest_outage ALLOW_CONNECTIONS true"))
        wait_for(lambda: stored(sessions) == 15, timeout=30)
        assert counters(sessions) == {"accepted": 15}
    finally:
        ingest.stop()
    ingest = start_ingest(sessions, mosquitto)  # everything was acknowledged in the end: nothing comes again
    try:
        publish(publisher, topic("lab", "d1", "telemetry"), window("d1", 16).to_payload())
        wait_for(lambda: stored(sessions) == 16)
        time.sleep(0.5)
        assert counters(sessions) == {"accepted": 16}
    finally:
        ingest.stop()
        sessions.kw["bind"].dispose()
        admin.dispose()


def test_a_lock_longer_than_the_busy_timeout_costs_no_window(tmp_path, mosquitto, publisher):
    """SQLite answers "database is locked" after its busy timeout (0.5 s here) while another writer holds
    the lock; that is the database being busy, not the windows being bad: they wait and are stored after.
    (An OperationalError is retried whole first, rather than halved down to single rows that each wait out
    the busy timeout.)"""
    engine = make_engine(f"sqlite:///{tmp_path / 'cloud.db'}")
    event.listen(engine, "connect", lambda connection, record: connection.execute("PRAGMA busy_timeout=500"))
    engine.dispose()  # new connections get the short timeout
    sessions = make_sessions(engine)
    with sessions.begin() as session:
        session.add(Device(id="d1", fleet="lab", password_hash="x"))
    ingest = start_ingest(sessions, mosquitto)
    other = make_engine(f"sqlite:///{tmp_path / 'cloud.db'}")
    try:
        with other.connect() as locker:
            locker.exec_driver_sql("BEGIN EXCLUSIVE")
            for seq in range(1, 11):
                publish(publisher, topic("lab", "d1", "telemetry"), window("d1", seq).to_payload())
            time.sleep(4)  # the writer's tries fail and back off (0.5 s, 1 s, 2 s)
            assert stored(sessions) == 0  # a reader still gets through (WAL)
            locker.exec_driver_sql("ROLLBACK")
        wait_for(lambda: stored(sessions) == 10, timeout=30)
        assert counters(sessions) == {"accepted": 10}
    finally:
        ingest.stop()
        other.dispose()
        engine.dispose()


def test_windows_move_each_device_to_its_newest_window_on_postgres(postgres, mosquitto, publisher):
    """On PostgreSQL a batch updates the device rows in one statement from JSON (cloud/ingest_store.py):
    each device ends with its newest window's end and model, and a device with no window is left alone."""
    sessions = fresh_sessions(postgres, "ingest_touch")
    with sessions.begin() as session:
        session.add_all([Device(id=d, fleet="lab", password_hash="x") for d in ("d1", "d2", "d3")])
    ingest = start_ingest(sessions, mosquitto)
    try:
        updated = dataclasses.replace(window("d1", 2), model_name="digits-cnn-v2", model_version=2)
        for payload in (window("d1", 1), updated, window("d2", 5)):
            publish(publisher, topic("lab", payload.device, "telemetry"), payload.to_payload())
        wait_for(lambda: counters(sessions).get("accepted", 0) >= 3)
        with sessions() as session:
            rows = {d.id: (d.last_seen, d.model_name, d.model_version) for d in session.scalars(select(Device))}
        assert rows == {"d1": (1062.0, "digits-cnn-v2", 2), "d2": (1065.0, "digits-cnn", 1), "d3": (None, None, None)}
    finally:
        ingest.stop()
        sessions.kw["bind"].dispose()


def test_a_batch_holding_a_stored_window_stores_the_others_once_on_postgres(postgres, mosquitto, publisher):
    """On PostgreSQL a batch's windows go in by COPY, which has no ON CONFLICT: a redelivered window in the
    batch makes it fail, and the batch goes in again skipping what is stored. The new windows are stored
    once, the copy is counted as a duplicate, and it does not move its device's last_seen back. A batch that
    COPY takes counts a window repeated within it and one of an unregistered device as the INSERT did, and
    stores a payload with tabs and line ends (COPY's separators) as it came."""
    sessions = fresh_sessions(postgres, "ingest_copy_dup")
    with sessions.begin() as session:
        session.add_all([Device(id=d, fleet="lab", password_hash="x") for d in ("d1", "d2", "d3")])
    ingest = Ingest(sessions, mosquitto.url, flush_seconds=1.0)  # the windows sent together: one batch
    ingest.start()
    assert ingest.wait_connected(10)
    time.sleep(0.3)
    try:
        for payload in (window("d1", 2), window("d9", 1), window("d1", 2)):  # d9: never registered
            publish(publisher, topic("lab", payload.device, "telemetry"), payload.to_payload())
        pretty = json.dumps(window("d3", 3).to_dict(), indent="\t").replace("\n", "\r\n").encode()
        publish(publisher, topic("lab", "d3", "telemetry"), pretty)  # tabs and line ends: COPY's separators
        wait_for(lambda: counters(sessions).get("accepted", 0) >= 2)
        assert counters(sessions) == {"accepted": 2, "duplicate": 1, "unknown_device": 1}  # by COPY
        publish(publisher, topic("lab", "d1", "birth"), presence("birth", 5))
        wait_for(lambda: counters(sessions).get("birth", 0) >= 1)
        for payload in (window("d2", 1), window("d1", 2), window("d2", 2)):
            publish(publisher, topic("lab", payload.device, "telemetry"), payload.to_payload())
        wait_for(lambda: counters(sessions).get("accepted", 0) >= 4)
    finally:
        ingest.stop()
    with sessions() as session:
        stored_as = session.scalar(select(TelemetryRecord.payload).where(TelemetryRecord.device_id == "d3"))
        assert stored_as == pretty.decode()
        keys = session.execute(select(TelemetryRecord.device_id, TelemetryRecord.seq)
                               .order_by(TelemetryRecord.device_id, TelemetryRecord.seq)).all()
        seen = {d.id: d.last_seen for d in session.scalars(select(Device))}
    assert keys == [("d1", 2), ("d2", 1), ("d2", 2), ("d3", 3)]
    assert counters(sessions) == {"accepted": 4, "duplicate": 2, "unknown_device": 1, "birth": 1}
    assert seen["d1"] > 1e9 and seen["d2"] == 1062.0  # d1: the birth's time, not the redelivered window's end
    sessions.kw["bind"].dispose()


def test_concurrent_workers_commit_telemetry_in_row_id_order_on_postgres(postgres):
    """Two workers' stores: the second waits for the first's commit, so a row id the drift monitor has passed
    (it reads the rows above the highest id it saw) never appears later with a lower id."""
    sessions = fresh_sessions(postgres, "ingest_order")
    with sessions.begin() as session:
        session.add_all([Device(id=d, fleet="lab", password_hash="x") for d in ("d1", "d2")])

    def checked(device: str, seq: int) -> Checked:
        item = window(device, seq)
        return Checked(device, item.to_payload(), item)

    first = sessions()
    first.begin()
    store(first, [checked("d1", 1), checked("d1", 2)])  # ids taken, not committed: holds the ingest's lock
    second_done = threading.Event()

    def second() -> None:
        with sessions.begin() as session:
            store(session, [checked("d2", 1)])
        second_done.set()

    thread = threading.Thread(target=second, daemon=True)
    thread.start()
    assert not second_done.wait(1.0)
    with sessions() as session:  # the second worker has not even taken a row id: its writes wait
        sequence = session.scalar(text("SELECT pg_get_serial_sequence('telemetry', 'id')"))
        taken = session.scalar(text(f"SELECT last_value FROM {sequence}"))
    assert taken == 2
    first.commit()
    first.close()
    assert second_done.wait(10)
    thread.join(10)
    with sessions() as session:
        order = session.execute(select(TelemetryRecord.device_id).order_by(TelemetryRecord.id)).scalars().all()
    assert order == ["d1", "d1", "d2"]  # ids in commit order
    sessions.kw["bind"].dispose()


def checked_window(device: str, seq: int) -> Checked:
    item = window(device, seq)
    return Checked(device, item.to_payload(), item)


def telemetry_keys(sessions) -> list[tuple[str, int]]:
    with sessions() as session:
        return [tuple(k) for k in session.execute(select(TelemetryRecord.device_id, TelemetryRecord.seq)
                                                  .order_by(TelemetryRecord.device_id, TelemetryRecord.seq))]


def delete_device(sessions, device: str) -> None:
    with sessions.begin() as session:
        session.execute(delete(Device).where(Device.id == device))


@pytest.mark.parametrize("path", ["copy", "insert"])
def test_a_device_with_telemetry_is_not_deleted_and_a_deleted_ones_windows_not_stored_on_postgres(postgres, path):
    """Telemetry has no foreign key to devices (schema 0008); what it guaranteed holds: deleting a device that
    has windows fails with the foreign key's error and keeps them, and windows of a deleted device are
    counted as unknown_device, not stored, by COPY and by the INSERT a batch with a stored window takes."""
    sessions = fresh_sessions(postgres, f"ingest_fk_{path}")
    with sessions.begin() as session:
        session.add_all([Device(id=d, fleet="lab", password_hash="x") for d in ("d1", "d2")])
    with sessions.begin() as session:
        store(session, [checked_window("d1", 1)])
    with pytest.raises(IntegrityError, match="d1 has telemetry"):
        delete_device(sessions, "d1")
    delete_device(sessions, "d2")  # no telemetry: nothing refuses it
    batch = [checked_window("d2", 1), checked_window("d1", 2)] + ([checked_window("d1", 1)] if path == "insert" else [])
    with sessions.begin() as session:
        tally = store(session, batch)
    assert +tally == ({"accepted": 1, "unknown_device": 1} if path == "copy" else
                     {"accepted": 1, "unknown_device": 1, "duplicate": 1})
    assert telemetry_keys(sessions) == [("d1", 1), ("d1", 2)]
    sessions.kw["bind"].dispose()


@pytest.mark.parametrize("path", ["copy", "insert"])
def test_a_device_deleted_while_its_windows_are_stored_on_postgres(postgres, path):
    """The race the foreign key settled, settled by the ingest's row locks and the trigger on devices. A
    DELETE that comes while a store holds the device waits for its commit, then fails: the windows stay
    with their device. A store that comes while a DELETE holds the device waits for it, then finds no row:
    the windows are counted as unknown_device and not stored."""
    sessions = fresh_sessions(postgres, f"ingest_fk_race_{path}")
    with sessions.begin() as session:
        session.add_all([Device(id=d, fleet="lab", password_hash="x") for d in ("d0", "d1", "d2")])
    with sessions.begin() as session:
        store(session, [checked_window("d0", 1)])
    stored_one = [checked_window("d0", 1)] if path == "insert" else []  # makes the batch take the INSERT

    storing = sessions()
    storing.begin()
    store(storing, [checked_window("d1", 1), checked_window("d1", 2), *stored_one])
    outcome: list[BaseException | None] = []
    deleter = threading.Thread(target=lambda: outcome.append(_attempt(delete_device, sessions, "d1")), daemon=True)
    deleter.start()
    deleter.join(1.0)
    assert deleter.is_alive()  # the DELETE waits for the store's lock on d1
    storing.commit()
    storing.close()
    deleter.join(10)
    assert isinstance(outcome[0], IntegrityError) and "d1 has telemetry" in str(outcome[0])

    deleting = sessions()
    deleting.begin()
    deleting.execute(delete(Device).where(Device.id == "d2"))  # not committed yet: holds d2's row
    tallies: list = []

    def store_d2() -> None:
        with sessions.begin() as session:
            tallies.append(store(session, [checked_window("d2", 1), checked_window("d0", 2), *stored_one]))

    writer = threading.Thread(target=store_d2, daemon=True)
    writer.start()
    writer.join(1.0)
    assert writer.is_alive()  # the store waits for the DELETE's lock on d2
    deleting.commit()
    deleting.close()
    writer.join(10)
    assert tallies[0]["unknown_device"] == 1 and tallies[0]["accepted"] == 1
    assert telemetry_keys(sessions) == [("d0", 1), ("d0", 2), ("d1", 1), ("d1", 2)]
    with sessions() as session:
        assert set(session.scalars(select(Device.id))) == {"d0", "d1"}
    sessions.kw["bind"].dispose()


def _attempt(action, *args) -> BaseException | None:  # noqa: ANN001 - any callable
    try:
        action(*args)
    except Exception as err:  # noqa: BLE001 - the test looks at what was raised
        return err
    return None


def test_a_device_deleted_by_another_connection_while_its_windows_are_stored_on_sqlite(tmp_path):
    """SQLite has no row locks: the store takes the database's write lock before it looks the devices up, so
    a DELETE from another connection at the moment the windows are inserted (after the look-up) waits for
    the store's commit instead of leaving the windows without their device; after the commit the trigger
    refuses it."""
    path = tmp_path / "cloud.db"
    engine = make_engine(f"sqlite:///{path}")
    sessions = make_sessions(engine)
    with sessions.begin() as session:
        session.add(Device(id="d1", fleet="lab", password_hash="x"))
    other = sqlite3.connect(path, timeout=0.2)
    attempts: list[str] = []

    def delete_now(_conn, _cursor, statement: str, *_args) -> None:  # noqa: ANN001 - DBAPI objects
        if statement.lstrip().upper().startswith("INSERT INTO TELEMETRY") and not attempts:
            try:
                other.execute("DELETE FROM devices WHERE id = 'd1'")
                other.commit()
                attempts.append("deleted")
            except sqlite3.OperationalError as err:
                attempts.append(str(err))

    event.listen(engine, "before_cursor_execute", delete_now)
    with sessions.begin() as session:
        assert +store(session, [checked_window("d1", 1), checked_window("d1", 2)]) == {"accepted": 2}
    event.remove(engine, "before_cursor_execute", delete_now)
    assert attempts == ["database is locked"]
    with pytest.raises(sqlite3.IntegrityError, match="the device has telemetry"):
        other.execute("DELETE FROM devices WHERE id = 'd1'")
    other.close()
    assert telemetry_keys(sessions) == [("d1", 1), ("d1", 2)]
    engine.dispose()
