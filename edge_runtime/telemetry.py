"""Telemetry inside the Predictor: one native sketch update per request, one summary per window.

    aggregator = TelemetryAggregator(predictor.bundle, fleet="lab", device="pi-07")
    predictor.enable_telemetry(aggregator)
    ...                                          # requests are observed as they are served
    window = aggregator.close_window()           # a TelemetryWindow (seq 0; the outbox assigns it)

The inputs profiled are exactly the ones the manifest declares (interface `profiled_inputs`; a bundle
written before it: the ones its reference profile has features for); a recurrent state, a scalar or
token ids are not, and cost nothing. The per-request work is one call into cpp_ext's RequestSketch: the
features of the first profiled input on the reference profile's bin edges (per-channel mean/std taps
for images, columns for tabular data; an input whose batch axis is not axis 0 is moved first), the
predicted class and its confidence, and the latency. A model with several profiled inputs pays one more
call per extra input (features only); a model with none pays one call for the counts and latency.
Counters live in C++ and are updated with the GIL held, so HTTP threads predicting while a timer thread
closes the window lose no count.

Data quality (non-finite values, values outside the reference range, stuck inputs) costs no extra call:
the sketches bin on the profile's edges plus a few more, rebuilt at every window close around the last
request's values (edge_runtime/data_quality.py), and the counts are split back at the close.

Output summaries (regression values, embedding norm and projections, detection count and scores) are
binned in numpy by core/output_summary.py `summarise_outputs`, the function that built the reference
profile's, a buffer of samples at a time (edge_runtime/output_window.py). A bundle without a reference
profile has no telemetry: the constructor raises `NoReferenceProfile` and the agent serves the model with
telemetry off.
"""

from __future__ import annotations

import time

import numpy as np

from edgefleet.core.bundle import Bundle
from edgefleet.core.detection import read as read_detection
from edgefleet.core.errors import EdgefleetError
from edgefleet.core.labels import error_edges
from edgefleet.core.output_summary import OutputSummary
from edgefleet.core.profile import extract_features
from edgefleet.core.schema import batch_axis, sample_count
from edgefleet.core.telemetry import LATENCY_EDGES_MS, FeatureCounts, OutputCounts, TelemetryWindow
from edgefleet.core.window_quality import QualityCounts
from edgefleet.cpp_ext import RequestSketch
from edgefleet.edge_runtime.data_quality import FeatureQuality
from edgefleet.edge_runtime.feedback import LabelWindow
from edgefleet.edge_runtime.output_window import OutputWindow
from edgefleet.edge_runtime.slices import SliceWindow

_NO_FEATURES = np.zeros((0, 1), np.float64)


class NoReferenceProfile(EdgefleetError):
    """The bundle was made without reference data: there is nothing to bin its traffic against."""


