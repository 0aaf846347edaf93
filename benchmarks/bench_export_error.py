"""Numeric error of the exported ONNX model against the torch model it came from, on real data.

    python benchmarks/bench_export_error.py [--epochs 15] [--out runs/export_error.json]

Trains the digits CNN, exports it with edgefleet.compilers.export_torch, then runs torch and
onnxruntime side by side on every image of the training and held-out splits and prints JSON: max and
mean absolute error, max relative error, agreement of the predicted class, against the goal (max abs
error under 1e-4), with the export time and the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from report import emit  # noqa: E402 - benchmarks/report.py, beside this script

from edgefleet.cloud.digits import PREPROCESSING, load_splits, train_digits_cnn
from edgefleet.compilers import export_torch

GOAL_MAX_ABS = 1e-4


def compare(model: torch.nn.Module, session: ort.InferenceSession, x: np.ndarray) -> dict:
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy().astype(np.float64)
    got = session.run(None, {"pixels": x})[0].astype(np.float64)
    diff = np.abs(got - want)
    return {
        "samples": len(x),
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
        "max_rel": float((diff / np.maximum(np.abs(want), 1e-12)).max()),
        "class_agreement": float((got.argmax(1) == want.argmax(1)).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    splits = load_splits()
    model = train_digits_cnn(splits, epochs=args.epochs)
    with tempfile.TemporaryDirectory(prefix="edgefleet-export-") as workdir:
        started = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):
            bundle = export_torch(model, splits.x_train[:4], Path(workdir) / "bundle", name="digits-cnn", version=1,
                                  reference_data=splits.x_train, input_names=["pixels"], output_names=["logits"],
                                  preprocessing=PREPROCESSING)
        export_seconds = time.perf_counter() - started
        session = ort.InferenceSession(str(bundle.root / "model.onnx"), providers=["CPUExecutionProvider"])
        splits_error = {
            "train": compare(model, session, splits.x_train),
            "test": compare(model, session, splits.x_test),
        }
        recorded = bundle.artifacts[0]["numeric_error"]
    worst = max(s["max_abs"] for s in splits_error.values())
    report = {
        "benchmark": "export_error",
        "model": "digits-cnn",
        "exporter": "torch.onnx.export(dynamo=True)",
        "versions": {"torch": torch.__version__, "onnxruntime": ort.__version__},
        "export_seconds": export_seconds,
        "recorded_in_manifest": recorded,
        "by_split": splits_error,
        "max_abs_error": worst,
        "goal_max_abs": GOAL_MAX_ABS,
        "meets_goal": worst < GOAL_MAX_ABS,
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
