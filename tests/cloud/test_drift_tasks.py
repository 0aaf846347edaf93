"""Drift of per-task output summaries end to end: a bundle exported with its reference data, served by the
real Predictor with telemetry on, its window sent as a payload and judged by the cloud against the
bundle's own reference profile.

Two models users would bring, fitted on data that ships with scikit-learn:
- diabetes progression: a linear regression (fitted by least squares) exported as torch nn.Linear, with
  the dataset's column names; clean traffic is the held-out third, drifted traffic the same patients with
  a higher body-mass index (bmi + 0.06, 1.3 of its standard deviation; + 0.03 moves the 148 predictions
  by a PSI of 0.24, under the 0.46 that sample size needs);
- digit embeddings: the 16 principal components of the 8x8 digits as nn.Linear; drifted traffic has 25%
  more contrast around the mean image, so every embedding is 25% longer and points the same way.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_diabetes, load_digits
from sklearn.linear_model import LinearRegression
from torch import nn

from edgefleet.cloud.drift import DRIFT, OK, WindowCounts, evaluate
from edgefleet.compilers.export import export_torch
from edgefleet.core.bundle import Bundle
from edgefleet.core.signing import SigningKey
from edgefleet.core.telemetry import parse_telemetry
from edgefleet.edge_runtime.predictor import Predictor
from edgefleet.edge_runtime.telemetry import TelemetryAggregator

pytestmark = pytest.mark.slow  # exports two bundles through torch.onnx


def held_out(count: int) -> np.ndarray:
    return np.arange(count) % 3 == 0  # every third sample, no random draw


def linear(weight: np.ndarray, bias: np.ndarray) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(weight.astype(np.float32)))
        layer.bias.copy_(torch.from_numpy(bias.astype(np.float32)))
    return layer.eval()


@pytest.fixture(scope="module")
def key_and_public(tmp_path_factory) -> tuple[SigningKey, object]:
    key = SigningKey.generate()
    return key, key.save(tmp_path_factory.mktemp("keys"), "release")[1]


def window_counts(bundle: Bundle, public, x: np.ndarray) -> WindowCounts:
    """Serves x in requests of 16 with telemetry on; the closed window as the cloud parses it."""
    with Predictor(bundle.root, trusted_keys=[public], threads=1) as predictor:
        aggregator = TelemetryAggregator(predictor.bundle, fleet="lab", device="pi-01")
        predictor.enable_telemetry(aggregator)
        for start in range(0, len(x), 16):
            predictor.predict(x[start:start + 16])
        window = aggregator.close_window()
    return WindowCounts.from_telemetry(parse_telemetry(window.with_seq(1).to_payload()))


@pytest.fixture(scope="module")
def diabetes(tmp_path_factory, key_and_public):
    data = load_diabetes()
    x, held = data.data.astype(np.float32), held_out(len(data.data))
    fitted = LinearRegression().fit(x[~held], data.target[~held])
    model = linear(fitted.coef_[None, :], np.atleast_1d(fitted.intercept_))
    bundle = export_torch(model, x[:4], tmp_path_factory.mktemp("diabetes") / "bundle", name="diabetes", version=1,
                          reference_data=x[~held], input_names=["x"], output_names=["progression"],
                          task="regression", feature_names=list(data.feature_names), signing_key=key_and_public[0])
    return bundle, x[held]


@pytest.fixture(scope="module")
def embedder(tmp_path_factory, key_and_public):
    x = (load_digits().data / 16.0).astype(np.float32)
    held = held_out(len(x))
    mean = x[~held].mean(axis=0)
    components = np.linalg.svd(x[~held] - mean, full_matrices=False)[2][:16]
    model = linear(components, -(components @ mean))
    bundle = export_torch(model, x[:4], tmp_path_factory.mktemp("digits") / "bundle", name="digits-embedding",
                          version=1, reference_data=x[~held], input_names=["pixels"], output_names=["embedding"],
                          task="embedding", signing_key=key_and_public[0])
    return bundle, x[held], mean


def test_held_out_patients_are_ok_and_a_higher_bmi_moves_inputs_and_predictions(diabetes, key_and_public):
    bundle, x = diabetes
    profile = bundle.reference_profile()
    clean = evaluate(window_counts(bundle, key_and_public[1], x), profile)
    assert clean["verdict"] == OK, clean
    assert list(clean["prediction_drift"]["signals"]) == ["progression.progression[0]"]
    assert clean["prediction_drift"]["signals"]["progression.progression[0]"]["n"] == len(x) == 148
    heavier = x.copy()
    heavier[:, 2] += 0.06  # bmi
    drifted = evaluate(window_counts(bundle, key_and_public[1], heavier), profile)
    assert drifted["data_drift"]["drifting"] == ["bmi"]
    assert drifted["prediction_drift"]["drifting"] == ["progression.progression[0]"]


def test_longer_embeddings_drift_on_the_norm_and_not_on_the_projections(embedder, key_and_public):
    bundle, x, mean = embedder
    profile = bundle.reference_profile()
    rows = ["embedding.norm"] + [f"embedding.proj{i}" for i in range(8)]
    clean = evaluate(window_counts(bundle, key_and_public[1], x), profile)
    assert list(clean["prediction_drift"]["signals"]) == rows
    assert clean["prediction_drift"]["verdict"] == OK, clean["prediction_drift"]
    contrast = (mean + 1.25 * (x - mean)).astype(np.float32)
    drifted = evaluate(window_counts(bundle, key_and_public[1], contrast), profile)
    assert drifted["verdict"] == DRIFT and drifted["prediction_drift"]["drifting"] == ["embedding.norm"]
