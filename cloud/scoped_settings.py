"""Settings per fleet and model, resolved the same way for every monitor (drift, operations, performance).

A monitor has global settings (from `edgefleet cloud up` / EDGEFLEET_*) and overrides stored per fleet,
per model, or per model in one fleet ("" = any), each holding only the fields it sets. A (fleet, model)
resolves field by field, the most specific value winning:

    fleet + model  >  fleet  >  model  >  global

A fleet beats a model because what a fleet sets describes its stream (a slow sensor fleet needs a smaller
min_samples whatever it serves). `apply(settings, values)` puts one override's values on top and
validates the result as a whole (raising the monitor's own EdgefleetError), so an override can never
make a monitor fail at run time: the API runs the same `apply` before it stores anything.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


class ScopedResolver(Generic[T]):
    """The global settings and one snapshot of the overrides; `for_scope` resolves a (fleet, model)."""

    def __init__(self, base: T, rows: Mapping[tuple[str, str], Mapping[str, object]],
                 apply: Callable[[T, Mapping[str, object]], T]) -> None:
        self.base, self._rows, self._apply = base, dict(rows), apply
        self._cache: dict[tuple[str, str], T] = {}

    def for_scope(self, fleet: str, model_name: str) -> T:
        key = (fleet, model_name)
        if key not in self._cache:
            settings = self.base
            for level in (("", model_name), (fleet, ""), (fleet, model_name)):  # least specific first
                if level in self._rows:
                    settings = self._apply(settings, self._rows[level])
            self._cache[key] = settings
        return self._cache[key]

    def override_values(self, name: str) -> list[object]:
        """Every override's value of one field (None where it is not set)."""
        return [row.get(name) for row in self._rows.values()]
