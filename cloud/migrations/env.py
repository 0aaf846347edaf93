"""Alembic's environment for the cloud database: the target is every table on edgefleet.cloud.db.Base.

cloud/schema.py passes an open connection in `config.attributes["connection"]` (so the caller's engine,
with its SQLite pragmas, runs the migration); the `alembic` command line may instead set
sqlalchemy.url. SQLite alters tables in batch mode (copy and move), the only way it changes constraints.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from edgefleet.cloud.db import Base, load_models

load_models()
config = context.config


def _run(connection) -> None:  # noqa: ANN001 - a SQLAlchemy Connection
    context.configure(connection=connection, target_metadata=Base.metadata,
                      render_as_batch=connection.dialect.name == "sqlite", compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=Base.metadata,
                      literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif connection is not None:
    _run(connection)
else:
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as own:
        _run(own)
    engine.dispose()
