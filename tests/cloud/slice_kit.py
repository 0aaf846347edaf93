"""Real predictions per slice for the slice tests: scikit-learn's breast-cancer data (569 tumours, 30
measurements), a logistic regression trained on half of it, and two natural slices, "large" and "small"
tumours (mean radius above or below the training median). A quarter of the data is the bundle's held-out
"eval" split (its per-slice metrics, core/metrics.py); the last quarter is the live traffic, whose "large"
slice can be read by a miscalibrated scanner (every measurement `scale` times its value).

`window` turns (true, predicted) pairs per slice into a telemetry window as a device sends it: totals,
and per slice its samples and the labels that arrived (confusion counts)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from edgefleet.cloud.db import TelemetryRecord
from edgefleet.core.labels import LabelCounts, merge_labels
from edgefleet.core.metrics import classification_metrics
from edgefleet.core.slices import SliceCounts
from edgefleet.core.telemetry import LATENCY_EDGES_MS, TelemetryWindow

MODEL = "cancer-lr"


@dataclass(frozen=True)
class Cancer:
    model: object
    cut: float  # training median of the mean radius
    x_live: np.ndarray
    y_live: np.ndarray
    metrics: dict  # the eval split's classification_metrics, with per_slice

    def slices(self, x: np.ndarray) -> dict[str, np.ndarray]:
        large = x[:, 0] > self.cut
        return {"large": large, "small": ~large}

    def traffic(self, scale: float = 1.0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{slice: (true, predicted)} of every live row, the large slice read at `scale`."""
        out = {}
        for name, mask in self.slices(self.x_live).items():
            x = self.x_live[mask] * (scale if name == "large" else 1.0)
            out[name] = (self.y_live[mask], self.model.predict(x))
        return out

    def manifest(self) -> dict:
        return {"name": MODEL, "version": 1, "metrics": {"eval": self.metrics}}


@functools.cache
def cancer() -> Cancer:
    x, y = load_breast_cancer(return_X_y=True)
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.5, random_state=0, stratify=y)
    x_eval, x_live, y_eval, y_live = train_test_split(x_rest, y_rest, test_size=0.5, random_state=0, stratify=y_rest)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x_train, y_train)
    cut = float(np.median(x_train[:, 0]))
    large = x_eval[:, 0] > cut
    metrics = classification_metrics(model.predict_proba(x_eval), y_eval, postprocess="none",
                                     slices={"large": large, "small": ~large})
    return Cancer(model, cut, x_live, y_live, metrics)


def confusion(true: np.ndarray, predicted: np.ndarray) -> LabelCounts:
    pairs, counts = np.unique(np.stack([true, predicted], axis=1), axis=0, return_counts=True)
    return LabelCounts(int(counts.sum()), confusion=tuple((int(t), int(p), int(n))
                                                          for (t, p), n in zip(pairs, counts, strict=True)))


def accuracy(parts: dict[str, tuple[np.ndarray, np.ndarray]], name: str) -> float:
    true, predicted = parts[name]
    return float((true == predicted).mean())


def window(fleet: str, device: str, seq: int, end: float, parts: dict[str, tuple[np.ndarray, np.ndarray]],
           version: int = 1) -> TelemetryWindow:
    slices = tuple(SliceCounts(name, len(true), (), confusion(true, predicted))
                   for name, (true, predicted) in parts.items())
    samples = sum(s.samples for s in slices)
    return TelemetryWindow(fleet, device, seq, MODEL, version, end - 1, end, samples, samples, 0,
                           (0,) * (len(LATENCY_EDGES_MS) + 2),
                           labels=merge_labels([s.labels for s in slices]), slices=slices)


def record(w: TelemetryWindow) -> TelemetryRecord:
    """The row the ingest stores for a window."""
    return TelemetryRecord(device_id=w.device, fleet=w.fleet, seq=w.seq, model_name=w.model_name,
                           model_version=w.model_version, window_start=w.start, window_end=w.end,
                           requests=w.requests, samples=w.samples, errors=w.errors, payload=w.to_payload().decode())


def split(parts: dict[str, tuple[np.ndarray, np.ndarray]], pieces: int) -> list[dict]:
    """The pairs cut into `pieces` windows' worth, in order."""
    return [{name: (true[i::pieces], predicted[i::pieces]) for name, (true, predicted) in parts.items()}
            for i in range(pieces)]
