"""The digits example: scikit-learn's bundled 8x8 handwritten digits (real data, offline) and a small
CNN. The main job, the tests and the benchmarks all build their model and bundle here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from edgefleet.cloud.training import FitOptions, fit_classifier
from edgefleet.core.signing import SigningKey

CLASS_NAMES = [str(d) for d in range(10)]
PREPROCESSING = "8x8 grey image, pixel values 0..16 divided by 16, shape [batch, 1, 8, 8] float32"


@dataclass(frozen=True)
class DigitsSplits:
    x_train: np.ndarray  # (N, 1, 8, 8) float32 in [0, 1]
    y_train: np.ndarray  # (N,) int64
    x_test: np.ndarray
    y_test: np.ndarray


def load_splits(test_size: float = 0.25, seed: int = 0) -> DigitsSplits:
    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None, :, :]
    y = data.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y)
    return DigitsSplits(x_train, y_train, x_test, y_test)


class DigitsCNN(torch.nn.Module):
    """Two conv blocks and a linear head: about 11k parameters."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(width, 2 * width, 3, padding=1)
        self.head = torch.nn.Linear(2 * width * 2 * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.head(torch.flatten(x, 1))


def train_digits_cnn(splits: DigitsSplits, epochs: int = 15, seed: int = 0, on_epoch=None) -> DigitsCNN:
    torch.manual_seed(seed)
    model = DigitsCNN()
    fit_classifier(model, splits.x_train, splits.y_train, FitOptions(epochs=epochs, seed=seed), on_epoch)
    return model


def build_digits_bundle(workdir: Path, *, epochs: int = 15, version: int = 1, seed: int = 0) -> tuple[Path, Path]:
    """Trains the digits CNN, exports and signs it. Returns (bundle directory, trusted public key)."""
    from edgefleet.compilers import export_torch

    workdir = Path(workdir)
    splits = load_splits(seed=seed)
    model = train_digits_cnn(splits, epochs=epochs, seed=seed)
    key = SigningKey.generate()
    _, public = key.save(workdir / "keys", "release")
    bundle = export_torch(
        model, splits.x_train[:4], workdir / "bundle", name="digits-cnn", version=version,
        reference_data=splits.x_train, labels=splits.y_train, eval_data=(splits.x_test, splits.y_test),
        class_names=CLASS_NAMES, input_names=["pixels"], output_names=["logits"],
        preprocessing=PREPROCESSING, signing_key=key,
        model_card={"intended_use": "demo: classify 8x8 handwritten digits",
                    "training_data": "scikit-learn digits (UCI), stratified 75% split"},
    )
    return bundle.root, public
