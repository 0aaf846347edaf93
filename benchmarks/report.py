"""How every benchmark ends: its report, with the machine it ran on, as JSON on stdout (and in a file)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgefleet.edge_runtime.machine import describe_machine


def emit(report: dict, out: Path | None = None) -> None:
    text = json.dumps({**report, "machine": describe_machine()}, indent=2)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


def interleaved(calls: dict[str, Callable[[], object]], runs: int, warmup: int = 1000) -> dict[str, np.ndarray]:
    """Times each call `runs` times in µs, interleaved call by call, so load on the machine hits all alike."""
    times = {name: np.empty(runs) for name in calls}
    clock = time.perf_counter_ns
    for _ in range(min(runs, warmup)):
        for call in calls.values():
            call()
    for i in range(runs):
        for name, call in calls.items():
            start = clock()
            call()
            times[name][i] = clock() - start
    return {name: t / 1e3 for name, t in times.items()}


def ratio_row(times: dict[str, np.ndarray], subject: str = "predictor", base: str = "bare") -> dict:
    """p50 and mean of `subject` and `base` (µs) and the ratio of their p50s."""
    p50 = {k: float(np.percentile(times[k], 50)) for k in (subject, base)}
    return {
        f"{subject}_us": {"p50": round(p50[subject], 3), "mean": round(float(times[subject].mean()), 3)},
        f"{base}_us": {"p50": round(p50[base], 3), "mean": round(float(times[base].mean()), 3)},
        "ratio_p50": round(p50[subject] / p50[base], 3),
    }
