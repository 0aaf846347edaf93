"""Writes the DDL an edgefleet checkout's cloud issues on an empty database, as SQL a test can replay.

    python scripts/dump_schema.py CHECKOUT DIALECT URL OUT.sql

CHECKOUT is a source tree (for example `git worktree add /tmp/old <commit>`), imported in place of the
installed edgefleet; its `make_engine` runs against URL (an empty SQLite file or PostgreSQL database) and
every CREATE/ALTER it executes is written to OUT.sql, one statement per line. This is how
tests/fixtures/schema_prev_*.sql were made: the schema a database of the previous release has, which
tests/cloud/test_migrations.py upgrades with `edgefleet cloud migrate`.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import tempfile
from pathlib import Path


def main(checkout: str, dialect: str, url: str, out: str) -> None:
    shim = Path(tempfile.mkdtemp(prefix="edgefleet-old-")) / "edgefleet"
    shim.mkdir()
    for part in ("cloud", "core"):
        (shim / part).symlink_to(Path(checkout).resolve() / part)
    # the installed editable edgefleet answers imports before sys.path: drop its finder
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")
                        and "__editable__" not in getattr(type(f), "__module__", "")]
    sys.path.insert(0, str(shim.parent))
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    statements: list[str] = []

    @event.listens_for(Engine, "before_cursor_execute")
    def _keep(_conn, _cursor, statement, _params, _context, _many) -> None:  # noqa: ANN001 - SQLAlchemy's hook
        if re.match(r"\s*(CREATE|ALTER)\b", statement, re.IGNORECASE):
            statements.append(" ".join(statement.split()))

    db = importlib.import_module("edgefleet.cloud.db")
    assert Path(db.__file__).resolve().is_relative_to(Path(checkout).resolve()), db.__file__
    for name in ("ops_tables", "labels_store", "enrollment", "capture_tables", "dataset_store", "drift_cusum_store"):
        if (Path(checkout) / "cloud" / f"{name}.py").exists():
            importlib.import_module(f"edgefleet.cloud.{name}")  # every module with tables on Base then
    db.make_engine(url).dispose()
    commit = subprocess.run(["git", "-C", checkout, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    Path(out).write_text(f"-- {dialect}: the schema the cloud at commit {commit or checkout} creates (scripts/dump_schema.py)\n"
                         + "".join(f"{s};\n" for s in statements))


if __name__ == "__main__":
    main(*sys.argv[1:])
