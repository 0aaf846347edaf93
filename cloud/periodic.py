"""One background thread per cloud worker that does its job every few seconds (the ops and performance
monitors, webhook delivery, retention): started and stopped by CloudServer like every Component.

A run that raises is logged and the next one comes on schedule, so one bad row never stops a monitor.
A worker whose job must run in one process only among many (webhook delivery, retention) is given a
`lease` (cloud/leases.py): it runs only while that returns True."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class PeriodicWorker:
    """Calls `run_scheduled()` (by default `run_once()`) every `interval_seconds` on a daemon thread until
    `stop()`.

    Subclasses set `name`, provide `interval_seconds` (an attribute or a property) and `run_once`, and
    call `super().__init__()`; `run_at_start = False` waits one interval before the first run. A worker
    whose scopes have intervals of their own ticks at the shortest and overrides `run_scheduled` to run
    only the scopes that are due."""

    name = "worker"
    run_at_start = True
    stop_timeout = 10.0
    interval_seconds: float
    lease: Callable[[], bool] | None = None  # set by build_components where many monitor workers run

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> object:
        raise NotImplementedError

    def run_scheduled(self) -> object:
        """One run of the background loop."""
        return self.run_once()

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError(f"{self.name} is already running")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.stop_timeout if timeout is None else timeout)
            if self._thread.is_alive():
                log.warning("%s did not stop within %.3gs", self.name, self.stop_timeout)
            self._thread = None

    def _loop(self) -> None:
        if not self.run_at_start and self._stop.wait(self.interval_seconds):
            return
        while not self._stop.is_set():
            try:
                if self.lease is None or self.lease():
                    self.run_scheduled()
            except Exception:  # noqa: BLE001 - the worker must outlive any one bad run
                log.exception("%s: run failed", self.name)
            self._stop.wait(self.interval_seconds)
