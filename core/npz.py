"""Reading .npz files safely from a process that works in several threads.

numpy parses every array's header with `ast.literal_eval`. CPython 3.11 keeps the AST constructor's recursion
depth in interpreter-wide state, so two threads parsing at the same moment can fail with
`SystemError: AST constructor recursion depth mismatch` (python/cpython#106905). An agent installing an update
while another thread reads golden examples hit exactly that, and the update was rolled back. Every .npz read
in the project's threaded processes (the agent, the cloud and its loop) goes through this module's one lock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path

import numpy as np

_HEADER_LOCK = threading.Lock()


def load_npz(path: str | Path, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Every array of the file (or the given names, KeyError for a missing one), read eagerly under the lock.
    Raises what np.load raises on a bad file (OSError, ValueError, zipfile.BadZipFile)."""
    with _HEADER_LOCK, np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in (data.files if names is None else names)}
