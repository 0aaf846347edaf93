"""Python's cyclic garbage collector paused for a bulk pass (`paused_gc`), then run once.

A monitor pass over 100,000 devices allocates millions of small containers (rows, scopes, reports) while
the process keeps hundreds of thousands of decoded windows (cloud/drift_windows.py). The collector's
automatic full collections, triggered by those allocations, walk every live container each time: on
`benchmarks/bench_scaleout.py` they took a third of a pass. Paused, the pass allocates without them; when
it ends the collector is switched back on and collects by its usual thresholds (the pass's few cycles,
SQLAlchemy's, are freed then). A full collection forced at the end of every pass cost 1-2 s of a
100,000-device pass, most of what the pause saved, so none is forced.

The collector is process-wide: while any thread is inside `paused_gc` it is off for every thread (the
API, the ingest in role `all`); a pass lasts seconds, and reference counting frees everything that is
not a cycle as usual. Nested and concurrent uses count: the collector comes back on (if it was on
before the first) when the last one leaves.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_inside = 0
_was_enabled = False


@contextmanager
def paused_gc() -> Iterator[None]:
    global _inside, _was_enabled
    with _lock:
        if _inside == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _inside += 1
    try:
        yield
    finally:
        with _lock:
            _inside -= 1
            if _inside == 0 and _was_enabled:
                gc.enable()
