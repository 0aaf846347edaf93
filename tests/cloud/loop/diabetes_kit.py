"""scikit-learn's diabetes data (real, bundled) and a regression MLP trained on it, shared by the
regression tests of the offline evaluation and the freshness report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edgefleet.core.signing import SigningKey
from tests.compilers.import_kit import RegressionMLP


def diabetes_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, x_test, y_train, y_test): columns scaled to unit sd, 35% held out, a fixed seed."""
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split

    data = load_diabetes()
    x = (data.data / data.data.std(axis=0)).astype(np.float32)
    return tuple(train_test_split(x, data.target.astype(np.float32), test_size=0.35, random_state=0))


def fit_regression(x: np.ndarray, y: np.ndarray) -> RegressionMLP:
    """The MLP fitted on mean absolute error, on one torch thread (a shared 2-core host)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = RegressionMLP(features=x.shape[1])
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        inputs, targets = torch.from_numpy(x), torch.from_numpy(y[:, None])
        for _ in range(400):
            optimizer.zero_grad()
            torch.nn.functional.l1_loss(model(inputs), targets).backward()
            optimizer.step()
        return model.eval()
    finally:
        torch.set_num_threads(threads)


def export_diabetes(x_train: np.ndarray, y_train: np.ndarray, folder: Path, version: int,
                    key: SigningKey) -> Path:
    """A signed regression bundle "diabetes" of the MLP fitted on (x_train, y_train); returns its root."""
    from edgefleet.compilers import export_torch

    return export_torch(fit_regression(x_train, y_train), x_train[:4], folder, name="diabetes", version=version,
                        task="regression", input_names=["features"], output_names=["progression"],
                        reference_data=x_train, signing_key=key).root
