"""The device's Prometheus metrics for GET /metrics, kept and rendered by prometheus_client.

    metrics = DeviceMetrics(device="pi-07", fleet="lab", gauges=lambda: {"outbox_pending": 3})
    metrics.observe("digits-cnn", 3, code=200, seconds=0.0004)
    metrics.predicted("digits-cnn", 3, samples=2, classes=["7", "1"])
    text = metrics.render()                 # Prometheus text format, label values escaped

Each DeviceMetrics has its own CollectorRegistry (never the library's global one), so one process can
hold several devices (tests do). What is counted is what the HTTP API answered: every POST /v1/predict
request, whatever its answer, once, with the model that was serving when it came:

| metric | type | labels (besides device, fleet, model, version) |
|---|---|---|
| edgefleet_requests_total | counter | |
| edgefleet_request_errors_total | counter | code: the HTTP status of a request not answered 200 |
| edgefleet_samples_total | counter | rows of the batch axis answered with 200 |
| edgefleet_predict_latency_seconds | histogram | arrival to answer, reading and parsing included |
| edgefleet_predictions_total | counter | class: the predicted class name (classifiers) |

Gauges (labels device, fleet) come from the `gauges` callable at scrape time: each key `k` becomes
`edgefleet_k`. Calls in the device's own process (DeviceAgent.predict) are not HTTP requests: they are
counted in the MQTT telemetry windows only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edgefleet.core.telemetry import LATENCY_EDGES_MS

CONTENT_TYPE = CONTENT_TYPE_LATEST  # what generate_latest writes
MODEL_LABELS = ("device", "fleet", "model", "version")
GAUGE_HELP = {
    "window_seconds": "Length of a telemetry window.",
    "mqtt_connected": "1 while the MQTT connection is up.",
    "outbox_pending": "Telemetry and status messages waiting in the on-disk outbox.",
    "cpu_load": "1-minute load average per CPU core.",
    "memory_used": "Share of the memory in use (0 to 1).",
    "disk_free_bytes": "Free bytes on the filesystem of the device's data directory.",
    "temperature_c": "Hottest thermal zone in degrees Celsius (absent where the OS exposes none).",
    "uptime_seconds": "Seconds since the agent started.",
    "restarts": "Times the agent started before on this data directory.",
}


class DeviceMetrics:
    def __init__(self, *, device: str = "", fleet: str = "", gauges: Callable[[], dict[str, float]] = dict) -> None:
        self.device, self.fleet = device, fleet
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter("edgefleet_requests", "Prediction requests received (POST /v1/predict).",
                                MODEL_LABELS, registry=registry)
        self.errors = Counter("edgefleet_request_errors", "Prediction requests not answered 200, by HTTP status.",
                              (*MODEL_LABELS, "code"), registry=registry)
        self.samples = Counter("edgefleet_samples", "Samples (rows of the batch axis) predicted.",
                               MODEL_LABELS, registry=registry)
        self.latency = Histogram("edgefleet_predict_latency_seconds",
                                 "Time from a prediction request's arrival to its answer, parsing included.",
                                 MODEL_LABELS, buckets=[edge / 1000 for edge in LATENCY_EDGES_MS], registry=registry)
        self.predictions = Counter("edgefleet_predictions", "Predicted classes.", (*MODEL_LABELS, "class"),
                                   registry=registry)
        registry.register(_Gauges(device, fleet, gauges))

    def observe(self, model: str, version: int, *, code: int, seconds: float) -> None:
        """One answered prediction request: its HTTP status and how long it took."""
        labels = (self.device, self.fleet, model, str(version))
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)
        if code != 200:
            self.errors.labels(*labels, str(code)).inc()

    def predicted(self, model: str, version: int, samples: int, classes: Sequence[str] = ()) -> None:
        """The samples of a request answered 200 and, for a classifier, the class predicted for each."""
        labels = (self.device, self.fleet, model, str(version))
        self.samples.labels(*labels).inc(samples)
        counts: dict[str, int] = {}
        for name in classes:
            counts[name] = counts.get(name, 0) + 1
        for name, count in counts.items():
            self.predictions.labels(*labels, name).inc(count)

    def render(self) -> bytes:
        """The Prometheus text exposition (CONTENT_TYPE) of every metric, gauges read now."""
        return generate_latest(self.registry)


class _Gauges(Collector):
    """Reads the device's gauges at scrape time (no value kept here can go stale)."""

    def __init__(self, device: str, fleet: str, read: Callable[[], dict[str, float]]) -> None:
        self.labels, self.read = [device, fleet], read

    def collect(self) -> Iterator[Metric]:
        for name, value in self.read().items():
            family = GaugeMetricFamily(f"edgefleet_{name}", GAUGE_HELP.get(name, name.replace("_", " ")),
                                       labels=["device", "fleet"])
            family.add_metric(self.labels, float(value))
            yield family
