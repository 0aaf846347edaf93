"""Schema migrations (cloud/schema.py, cloud/migrations): a database of the previous release is upgraded by
`edgefleet cloud migrate` with its rows kept, on SQLite and on a real PostgreSQL; `cloud up` refuses an older
schema with one message; and the models agree with the head revision, so a table or column changed without
a migration fails here.

The previous release's database is made from tests/fixtures/schema_prev_{sqlite,pg}.sql: the DDL that
release's own code issued (scripts/dump_schema.py on a checkout of commit 57e2e66).
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

import edgefleet.cloud
from edgefleet.cloud.db import MODEL_MODULES, Base, load_models, make_engine, open_engine
from edgefleet.cloud.schema import BASELINE, SchemaError, current_revision, head, migrate
from edgefleet.cloud.schema import _config as schema_config

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db(request, tmp_path):
    """The URL of an empty database: a SQLite file, or a new database on the session's PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'cloud.db'}"
        return
    server = request.getfixturevalue("postgres")
    name = f"mig_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield server.url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def previous_release_db(url: str) -> None:
    """Replays the previous release's DDL and stores rows the way that release wrote them."""
    fixture = FIXTURES / ("schema_prev_sqlite.sql" if url.startswith("sqlite") else "schema_prev_pg.sql")
    sql = "".join(line for line in fixture.read_text().splitlines(keepends=True) if not line.startswith("--"))
    statements = [s for s in sql.split(";\n") if s.strip()]
    engine = create_engine(url)
    with engine.begin() as connection:
        for statement in statements:
            connection.execute(text(statement))
        connection.execute(text(
            "INSERT INTO devices (id, fleet, device_group, password_hash, online, model_name, model_version, "
            "created_at) VALUES ('cam-1', 'north', 'canary', '$7$hash', false, 'digits', 3, 1700000000.5)"))
        connection.execute(text(
            "INSERT INTO bundles (name, version, path, sha256, size, manifest, uploaded_at) VALUES "
            "('digits', 3, 'bundles/digits/3.tar.gz', :sha, 1234, :manifest, 1700000001.0)"),
            {"sha": "ab" * 32, "manifest": json.dumps({"name": "digits", "version": 3})})
        connection.execute(text(
            "INSERT INTO deployments (id, bundle_name, bundle_version, target, strategy, wave_sizes, state, "
            "current_wave, approved, rollback, rollback_done, created_at, updated_at) VALUES ('d1', 'digits', 3, "
            "'{\"fleet\": \"north\"}', '{}', '[1]', 'completed', 1, true, true, false, 1.0, 2.0)"))
        connection.execute(text(
            "INSERT INTO webhooks (url, secret, cursor, created_at) VALUES ('http://127.0.0.1:9/hook', 's', 7, 3.0)"))
        connection.execute(text(
            "INSERT INTO telemetry (device_id, fleet, seq, model_name, model_version, window_start, window_end, "
            "requests, samples, errors, dropped_windows, payload, received_at) VALUES ('cam-1', 'north', 1, "
            "'digits', 3, 60.0, 120.0, 10, 10, 0, 0, '{}', 121.0)"))
    engine.dispose()


