"""Shared by the compression tests: a real tabular classifier (an MLP on scikit-learn's breast cancer
data, standardized), trained once per session. Tests copy the model before changing it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgefleet.cloud.training import FitOptions, fit_classifier


@pytest.fixture(scope="session")
def cancer():
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    data = load_breast_cancer()
    x_train, x_test, y_train, y_test = train_test_split(data.data, data.target, test_size=0.3, random_state=0,
                                                        stratify=data.target)
    scaler = StandardScaler().fit(x_train)
    x_train, x_test = (scaler.transform(x).astype(np.float32) for x in (x_train, x_test))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 2))
    fit_classifier(model, x_train, y_train, FitOptions(epochs=30))
    return model, x_train, y_train.astype(np.int64), x_test, y_test.astype(np.int64)
