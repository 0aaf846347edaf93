"""The trained breast-cancer MLP as a torch module, for
`edgefleet compress --torch-model examples.tabular_model:load`."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from examples.train_tabular import make_model


def load() -> torch.nn.Module:
    model = make_model()
    weights = Path(os.environ.get("EDGEFLEET_TABULAR_WEIGHTS", "runs/tabular/model.pt"))
    model.load_state_dict(torch.load(weights, weights_only=True))
    return model.eval()
