"""Telemetry inside the Predictor: one native sketch update per request, one summary per window.

    aggregator = TelemetryAggregator(predictor.bundle, fleet="lab", device="pi-07")
    predictor.enable_telemetry(aggregator)
    ...                                          # requests are observed as they are served
    window = aggregator.close_window()           # a TelemetryWindow (seq 0; the outbox assigns it)

The per-request work is one call into cpp_ext's RequestSketch: the features of the first input on the
reference profile's bin edges (per-channel mean/std taps for images, columns for tabular data), the
predicted class and its confidence, and the latency. A model with several inputs pays one more call
per extra input (features only). Counters live in C++ and are updated with the GIL held, so HTTP
threads predicting while a timer thread closes the window lose no count.
"""

from __future__ import annotations

import time

import numpy as np

from edgefleet.core.bundle import Bundle
from edgefleet.core.errors import EdgefleetError
from edgefleet.core.telemetry import LATENCY_EDGES_MS, FeatureCounts, TelemetryWindow
from edgefleet.cpp_ext import RequestSketch


class TelemetryAggregator:
    def __init__(self, bundle: Bundle, *, fleet: str, device: str, clock=time.time) -> None:  # noqa: ANN001
        profile = bundle.reference_profile()
        if profile is None:
            raise EdgefleetError(f"bundle {bundle.name} v{bundle.version} has no reference profile; export it with "
                                 f"reference_data to enable telemetry")
        interface = bundle.manifest["interface"]
        self.fleet, self.device = fleet, device
        self.model_name, self.model_version = bundle.name, bundle.version
        self.clock = clock
        features = {f["input"]: f for f in profile["features"]}
        inputs = [spec.name for spec in bundle.inputs]
        missing = [name for name in inputs if name not in features]
        if missing:
            raise EdgefleetError(f"the reference profile has no features for inputs {missing}")
        classifier = interface.get("task") == "classification" and "confidence" in profile
        n_classes = len(profile["predictions"]["counts"]) if classifier else 0
        confidence_edges = np.asarray(profile["confidence"]["edges"], np.float64) if classifier else None
        latency_edges = np.asarray(LATENCY_EDGES_MS, np.float64)
        self.input_names = inputs
        self.output_name = bundle.outputs[0].name if classifier else None
        first = features[inputs[0]]
        self.main = RequestSketch(first["kind"], np.asarray(first["edges"], np.float64), confidence_edges,
                                  latency_edges, n_classes, interface.get("postprocess") == "softmax")
        self.extra = [
            (name, RequestSketch(features[name]["kind"], np.asarray(features[name]["edges"], np.float64), None,
                                 latency_edges, 0, False))
            for name in inputs[1:]
        ]
        self.window_start = clock()

    def observe(self, feed: dict[str, np.ndarray], outputs: dict[str, np.ndarray], latency_ns: int) -> None:
        """The general path (the Predictor inlines the single-input case)."""
        scores = outputs[self.output_name] if self.output_name else None
        self.main.update(feed[self.input_names[0]], scores, latency_ns)
        for name, sketch in self.extra:
            sketch.update(feed[name], None, latency_ns)

    def error(self, latency_ns: int) -> None:
        self.main.error(latency_ns)

    def close_window(self) -> TelemetryWindow:
        """Takes the counts of the window that ends now and starts the next one."""
        end = self.clock()
        snap = self.main.snapshot(reset=True)
        extra = [(name, sketch.snapshot(reset=True)) for name, sketch in self.extra]
        start, self.window_start = self.window_start, end
        features = [FeatureCounts(self.input_names[0], _rows(snap["features"]))]
        features += [FeatureCounts(name, _rows(s["features"])) for name, s in extra]
        return TelemetryWindow(
            fleet=self.fleet, device=self.device, seq=0, model_name=self.model_name,
            model_version=self.model_version, start=start, end=end, requests=int(snap["requests"]),
            samples=int(snap["samples"]), errors=int(snap["errors"]), latency_ms=tuple(snap["latency"].tolist()),
            features=tuple(features), predictions=tuple(snap["predictions"].tolist()),
            confidence=tuple(snap["confidence"].tolist()) if self.output_name else (),
        )


def _rows(counts: np.ndarray) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(row) for row in counts.tolist())
