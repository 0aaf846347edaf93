"""The trained digits CNN as a torch module, for `edgefleet compress --torch-model examples.digits_model:load`
(the steps that retrain, such as pruning with fine-tuning, need the torch model, not only its ONNX)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from edgefleet.cloud.digits import DigitsCNN


def load() -> torch.nn.Module:
    weights = Path(os.environ.get("EDGEFLEET_DIGITS_WEIGHTS", "runs/digits/model.pt"))
    model = DigitsCNN()
    model.load_state_dict(torch.load(weights, weights_only=True))
    return model.eval()