def assert_telemetry_keeps_its_devices(url: str) -> None:
    """Telemetry has no foreign key to devices (revision 0008), yet a device with telemetry (cam-1) can be
    neither deleted nor renamed, as the foreign key refused: its windows stay with it."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            assert inspect(connection).get_foreign_keys("telemetry") == []
        for statement in ("DELETE FROM devices WHERE id = 'cam-1'",
                          "UPDATE devices SET id = 'cam-2' WHERE id = 'cam-1'"):
            with pytest.raises(IntegrityError, match="telemetry"), engine.begin() as connection:
                connection.execute(text(statement))
        with engine.begin() as connection:
            assert connection.execute(text("SELECT device_id FROM telemetry")).scalars().all() == ["cam-1"]
            connection.execute(text("UPDATE devices SET fleet = fleet, last_seen = 7.0 WHERE id = 'cam-1'"))
            connection.execute(text("INSERT INTO devices (id, fleet, password_hash, online, created_at) "
                                    "VALUES ('cam-9', 'north', 'x', false, 1.0)"))
            connection.execute(text("UPDATE devices SET id = 'cam-10' WHERE id = 'cam-9'"))  # no telemetry: free
            connection.execute(text("DELETE FROM devices WHERE id = 'cam-10'"))
    finally:
        engine.dispose()


def schema_diff(url: str) -> list:
    load_models()
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}),
                                    Base.metadata)
    finally:
        engine.dispose()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgefleet.cli.main", "cloud", *args], capture_output=True,
                          text=True, timeout=120)


def test_every_module_with_tables_is_loaded_for_migrations():
    """Base.metadata after importing every cloud module has no table that load_models() would miss."""
    for module in pkgutil.walk_packages(edgefleet.cloud.__path__, "edgefleet.cloud."):
        if ".migrations" not in module.name:
            importlib.import_module(module.name)
    owners = {mapper.class_.__module__ for mapper in Base.registry.mappers}
    assert owners <= {"edgefleet.cloud.db", *(f"edgefleet.cloud.{name}" for name in MODEL_MODULES)}, owners


def test_the_migrations_build_the_models_schema(empty_db):
    engine = open_engine(empty_db)
    try:
        assert migrate(engine) == (None, head())
    finally:
        engine.dispose()
    assert schema_diff(empty_db) == []


def test_a_new_database_is_made_at_head_and_reopened(empty_db):
    make_engine(empty_db).dispose()
    engine = make_engine(empty_db)  # at head: no complaint
    with engine.connect() as connection:
        assert current_revision(connection) == head()
    engine.dispose()
    assert schema_diff(empty_db) == []


def test_the_previous_release_database_is_refused_then_migrated(empty_db):
    previous_release_db(empty_db)
    with pytest.raises(SchemaError, match="edgefleet cloud migrate"):
        make_engine(empty_db)

    done = run_cli("migrate", "--database", empty_db)
    assert done.returncode == 0, done.stderr
    assert f"from revision none to {head()}" in done.stdout

    assert schema_diff(empty_db) == []  # exactly the models' schema, as a new database gets
    engine = make_engine(empty_db)
    try:
        with engine.begin() as connection:
            device = connection.execute(text("SELECT fleet, device_group, model_version, created_at, revoked_at "
                                             "FROM devices WHERE id = 'cam-1'")).one()
            assert tuple(device) == ("north", "canary", 3, 1700000000.5, None)
            bundle = connection.execute(text("SELECT path, sha256, size, manifest FROM bundles")).one()
            assert bundle[:3] == ("bundles/digits/3.tar.gz", "ab" * 32, 1234)
            manifest = bundle[3] if isinstance(bundle[3], dict) else json.loads(bundle[3])
            assert manifest == {"name": "digits", "version": 3}
            assert connection.execute(text("SELECT state, gate_verdict FROM deployments")).one() == ("completed", None)
            assert connection.execute(text("SELECT cursor, events FROM webhooks")).one() == (7, None)
            # what the release added is usable: a revoked device, an enrollment token
            connection.execute(text("UPDATE devices SET revoked_at = 5.0 WHERE id = 'cam-1'"))
            connection.execute(text("INSERT INTO enrollment_tokens (token_hash, fleet, max_uses, uses, expires_at, "
                                    "created_at) VALUES (:h, 'north', 10, 0, 9.0, 1.0)"), {"h": "cd" * 32})
    finally:
        engine.dispose()

    assert_telemetry_keeps_its_devices(empty_db)

    again = run_cli("migrate", "--database", empty_db)
    assert again.returncode == 0, again.stderr
    assert f"at revision {head()} already" in again.stdout


def test_a_new_database_keeps_telemetry_with_its_devices(empty_db):
    make_engine(empty_db).dispose()  # create_all, stamped at head
    engine = create_engine(empty_db)
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO devices (id, fleet, password_hash, online, created_at) "
                                "VALUES ('cam-1', 'north', 'x', false, 1.0)"))
        connection.execute(text(
            "INSERT INTO telemetry (device_id, fleet, seq, model_name, model_version, window_start, window_end, "
            "requests, samples, errors, dropped_windows, payload, received_at) VALUES ('cam-1', 'north', 1, "
            "'digits', 3, 60.0, 120.0, 10, 10, 0, 0, '{}', 121.0)"))
    engine.dispose()
    assert_telemetry_keeps_its_devices(empty_db)


def test_revision_0008_downgrades_to_the_foreign_key_and_upgrades_again(empty_db):
    engine = open_engine(empty_db)
    try:
        migrate(engine, "0007")
        with engine.connect() as connection:
            assert [fk["referred_table"] for fk in inspect(connection).get_foreign_keys("telemetry")] == ["devices"]
        migrate(engine)
        with engine.begin() as connection:
            assert inspect(connection).get_foreign_keys("telemetry") == []
            command.downgrade(schema_config(connection), "0007")
            assert [fk["referred_table"] for fk in inspect(connection).get_foreign_keys("telemetry")] == ["devices"]
            command.upgrade(schema_config(connection), "head")
            assert inspect(connection).get_foreign_keys("telemetry") == []
    finally:
        engine.dispose()


def test_migrate_steps_through_revisions_and_keeps_rows(tmp_path):
    url = f"sqlite:///{tmp_path / 'cloud.db'}"
    engine = open_engine(url)
    try:
        assert migrate(engine, BASELINE) == (None, BASELINE)
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO api_tokens (name, token_hash, role, created_at) "
                                    "VALUES ('ops', :h, 'viewer', 1.0)"), {"h": "ef" * 32})
        with pytest.raises(SchemaError, match="older than this release's; run `edgefleet cloud migrate"):
            make_engine(url)
        assert migrate(engine) == (BASELINE, head())
        with pytest.raises(SchemaError, match="cannot upgrade from"):
            migrate(engine, BASELINE)  # no downgrades
        with engine.connect() as connection:
            assert connection.execute(text("SELECT name, role FROM api_tokens")).one() == ("ops", "viewer")
    finally:
        engine.dispose()


def test_cloud_up_refuses_an_old_schema_in_one_line(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    url = f"sqlite:///{data / 'edgefleet.db'}"
    previous_release_db(url)
    done = run_cli("up", "--data", str(data), "--port", "0")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "before schema versions" in lines[0] and "edgefleet cloud migrate" in lines[0]

    bad = run_cli("migrate", "--data", str(data), "--to", "9999")
    assert bad.returncode == 2 and "--to 9999: no such schema revision" in bad.stderr, bad.stderr
    assert run_cli("migrate", "--data", str(data)).returncode == 0

    with sqlite3.connect(data / "edgefleet.db") as connection:  # a newer release's revision
        connection.execute("UPDATE alembic_version SET version_num = '9999'")
    done = run_cli("up", "--data", str(data), "--port", "0")
    assert done.returncode == 2 and "revision 9999, which this release does not know" in done.stderr, done.stderr
