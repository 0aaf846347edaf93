"""The database schema's version (Alembic, cloud/migrations): made on an empty database, checked on every
start, upgraded only by `edgefleet cloud migrate`.

A cloud refuses to run on a database at an older revision: a table it expects and lacks would fail
requests one by one, long after the start. Upgrading is a separate, deliberate step (back the database up
first), and on PostgreSQL many processes (API replicas, ingest workers) share the database, so no one of
them should alter it while the others run the previous release.

An empty database gets the models' tables with `create_all` and is stamped at the head revision (the
Alembic cookbook's way; tests/cloud/test_migrations.py proves that the migrations build the same schema).
A database without a revision but with tables is one made by the release before migrations existed
(BASELINE describes its schema): `migrate` stamps it at BASELINE and upgrades from there.
On PostgreSQL the check and the creation run under an advisory lock, so processes starting together
against one empty database create it once.
"""

from __future__ import annotations

import functools
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

from edgefleet.core.errors import EdgefleetError

MIGRATIONS = Path(__file__).with_name("migrations")
BASELINE = "0001"  # the schema of the release before migrations (commit 57e2e66)
VERSION_TABLE = "alembic_version"
_LOCK_KEY = 0x6564_6765_666C  # "edgefl": the advisory lock that serialises schema changes on PostgreSQL


class SchemaError(EdgefleetError):
    """The database's schema is not the one this release runs on."""


@functools.lru_cache(maxsize=1)
def scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def head() -> str:
    return scripts().get_current_head()


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _has_tables(connection: Connection) -> bool:
    return any(name != VERSION_TABLE for name in inspect(connection).get_table_names())


def _lock(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":  # released when the transaction ends
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})


def _describe(url: str) -> str:
    return url.split("://", 1)[0] + " database"


def ensure_schema(engine: Engine) -> None:
    """Creates the schema on an empty database; raises SchemaError unless the database is at head."""
    from edgefleet.cloud.db import Base, load_models

    with engine.begin() as connection:
        _lock(connection)
        revision = current_revision(connection)
        if revision is None and not _has_tables(connection):
            load_models()
            Base.metadata.create_all(connection)
            MigrationContext.configure(connection).stamp(scripts(), "head")
            return
    check_revision(revision, engine.url.render_as_string(hide_password=True))


def check_revision(revision: str | None, url: str) -> None:
    """Raises SchemaError unless `revision` is this release's head."""
    target = head()
    if revision == target:
        return
    migrate = (f"run `edgefleet cloud migrate` with the same --db or --data (back the database up first) to "
               f"upgrade it to {target}")
    if revision is None:
        raise SchemaError(f"the {_describe(url)} was made by a release before schema versions; {migrate}")
    try:
        scripts().get_revision(revision)
    except Exception as err:  # noqa: BLE001 - alembic raises several kinds for an unknown revision
        raise SchemaError(f"the {_describe(url)} is at schema revision {revision}, which this release does not "
                          f"know (a newer edgefleet upgraded it?); run that release, or a newer one") from err
    raise SchemaError(f"the {_describe(url)} is at schema revision {revision}, older than this release's; {migrate}")


def migrate(engine: Engine, to: str = "head") -> tuple[str | None, str | None]:
    """Upgrades the database to revision `to` (a database without a revision from BASELINE, an empty one
    from nothing); returns the revisions before and after."""
    with engine.begin() as connection:
        _lock(connection)
        before = current_revision(connection)
        if before is None and _has_tables(connection):
            MigrationContext.configure(connection).stamp(scripts(), BASELINE)
        try:
            target = scripts().get_revision(to)
        except Exception as err:  # noqa: BLE001 - alembic raises several kinds for an unknown revision
            raise SchemaError(f"--to {to}: no such schema revision (known: "
                              f"{', '.join(s.revision for s in scripts().walk_revisions())})") from err
        current = current_revision(connection)
        if current not in (None, target.revision) and target.revision in {
                s.revision for s in scripts().iterate_revisions(current, "base")}:
            raise SchemaError(f"cannot upgrade from {current} to {to}, an older revision: migrate only upgrades")
        try:
            command.upgrade(_config(connection), to)
        except CommandError as err:  # e.g. --to a revision older than the database's: no downgrades here
            raise SchemaError(f"cannot upgrade from {before} to {to}: {err}") from err
        after = current_revision(connection)
    return before, after
