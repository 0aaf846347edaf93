"""The cloud database's Alembic environment (env.py, versions/): the schema's history, one revision per
release that changed it. cloud/schema.py runs it; `edgefleet cloud migrate` is its command."""
