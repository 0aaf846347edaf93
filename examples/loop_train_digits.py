"""Training functions for a retraining policy on the digits CNN (`[training] function =
"examples.loop_train_digits:retrain"`), as a user writes them: each is called as f(old_model, reference,
dataset, mode) with dicts of numpy arrays ("pixels", "y") and returns a torch model.

- `retrain`: scratch trains a new CNN on the reference data and the captured data together; finetune
  trains the serving model on the captured data mixed with as many reference rows, so the old condition
  is not forgotten.
- `careless`: the same CNN trained on the captured data with its labels shuffled (a bug in the label
  join, the kind a pipeline meets): offline evaluation refuses it, and forced past that, the canary's
  accuracy gate stops it.

One torch thread: on a small shared machine the default thread count made training far slower.
"""

from __future__ import annotations

import numpy as np
import torch

from edgefleet.cloud.digits import DigitsCNN
from edgefleet.cloud.training import FitOptions, fit_classifier

OPTIONS = FitOptions(epochs=15, seed=0)  # 6 epochs lost 0.016 on clean digits: refused on that critical slice
CARELESS = FitOptions(epochs=3, seed=0)  # shuffled labels teach nothing however long it trains


def _fit(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, options: FitOptions = OPTIONS) -> torch.nn.Module:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    fit_classifier(model, x, y, options)
    return model


def retrain(old, reference, dataset, mode):  # noqa: ANN001, ANN201 - the contract's plain arguments
    if mode == "finetune":
        parts = [dataset] + ([{k: v[:len(dataset["y"])] for k, v in reference.items()}] if reference else [])
        model = old
    else:
        parts = [d for d in (reference, dataset) if d is not None]
        torch.manual_seed(0)
        model = DigitsCNN()
    return _fit(model, np.concatenate([d["pixels"] for d in parts]), np.concatenate([d["y"] for d in parts]))


def careless(old, reference, dataset, mode):  # noqa: ANN001, ANN201
    labels = np.random.default_rng(0).permutation(dataset["y"])
    torch.manual_seed(0)
    return _fit(DigitsCNN(), dataset["pixels"], labels, CARELESS)
