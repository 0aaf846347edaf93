"""Line charts drawn on the server as inline SVG: no script, and no text of a device's in the geometry.

`line_chart` turns series into coordinates only (numbers formatted here); every label (signal names,
which a bundle supplies) is handed to the template, which escapes it. Markers are vertical lines at
given times (the alerts on a drift chart), each with its label and id.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

WIDTH, HEIGHT = 720, 220
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 12, 24
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")


@dataclass(frozen=True)
class Line:
    name: str
    points: str  # "x,y x,y ..." for <polyline points>; "" when the series has no value
    color: str


@dataclass(frozen=True)
class Marker:
    x: float
    label: str
    ident: str


@dataclass(frozen=True)
class Chart:
    title: str
    width: int
    height: int
    lines: list[Line]
    threshold_y: float | None  # None: no threshold drawn
    threshold_label: str
    markers: list[Marker]
    y_ticks: list[tuple[float, str]]  # (y, label)
    x_labels: list[tuple[float, str]]
    empty: bool


def line_chart(title: str, times: Sequence[float], series: Mapping[str, Sequence[float | None]], *,
               threshold: float | None = None, markers: Sequence[tuple[float, str, str]] = (),
               unit: str = "", threshold_name: str = "threshold") -> Chart:
    """A chart of series (one value per time, None for a gap) over times; markers are (time, label, id)."""
    values = [v for line in series.values() for v in line if v is not None and math.isfinite(v)]
    if threshold is not None:
        values.append(threshold)
    if not times or not values:
        return Chart(title, WIDTH, HEIGHT, [], None, "", [], [], [], True)
    t0, t1 = min(times), max(times)
    for at, _, _ in markers:
        t0, t1 = min(t0, at), max(t1, at)
    span = (t1 - t0) or 1.0
    top = max(values) * 1.1 or 1.0

    def x(at: float) -> float:
        return LEFT + (at - t0) / span * (WIDTH - LEFT - RIGHT)

    def y(value: float) -> float:
        return TOP + (1 - min(max(value, 0.0), top) / top) * (HEIGHT - TOP - BOTTOM)

    lines = []
    for index, (name, line) in enumerate(series.items()):
        points = " ".join(f"{x(at):.1f},{y(v):.1f}" for at, v in zip(times, line, strict=True)
                          if v is not None and math.isfinite(v))
        lines.append(Line(name, points, COLORS[index % len(COLORS)]))
    ticks = [(y(top * k / 4), f"{top * k / 4:.3g}{unit}") for k in range(5)]
    x_labels = [(x(at), _clock(at)) for at in (t0, t1)]
    return Chart(title, WIDTH, HEIGHT, lines, None if threshold is None else y(threshold),
                 "" if threshold is None else f"{threshold_name} {threshold:.3g}",
                 [Marker(x(at), label, ident) for at, label, ident in markers], ticks, x_labels, False)


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(at))
