"""Running totals of the device's telemetry, and their Prometheus text exposition for GET /metrics.

Windows reset the native counters each time they close; these totals add every closed window to the
counts of the open one, so Prometheus sees counters that only grow.
"""

from __future__ import annotations

import threading

import numpy as np

from edgefleet.core.telemetry import LATENCY_EDGES_MS, TelemetryWindow


class Totals:
    def __init__(self, class_names: list[str]) -> None:
        self.class_names = class_names
        self.requests = self.samples = self.errors = self.windows = 0
        self.latency = np.zeros(len(LATENCY_EDGES_MS) + 2, np.int64)
        self.predictions = np.zeros(len(class_names), np.int64)
        self._lock = threading.Lock()

    def add(self, window: TelemetryWindow) -> None:
        with self._lock:
            self.requests += window.requests
            self.samples += window.samples
            self.errors += window.errors
            self.windows += 1
            self.latency += np.asarray(window.latency_ms, np.int64)
            if window.predictions:
                self.predictions += np.asarray(window.predictions, np.int64)

    def render(self, open_window: dict, labels: dict[str, str], gauges: dict[str, float]) -> str:
        """Prometheus text format 0.0.4. open_window is RequestSketch.snapshot(reset=False)."""
        with self._lock:
            requests = self.requests + int(open_window["requests"])
            errors = self.errors + int(open_window["errors"])
            samples = self.samples + int(open_window["samples"])
            latency = self.latency + open_window["latency"]
            predictions = self.predictions + (open_window["predictions"] if len(self.predictions) else 0)
        base = ",".join(f'{k}="{v}"' for k, v in labels.items())
        lines = [
            "# HELP edgefleet_requests_total Prediction requests served.",
            "# TYPE edgefleet_requests_total counter",
            f"edgefleet_requests_total{{{base}}} {requests}",
            "# HELP edgefleet_request_errors_total Prediction requests that failed.",
            "# TYPE edgefleet_request_errors_total counter",
            f"edgefleet_request_errors_total{{{base}}} {errors}",
            "# HELP edgefleet_samples_total Samples (rows of the batch axis) predicted.",
            "# TYPE edgefleet_samples_total counter",
            f"edgefleet_samples_total{{{base}}} {samples}",
            "# HELP edgefleet_predict_latency_seconds Predict latency, validation included.",
            "# TYPE edgefleet_predict_latency_seconds histogram",
        ]
        cumulative = np.cumsum(latency[:-1])  # the last column is NaN, which latency never is
        for edge, count in zip(LATENCY_EDGES_MS, cumulative[:-1], strict=True):
            lines.append(f'edgefleet_predict_latency_seconds_bucket{{{base},le="{edge / 1000:g}"}} {count}')
        lines.append(f'edgefleet_predict_latency_seconds_bucket{{{base},le="+Inf"}} {cumulative[-1]}')
        lines.append(f"edgefleet_predict_latency_seconds_count{{{base}}} {cumulative[-1]}")
        if len(self.class_names):
            lines += ["# HELP edgefleet_predictions_total Predicted classes.",
                      "# TYPE edgefleet_predictions_total counter"]
            lines += [f'edgefleet_predictions_total{{{base},class="{name}"}} {count}'
                      for name, count in zip(self.class_names, predictions, strict=True)]
        for name, value in gauges.items():
            lines += [f"# TYPE edgefleet_{name} gauge", f"edgefleet_{name}{{{base}}} {value:g}"]
        return "\n".join(lines) + "\n"
