"""OTA statuses stored by the ingest's store(), several of one device in one batch, on SQLite and a real
PostgreSQL: each stored row keeps its own state and payload (a batch once stored the last status's payload
under every row, so the rollout's status history showed one stage six times)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from edgefleet.cloud.db import Device, DeviceStatus, make_engine, make_sessions
from edgefleet.cloud.ingest_store import Checked, store
from edgefleet.core.ota import Status
from tests.cloud.test_postgres import fresh_sessions

STAGES = ["received", "downloading", "verifying", "self_testing", "switching", "health_check", "active"]


@pytest.fixture(params=["sqlite", "postgres"])
def sessions(request, tmp_path):
    if request.param == "sqlite":
        made = make_sessions(make_engine(f"sqlite:///{tmp_path / 'cloud.db'}"))
    else:
        made = fresh_sessions(request.getfixturevalue("postgres"), "ingest_statuses")
    yield made
    made.kw["bind"].dispose()


def test_each_status_of_a_batch_keeps_its_own_payload(sessions):
    with sessions.begin() as session:
        session.add(Device(id="d1", fleet="lab", password_hash="x"))
    statuses = [Status("lab", "d1", "c-1", "d-1", state, seq=seq) for seq, state in enumerate(STAGES, 1)]
    with sessions.begin() as session:
        tally = store(session, [Checked("d1", s.to_payload(), s) for s in statuses])
    assert tally["status_unmatched"] == len(STAGES)  # no deployment d-1 here: stored, applied to nothing
    with sessions() as session:
        rows = session.execute(select(DeviceStatus.seq, DeviceStatus.state, DeviceStatus.payload)
                               .order_by(DeviceStatus.seq)).all()
    assert [row.state for row in rows] == STAGES
    assert [json.loads(row.payload)["state"] for row in rows] == STAGES
    assert [json.loads(row.payload)["seq"] for row in rows] == [row.seq for row in rows]
