"""Distillation on the digits: teacher vs distilled student vs the same student trained alone.

    python benchmarks/bench_distill.py [--teacher-epochs 15] [--epochs 40] [--width 4] [--runs 2000] [--out F]

Trains a DigitsCNN(width=16) teacher, then two copies of one DigitsCNN(width) student on the same budget
(epochs, batch size, learning rate, seed): one with edgefleet.cloud.compress.distill, one on the labels
alone. Exports all three to ONNX and prints JSON: parameters and ONNX size (and their ratios to the
teacher), held-out accuracy and the students' accuracy as a fraction of the teacher's, and p50 latency at
batch 1 on one onnxruntime thread, each student timed interleaved with the teacher
(edge_runtime.bench.time_interleaved) so the ratio is measured side by side. For reference, DistilBERT
kept 97% of its teacher's score at 60% of its size.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from report import emit  # noqa: E402 - benchmarks/report.py, beside this script

from edgefleet.cloud.compress.distill import accuracy, distill
from edgefleet.cloud.digits import DigitsCNN, load_splits, train_digits_cnn
from edgefleet.cloud.training import FitOptions, fit_classifier
from edgefleet.compilers import export_torch
from edgefleet.edge_runtime.backends.onnxruntime import session_options
from edgefleet.edge_runtime.bench import time_interleaved


def export(model: torch.nn.Module, x: np.ndarray, out: Path, name: str) -> Path:
    with contextlib.redirect_stdout(sys.stderr):
        bundle = export_torch(model, x[:4], out, name=name, version=1, input_names=["pixels"],
                              output_names=["logits"], task="classification")
    return bundle.root / "model.onnx"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher-epochs", type=int, default=15)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--width", type=int, default=4)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    s = load_splits(seed=args.seed)
    teacher = train_digits_cnn(s, epochs=args.teacher_epochs, seed=args.seed)
    torch.manual_seed(args.seed)
    student = DigitsCNN(width=args.width)
    alone = copy.deepcopy(student)
    fit_classifier(alone, s.x_train, s.y_train, FitOptions(epochs=args.epochs, seed=args.seed))
    distilled = distill(teacher, student, (s.x_train, s.y_train), temperature=args.temperature, alpha=args.alpha,
                        epochs=args.epochs, seed=args.seed).student
    models = {"teacher": teacher, "distilled": distilled, "alone": alone}

    feed = {"pixels": s.x_test[:1]}
    with tempfile.TemporaryDirectory(prefix="edgefleet-distill-") as workdir:
        paths = {name: export(m, s.x_train, Path(workdir) / name, name) for name, m in models.items()}
        sessions = {name: ort.InferenceSession(str(p), session_options(1), providers=["CPUExecutionProvider"])
                    for name, p in paths.items()}
        sizes = {name: p.stat().st_size for name, p in paths.items()}
        latency = {}
        for name in ("distilled", "alone"):
            ours, theirs = time_interleaved(lambda f, n=name: sessions[n].run(None, f),
                                            lambda f: sessions["teacher"].run(None, f), feed, args.runs)
            latency[name] = {"p50_ms": ours["latency_ms"]["p50"], "teacher_p50_ms": theirs["latency_ms"]["p50"],
                             "ratio_to_teacher": ours["latency_ms"]["p50"] / theirs["latency_ms"]["p50"]}

    params = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    acc = {name: accuracy(m, (s.x_test, s.y_test)) for name, m in models.items()}
    rows = {}
    for name in models:
        rows[name] = {"parameters": params[name], "onnx_bytes": sizes[name], "accuracy": acc[name]}
        if name != "teacher":
            rows[name].update(
                parameter_ratio=params[name] / params["teacher"], size_ratio=sizes[name] / sizes["teacher"],
                accuracy_fraction_of_teacher=acc[name] / acc["teacher"], latency_batch1=latency[name],
            )
    emit({
        "benchmark": "distill",
        "data": {"set": "scikit-learn digits", "train": len(s.x_train), "held_out": len(s.x_test)},
        "options": {"teacher": "DigitsCNN(width=16)", "student": f"DigitsCNN(width={args.width})",
                    "teacher_epochs": args.teacher_epochs, "epochs": args.epochs, "temperature": args.temperature,
                    "alpha": args.alpha, "seed": args.seed, "latency_runs": args.runs, "threads": 1},
        "models": rows,
        "distilled_minus_alone_accuracy": acc["distilled"] - acc["alone"],
        "reference": "DistilBERT: 97% of the teacher's score at 60% of the size",
    }, args.out)


if __name__ == "__main__":
    main()
