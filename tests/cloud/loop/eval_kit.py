"""Real models and data for the offline evaluation tests: scikit-learn's digits and the project's small
LeNet-style CNN (cloud/digits.py), trained here in a few seconds each (one torch thread: on a shared
2-core host the default thread count made each run ~100x slower).

The fleet's new input condition is the negative image (1 - pixels): the serving model saw only the
normal ones and fails on it. The held-out file holds the test split twice, `slice` "clean" and
"inverted", and a `digit` column (the label as text) for per-class slices.

- better: trained on both conditions;
- shifted: trained on inverted images only (better on "inverted", far worse on "clean");
- no_three: trained on both conditions without any 3 (worse on digit "3").
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgefleet.cloud.digits import CLASS_NAMES, DigitsCNN, load_splits
from edgefleet.cloud.training import FitOptions, fit_classifier
from edgefleet.core.signing import SigningKey

EPOCHS = 6


@dataclass(frozen=True)
class EvalKit:
    folder: Path
    bundles: dict[str, Path]  # serving, better, shifted, no_three: signed bundle directories (copy to use)
    public_key: Path
    private_key: Path
    heldout: Path  # .npz: pixels, y, slice, digit
    recent: Path  # .npz: inverted images of the training split's tail, with labels
    recent_unlabelled: Path

    def candidate(self, which: str, dest: Path) -> Path:
        """A private copy of a candidate bundle (evaluate writes its report into it and signs it again)."""
        return Path(shutil.copytree(self.bundles[which], dest / which))


def inverted(x: np.ndarray) -> np.ndarray:
    return (1.0 - x).astype(np.float32)


def train(x: np.ndarray, y: np.ndarray) -> DigitsCNN:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = DigitsCNN()
        fit_classifier(model, x, y, FitOptions(epochs=EPOCHS, seed=0))
        return model.eval()
    finally:
        torch.set_num_threads(threads)


def build(folder: Path) -> EvalKit:
    from edgefleet.compilers import export_torch

    splits = load_splits()
    key = SigningKey.generate()
    private, public = key.save(folder / "keys", "release")
    both_x = np.concatenate([splits.x_train, inverted(splits.x_train)])
    both_y = np.concatenate([splits.y_train, splits.y_train])
    keep = both_y != 3
    training = {"serving": (splits.x_train, splits.y_train), "better": (both_x, both_y),
                "shifted": (inverted(splits.x_train), splits.y_train), "no_three": (both_x[keep], both_y[keep])}
    bundles = {}
    for version, (which, (x, y)) in enumerate(training.items(), start=1):
        bundles[which] = export_torch(
            train(x, y), x[:4], folder / which, name="digits-cnn", version=version, reference_data=x, labels=y,
            class_names=CLASS_NAMES, input_names=["pixels"], output_names=["logits"], signing_key=key).root
    x_test = np.concatenate([splits.x_test, inverted(splits.x_test)])
    y_test = np.concatenate([splits.y_test, splits.y_test])
    condition = np.array(["clean"] * len(splits.x_test) + ["inverted"] * len(splits.x_test))
    np.savez(folder / "heldout.npz", pixels=x_test, y=y_test, slice=condition, digit=y_test.astype(str))
    recent_x = inverted(splits.x_train[-300:])
    np.savez(folder / "recent.npz", pixels=recent_x, y=splits.y_train[-300:])
    np.savez(folder / "recent_unlabelled.npz", pixels=recent_x)
    return EvalKit(folder, bundles, public, private, folder / "heldout.npz", folder / "recent.npz",
                   folder / "recent_unlabelled.npz")
