"""A tabular model for the compression stage of the main job: an MLP on scikit-learn's bundled breast
cancer data (569 real cases, 30 features), standardized, exported and signed like the digits CNN.

    python examples/train_tabular.py --out runs/tabular --key runs/keys/release.key

Writes runs/tabular/bundle, model.pt (for --torch-model examples.tabular_model:load) and data.npz with
two slices over the test rows: small and large tumours (mean radius below / above its median).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split

from edgefleet.cloud.training import FitOptions, accuracy, fit_classifier
from edgefleet.compilers import export_torch
from edgefleet.core.signing import SigningKey


def make_model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(30, 128), torch.nn.ReLU(), torch.nn.Linear(128, 128),
                               torch.nn.ReLU(), torch.nn.Linear(128, 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/tabular"))
    parser.add_argument("--key", type=Path, required=True)
    args = parser.parse_args()
    data = load_breast_cancer()
    x_train, x_test, y_train, y_test = train_test_split(data.data, data.target, test_size=0.3, random_state=0,
                                                        stratify=data.target)
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    x_train, x_test = ((x - mean) / std for x in (x_train, x_test))
    x_train, x_test = x_train.astype(np.float32), x_test.astype(np.float32)
    torch.manual_seed(0)
    model = make_model()
    fit_classifier(model, x_train, y_train, FitOptions(epochs=30, lr=1e-3))
    print(f"breast cancer MLP: held-out accuracy {accuracy(model, x_test, y_test):.4f}")
    shutil.rmtree(args.out / "bundle", ignore_errors=True)
    with contextlib.redirect_stdout(sys.stderr):
        export_torch(model, x_train[:4], args.out / "bundle", name="breast-cancer-mlp", version=1,
                     reference_data=x_train, labels=y_train, eval_data=(x_test, y_test),
                     class_names=list(data.target_names), input_names=["features"], output_names=["logits"],
                     preprocessing="30 features of scikit-learn's breast cancer data, standardized with the "
                                   "training split's mean and std", signing_key=SigningKey.load(args.key))
    torch.save(model.state_dict(), args.out / "model.pt")
    radius = x_test[:, 0]  # "mean radius", standardized
    np.savez(args.out / "data.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
             slice_small_tumours=radius < np.median(radius), slice_large_tumours=radius >= np.median(radius))


if __name__ == "__main__":
    main()
