"""What the native graph tests share: every ISA tier this CPU runs (`ISAS`), the `isa` fixture that selects
one tier per test and restores automatic selection after it, and `run_on` for a single output on a tier."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.cpp_ext import graph_native

ISAS = graph_native.available_isas()


def pytest_report_header() -> str:
    """Which kernel paths the parametrized tests below run (the first is the default)."""
    return f"native kernel tiers: {','.join(ISAS)} (default {graph_native.isa()})"


@pytest.fixture(params=ISAS)
def isa(request: pytest.FixtureRequest):
    graph_native.select_isa(request.param)
    yield request.param
    graph_native.select_isa("auto")


def run_on(graph, feed: dict, isa: str, threads: int = 1) -> np.ndarray:
    """The graph's one output, run on tier `isa` with `threads` threads."""
    graph_native.select_isa(isa)
    try:
        return next(iter(graph_native.load_executor(graph, threads).run(feed).values()))
    finally:
        graph_native.select_isa("auto")
