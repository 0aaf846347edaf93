"""How every compiler stage writes a new bundle: into a directory beside the destination, renamed onto it
when the stage returns, so a failure at any point leaves nothing behind and a rerun works.

The destination must be absent or an empty directory; anything else is refused before any work, with
the caller's error type (ExportError for export and import, CompileError for compile).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edgefleet.core.errors import EdgefleetError


def check_empty(final: Path, error: type[EdgefleetError], what: str) -> None:
    """Raises `error` unless `final` is absent or an empty directory."""
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        raise error(f"{final} exists and is not empty; {what} writes a new bundle into an empty directory")


@contextmanager
def staged_directory(final: str | Path, error: type[EdgefleetError], what: str) -> Iterator[Path]:
    """Yields a new empty directory beside `final`; renames it onto `final` when the block ends, and
    removes it when the block raises (`final` is then as it was: absent, or empty)."""
    final = Path(final)
    check_empty(final, error, what)
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        yield work
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if final.exists():
        final.rmdir()
    work.rename(final)