class TelemetryAggregator:
    def __init__(self, bundle: Bundle, *, fleet: str, device: str, clock=time.time) -> None:  # noqa: ANN001
        profile = bundle.reference_profile()
        if profile is None:
            raise NoReferenceProfile(f"bundle {bundle.name} v{bundle.version} has no reference profile (it was made "
                                     f"without reference data): export or import it with reference data to enable "
                                     f"telemetry")
        interface = bundle.manifest["interface"]
        self.fleet, self.device = fleet, device
        self.model_name, self.model_version = bundle.name, bundle.version
        self.clock = clock
        features = {f["input"]: f for f in profile["features"]}
        declared = interface.get("profiled_inputs")
        profiled = list(declared) if declared is not None else [s.name for s in bundle.inputs if s.name in features]
        missing = [name for name in profiled if name not in features]
        if missing:
            raise EdgefleetError(f"the reference profile has no features for the profiled inputs {missing}")
        specs = {s.name: s for s in bundle.inputs}
        classifier = interface.get("task") == "classification" and "confidence" in profile
        n_classes = len(profile["predictions"]["counts"]) if classifier else 0
        confidence_edges = np.asarray(profile["confidence"]["edges"], np.float64) if classifier else None
        latency_edges = np.asarray(LATENCY_EDGES_MS, np.float64)
        self.input_names = profiled
        self.axes = {name: batch_axis(specs[name]) for name in profiled}
        # inputs the sketch cannot take as they come: batch off axis 0, or not float32/float64 (ints, bools,
        # float16 become float64, exactly, as core/profile.py extract_features makes them)
        self._reshaped = {name for name in profiled
                          if self.axes[name] or np.dtype(specs[name].dtype).char not in "fd"}
        self.output_name = bundle.outputs[0].name if classifier else None
        # data quality rides in the same sketches, on augmented edges rebuilt every window (data_quality.py)
        self._kinds = [features[name]["kind"] for name in profiled]
        self._quality = [FeatureQuality(features[name]) for name in profiled]
        self._sketch_args = (confidence_edges, latency_edges, n_classes, interface.get("postprocess") == "softmax")
        self.last_feed: dict[str, np.ndarray] | None = None  # the last request's inputs: the next probes
        self.main, self.extra, self._plans = self._sketches(None)
        self._retired = self.main, self.extra, self._plans  # swapped out at the last close
        self._all_inputs = bundle.inputs
        detection = read_detection(interface, bundle.outputs) if interface.get("task") == "detection" else None
        try:
            self.summaries = [OutputSummary.from_profile(entry, bundle.outputs, detection)
                              for entry in profile.get("outputs", [])]
        except ValueError as err:
            raise EdgefleetError(f"bundle {bundle.name} v{bundle.version}: {err}") from err
        self._outputs = OutputWindow(self.summaries, bundle.outputs)
        # labels that arrive later are counted here (edge_runtime/feedback.py); regression errors on the
        # profile's error edges, a classifier's as a confusion; other tasks take none
        # requests tagged with a slice are counted per slice as well (edge_runtime/slices.py), their labels too
        task = interface.get("task")
        edges = error_edges(profile) if task == "regression" and profile.get("outputs") else None
        self.slices = SliceWindow(confidence_edges, edges)
        self.labels = (LabelWindow(edges, slices=self.slices) if edges is not None
                       else LabelWindow(slices=self.slices) if classifier else None)
        self.window_start = clock()

    @property
    def fast_path(self) -> bool:
        """One input, profiled, batch on axis 0, a classifier, no output summaries: the Predictor inlines
        the one sketch call."""
        return (self.output_name is not None and not self.extra and not self.summaries
                and len(self._all_inputs) == 1 and self.input_names == [self._all_inputs[0].name]
                and not self._reshaped)

    def observe(self, feed: dict[str, np.ndarray], outputs: dict[str, np.ndarray], latency_ns: int) -> None:
        """The general path (the Predictor inlines the `fast_path` case)."""
        scores = outputs[self.output_name] if self.output_name else None
        reshaped = self._reshaped
        self.last_feed = feed
        if self.input_names:
            name = self.input_names[0]
            self.main.update(self._samples(feed, name) if name in reshaped else feed[name], scores, latency_ns)
        else:
            self.main.update(np.empty((sample_count(self._all_inputs, feed), 0), np.float32), scores, latency_ns)
        for name, sketch in self.extra:
            sketch.update(self._samples(feed, name) if name in reshaped else feed[name], None, latency_ns)
        if self.summaries:
            self._outputs.observe(outputs)

    def error(self, latency_ns: int) -> None:
        self.main.error(latency_ns)

    def close_window(self) -> TelemetryWindow:
        """Takes the counts of the window that ends now and starts the next one."""
        end = self.clock()
        # swap first, then read: a request that still holds the old sketch counts into it, and what it
        # adds after this read is read at the next close (compared with the probe of the window before:
        # for a stuck input every probe is the same value)
        retired, leftover = (self.main, self.extra, self._plans), self._retired
        self.main, self.extra, self._plans = self._sketches(self._probes())
        self._retired = retired
        snap, counts, quality = _take(*retired)
        late, late_counts, late_quality = _take(*leftover)
        for key in ("requests", "samples", "errors", "latency", "predictions", "confidence"):
            snap[key] = snap[key] + late[key]
        counts = [a + b for a, b in zip(counts, late_counts, strict=True)]
        quality = [a + b for a, b in zip(quality, late_quality, strict=True)]
        output_counts = self._outputs.take()
        start, self.window_start = self.window_start, end
        features = [FeatureCounts(name, _rows(c)) for name, c in zip(self.input_names, counts, strict=True)]
        labels, slices = self.labels.take_with_slices() if self.labels is not None else (None, self.slices.take())
        return TelemetryWindow(
            fleet=self.fleet, device=self.device, seq=0, model_name=self.model_name,
            model_version=self.model_version, start=start, end=end, requests=int(snap["requests"]),
            samples=int(snap["samples"]), errors=int(snap["errors"]), latency_ms=tuple(snap["latency"].tolist()),
            features=tuple(features), predictions=tuple(snap["predictions"].tolist()),
            confidence=tuple(snap["confidence"].tolist()) if self.output_name else (),
            outputs=tuple(OutputCounts(s.output, _rows(c)) for s, c in zip(self.summaries, output_counts, strict=True)),
            quality=tuple(QualityCounts(name, _rows(q)) for name, q in zip(self.input_names, quality, strict=True)),
            labels=labels, slices=slices,
        )

    def _sketches(self, probes: list[np.ndarray | None] | None) -> tuple:
        """The window's sketches (main, extra) and their quality plans, stuck tests against `probes`."""
        confidence_edges, latency_edges, n_classes, softmax = self._sketch_args
        plans = [q.plan(None if probes is None else probes[i]) for i, q in enumerate(self._quality)]
        if not plans:
            return RequestSketch("elements", _NO_FEATURES, confidence_edges, latency_edges, n_classes, softmax), [], []
        main = RequestSketch(self._kinds[0], plans[0].edges, confidence_edges, latency_edges, n_classes, softmax)
        extra = [(name, RequestSketch(kind, plan.edges, None, latency_edges, 0, False))
                 for name, kind, plan in zip(self.input_names[1:], self._kinds[1:], plans[1:], strict=True)]
        return main, extra, plans

    def _probes(self) -> list[np.ndarray | None] | None:
        """Each profiled input's features on the last sample of the last request (None: none yet)."""
        feed = self.last_feed
        if feed is None:
            return None
        probes: list[np.ndarray | None] = []
        for name, kind in zip(self.input_names, self._kinds, strict=True):
            value = self._samples(feed, name)
            probes.append(extract_features(value[-1:], kind)[0] if len(value) else None)
        return probes

    def _samples(self, feed: dict[str, np.ndarray], name: str) -> np.ndarray:
        """An input as the sketch takes it: samples on axis 0, C-contiguous, float32 or float64."""
        value, axis = feed[name], self.axes[name]
        if axis:
            value = np.moveaxis(value, axis, 0)
        if value.dtype.char not in "fd":
            return np.ascontiguousarray(value, dtype=np.float64)
        return np.ascontiguousarray(value)


def _take(main: RequestSketch, extra: list, plans: list) -> tuple[dict, list, list]:
    """A snapshot of retired sketches, their features folded back onto the profile's bins, and their
    quality counts."""
    snap = main.snapshot(reset=True)
    counts = [snap["features"], *(s.snapshot(reset=True)["features"] for _, s in extra)][:len(plans)]
    split = [plan.split(c) for plan, c in zip(plans, counts, strict=True)]
    return snap, [f for f, _ in split], [q for _, q in split]


def _rows(counts: np.ndarray) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(row) for row in counts.tolist())
