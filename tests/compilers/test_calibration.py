"""Confidence calibration at export (accuracy without labels, core/calibration.py): the digits CNN's profile
holds a monotone map fitted on its held-out split, whose estimate matches the measured accuracy on clean
data and falls when brightened inputs make the model unsure."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from edgefleet.compilers.calibration import confidence_calibration
from edgefleet.core.calibration import calibration_of, estimated_accuracy
from edgefleet.core.errors import ExportError
from edgefleet.core.profile import bin_counts, class_confidence
from edgefleet.edge_runtime.sim import drifted


@pytest.fixture(scope="module")
def profile(digits_bundle) -> dict:
    return json.loads((digits_bundle.root / "profile.json").read_text())


def window_estimate(digits_bundle, profile: dict, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(estimated, measured) accuracy of the bundle's model on x, the estimate from the confidence
    histogram alone, as the cloud computes it from a telemetry window."""
    session = ort.InferenceSession(str(digits_bundle.root / "model.onnx"))
    predicted, confidence = class_confidence(session.run(None, {"pixels": x})[0], "softmax")
    counts = bin_counts(confidence[:, None], np.asarray([profile["confidence"]["edges"]]))[0]
    return estimated_accuracy(counts.tolist(), calibration_of(profile)), float((predicted == y).mean())


def test_the_export_calibrates_on_held_out_data(digits_bundle, profile):
    calibration = calibration_of(profile)
    manifest = json.loads((digits_bundle.root / "manifest.json").read_text())
    assert calibration["on"] == "eval" and calibration["count"] == 450
    assert calibration["measured_accuracy"] == pytest.approx(manifest["metrics"]["eval"]["accuracy"])
    accuracy = calibration["accuracy"]
    assert len(accuracy) == len(profile["confidence"]["edges"]) + 1
    assert all(a <= b for a, b in zip(accuracy, accuracy[1:], strict=False))  # more confident, more often right
    assert calibration["expected_accuracy"] == pytest.approx(calibration["measured_accuracy"], abs=0.01)


def test_the_estimate_falls_when_brightened_inputs_make_the_model_unsure(digits_bundle, profile, digits_splits):
    x, y = digits_splits.x_test, digits_splits.y_test
    clean_estimate, clean = window_estimate(digits_bundle, profile, x, y)
    shifted_estimate, shifted = window_estimate(digits_bundle, profile, drifted("brightness", x, 0.4, None), y)
    assert clean_estimate == pytest.approx(clean, abs=0.02)
    assert shifted < clean - 0.15  # the shift hurts ...
    assert shifted_estimate < clean_estimate - 0.05  # ... and the label-free estimate sees part of it
    assert shifted_estimate > shifted  # CBPE's known limit: under covariate shift it is optimistic


def test_a_calibration_needs_one_label_per_sample():
    with pytest.raises(ExportError, match="one label per sample: 3 samples, 2 labels"):
        confidence_calibration(np.zeros((3, 4)), np.zeros(2), "softmax", [0.5], "eval")
