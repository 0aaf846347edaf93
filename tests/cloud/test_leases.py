"""Leases on a real PostgreSQL (cloud/leases.py): one holder at a time, taken over only after expiry, shards
split between live workers and rebalanced when one joins or stops; the SQL shard of a device is the Python
one; on SQLite the one process holds everything."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import insert, select

from edgefleet.cloud.db import Device, make_engine, make_sessions
from edgefleet.cloud.leases import SHARDS, Leases, ShardLeases, shard_of, shard_sql
from tests.cloud.test_postgres import fresh_sessions
from tests.waiting import until

PERIOD = 1.0


@pytest.fixture(scope="module")
def sessions(postgres):
    return fresh_sessions(postgres, "leases")


def test_a_lease_has_one_holder_until_it_expires(sessions):
    a, b = Leases(sessions, "a", PERIOD), Leases(sessions, "b", PERIOD)
    assert a.acquire({"job/1", "job/2"}) == {"job/1", "job/2"}
    assert b.acquire({"job/1", "job/2", "job/3"}) == {"job/3"}
    assert a.acquire({"job/1"}) == {"job/1"}  # renewed by its holder
    assert a.live("job/") == {"job/1": "a", "job/2": "a", "job/3": "b"}
    time.sleep(PERIOD + 0.2)  # a's leases expire: b takes them
    assert b.acquire({"job/1", "job/2"}) == {"job/1", "job/2"}
    assert a.acquire({"job/1"}) == set()
    b.release({"job/1", "job/3"})
    assert a.acquire({"job/1", "job/3"}) == {"job/1", "job/3"}


def test_the_sql_shard_is_the_python_shard(sessions):
    ids = [f"dev-{n}" for n in range(500)] + ["ü-ñ", "x" * 64]
    with sessions.begin() as session:
        session.execute(insert(Device), [{"id": i, "fleet": "shards", "password_hash": "-"} for i in ids])
        in_sql = dict(session.execute(select(Device.id, shard_sql(Device.id)).where(Device.fleet == "shards")).all())
    assert in_sql == {i: shard_of(i) for i in ids}
    assert len(set(in_sql.values())) == SHARDS  # 500 devices reach every shard


def test_workers_split_the_shards_and_take_over_a_silent_one(sessions):
    one = ShardLeases(Leases(sessions, "w1", PERIOD), "split", singletons=("fleets",))
    two = ShardLeases(Leases(sessions, "w2", PERIOD), "split", singletons=("fleets",))
    one.refresh()
    assert one.held_shards() == set(range(SHARDS)) and one.holds("fleets")  # alone: everything
    two.refresh()  # joins: nothing free yet
    assert two.held_shards() == set() and not two.holds("fleets")
    one.refresh()  # sees two workers, gives back the shards above its half
    two.refresh()
    assert len(one.held_shards()) == len(two.held_shards()) == SHARDS // 2
    assert one.held_shards().isdisjoint(two.held_shards())
    # one goes silent (as if killed): its leases run out one period after its last renewal
    time.sleep(PERIOD + 0.2)
    assert one.held_shards() == set()  # no renewal within the period: it no longer trusts its leases
    two.refresh()
    assert two.held_shards() == set(range(SHARDS)) and two.holds("fleets")


def test_a_stopped_worker_hands_its_shards_over_at_once(sessions):
    one = ShardLeases(Leases(sessions, "s1", 30.0), "handover")
    two = ShardLeases(Leases(sessions, "s2", 30.0), "handover")
    one.start()
    two.start()
    until(lambda: len(one.held_shards()) == len(two.held_shards()) == SHARDS // 2, "an even split", 60)
    one.stop()  # released: no need to wait the 30 s period
    until(lambda: two.held_shards() == set(range(SHARDS)), "every shard with the remaining worker", 30)
    two.stop()


def test_on_sqlite_the_one_process_holds_everything(tmp_path):
    sessions = make_sessions(make_engine(f"sqlite:///{tmp_path / 'one.db'}"))
    shards = ShardLeases(Leases(sessions, "only", PERIOD), "monitor", singletons=("fleets",))
    assert shards.everything and shards.held_shards() == set(range(SHARDS)) and shards.holds("fleets")
    assert shards.device_filter(Device.id, shards.held_shards()) is None
    assert Leases(sessions, "only").acquire({"x"}) == {"x"}
