"""Structured (channel) pruning at 50% of the parameters: latency and accuracy against the unpruned model.

    python benchmarks/bench_prune.py [--runs 2000] [--wide-epochs 4] [--out runs/prune.json]

Two models, real digits: the small digits CNN (where per-call overhead dominates) and the wide 32x32 CNN
of bench_quantize.py (where arithmetic does). Each is trained, pruned by removing whole channels
(edgefleet.cloud.compress.prune.prune_channels, 50% of the parameters, fine-tuned), exported to ONNX,
and timed against its unpruned self at batch 1, interleaved, one intra-op thread. Prints JSON:
parameters, FLOPs, p50/p99, the latency ratio, and held-out accuracy of both.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from bench_quantize import WideCNN, upsample
from report import emit

from edgefleet.cloud.compress.prune import FineTune, prune_channels
from edgefleet.cloud.digits import DigitsCNN, load_splits
from edgefleet.cloud.training import FitOptions, fit_classifier
from edgefleet.compilers.flops import count_flops
from edgefleet.edge_runtime.bench import time_interleaved


def onnx_session(model: torch.nn.Module, example: np.ndarray, path: Path) -> ort.InferenceSession:
    with contextlib.redirect_stdout(sys.stderr), torch.no_grad():
        program = torch.onnx.export(model.eval(), (torch.from_numpy(example[:2]),), dynamo=True, external_data=False,
                                    input_names=["x"], dynamic_shapes=({0: torch.export.Dim("batch")},))
    program.save(str(path))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def compare(name: str, model: torch.nn.Module, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
            y_test: np.ndarray, fine_tune_epochs: int, runs: int, work: Path) -> dict:
    pruned = prune_channels(model, 0.5, torch.from_numpy(x_train[:2]),
                            fine_tune=FineTune(x_train, y_train, FitOptions(epochs=fine_tune_epochs, lr=1e-3)))
    sessions = {k: onnx_session(m, x_train, work / f"{name}-{k}.onnx")
                for k, m in (("unpruned", model), ("pruned", pruned.model))}
    feed = {"x": x_test[:1]}
    slow, fast = time_interleaved(lambda f: sessions["unpruned"].run(None, f),
                                  lambda f: sessions["pruned"].run(None, f), feed, runs)

    def accuracy(session: ort.InferenceSession) -> float:
        scores = np.concatenate([session.run(None, {"x": x_test[i:i + 256]})[0] for i in range(0, len(x_test), 256)])
        return float((scores.argmax(1) == y_test).mean())

    import onnx

    flops = {k: count_flops(onnx.load(str(work / f"{name}-{k}.onnx")))["total"] for k in sessions}
    return {
        "model": name,
        "params": {"unpruned": pruned.params_before, "pruned": pruned.params_after,
                   "reduction": pruned.param_reduction},
        "flops_per_sample": {**flops, "reduction": 1 - flops["pruned"] / flops["unpruned"]},
        "latency_ms": {"unpruned": slow["latency_ms"], "pruned": fast["latency_ms"]},
        "latency_ratio_p50": fast["latency_ms"]["p50"] / slow["latency_ms"]["p50"],
        "accuracy": {"unpruned": accuracy(sessions["unpruned"]), "pruned": accuracy(sessions["pruned"])},
        "fine_tune_epochs": fine_tune_epochs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--wide-epochs", type=int, default=4)
    parser.add_argument("--skip-wide", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    splits = load_splits()
    results = []
    with tempfile.TemporaryDirectory(prefix="edgefleet-prune-") as scratch:
        small = DigitsCNN()
        fit_classifier(small, splits.x_train, splits.y_train, FitOptions(epochs=15))
        results.append(compare("digits-cnn", small, splits.x_train, splits.y_train, splits.x_test, splits.y_test,
                               5, args.runs, Path(scratch)))
        if not args.skip_wide:
            x_train, x_test = upsample(splits.x_train), upsample(splits.x_test)
            wide = WideCNN()
            fit_classifier(wide, x_train, splits.y_train, FitOptions(epochs=args.wide_epochs, lr=1e-3))
            results.append(compare("wide-cnn-32x32", wide, x_train, splits.y_train, x_test, splits.y_test,
                                   2, min(args.runs, 500), Path(scratch)))
    emit({"benchmark": "prune_channels_50pct", "results": results}, args.out)


if __name__ == "__main__":
    main()
