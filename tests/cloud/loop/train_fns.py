"""Training functions as a user writes them for `edgefleet loop stage train --train-fn tests.cloud.loop.train_fns:NAME`
(test_stage_train.py), on the project's digits CNN. One torch thread: on a shared 2-core host the default
thread count made each run far slower. `serving` rebuilds the serving model from the state dict whose path
is in $EDGEFLEET_TEST_SERVING_WEIGHTS (a bundle holds ONNX, not torch weights)."""

from __future__ import annotations

import os

import numpy as np
import torch

from edgefleet.cloud.digits import DigitsCNN
from edgefleet.cloud.training import FitOptions, fit_classifier

FINETUNE = FitOptions(epochs=8, lr=3e-3, seed=0)
SCRATCH = FitOptions(epochs=6, seed=0)


def serving() -> DigitsCNN:
    model = DigitsCNN()
    model.load_state_dict(torch.load(os.environ["EDGEFLEET_TEST_SERVING_WEIGHTS"], weights_only=True))
    return model.eval()


def train(old, reference, dataset, mode):  # noqa: ANN001, ANN201 - the contract's plain arguments
    """finetune: the serving model on the new data only; scratch: a new model on reference + new data."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if mode == "finetune":
        fit_classifier(old, dataset["pixels"], dataset["y"], FINETUNE)
        return old
    parts = [d for d in (reference, dataset) if d is not None]
    model = DigitsCNN()
    fit_classifier(model, np.concatenate([d["pixels"] for d in parts]), np.concatenate([d["y"] for d in parts]),
                   SCRATCH)
    return model


def returns_weights(old, reference, dataset, mode):  # noqa: ANN001, ANN201
    return old.state_dict()


def wrong_width(old, reference, dataset, mode):  # noqa: ANN001, ANN201
    """A head for 3 classes where the serving model has 10."""
    model = DigitsCNN()
    model.head = torch.nn.Linear(model.head.in_features, 3)
    return model


def raises(old, reference, dataset, mode):  # noqa: ANN001, ANN201
    raise ValueError(f"no GPU for {len(dataset['y'])} rows")


not_a_function = 42


def fresh() -> DigitsCNN:
    """The serving architecture with new random weights: not the serving model."""
    torch.manual_seed(1)
    return DigitsCNN().eval()
