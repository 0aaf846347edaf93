"""An EfficientNet-Lite-class CNN (random weights, built from tests/compilers/edge_cnns.py) exported to a bundle,
with calibration and held-out crops of different scikit-image photos, for the int8 correction tests."""

from __future__ import annotations

import contextlib
import sys

import numpy as np
import onnxruntime as ort

from edgefleet.compilers import export_torch
from tests.compilers.edge_cnns import SIZE, build
from tests.natural_images import CALIBRATION_PHOTOS, TEST_PHOTOS, crops, efficientnet_input


def lite_cnn(work, rows: int):  # noqa: ANN001, ANN201 - a folder; (bundle, calibration, held_out, work)
    """The exported float bundle in work/float, `rows` calibration crops and `rows` held-out crops."""
    calibration = efficientnet_input(crops(CALIBRATION_PHOTOS, rows, seed=0, size=SIZE))
    held_out = efficientnet_input(crops(TEST_PHOTOS, rows, seed=1, size=SIZE))
    with contextlib.redirect_stdout(sys.stderr):
        bundle = export_torch(build("efficient-lite"), calibration[:2], work / "float", name="lite", version=1,
                              reference_data=calibration[:16], input_names=["image"], output_names=["logits"],
                              task="classification")
    return bundle, calibration, held_out, work


def logits(model, x: np.ndarray) -> np.ndarray:  # noqa: ANN001 - a path or the model's bytes
    data = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
