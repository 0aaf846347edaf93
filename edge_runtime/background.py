"""Threads that run for the length of a `with` block: the simulated clients of the demos and tests
(request senders, late labellers) each start a few and must stop them all when the block ends."""

from __future__ import annotations

import threading
from typing import Self


class BackgroundThreads:
    """A mixin: the subclass fills `self.threads` and watches `self.stop`; entering the block starts the
    threads, leaving it sets `stop` and joins each for up to `join_seconds`."""

    threads: list[threading.Thread]
    stop: threading.Event
    join_seconds = 10.0

    def __enter__(self) -> Self:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(self.join_seconds)
