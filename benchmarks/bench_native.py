"""The native backend against onnxruntime: batch 1, digits CNN, MLP, wide CNN, edge CNNs and edge models, fp32, int8.

    python benchmarks/bench_native.py --runs 20000 --out runs/bench_native.json

Builds each model's bundle (digits: edgefleet.cloud.digits; MLP: examples/train_tabular.make_model on
scikit-learn's breast cancer data, a few epochs; wide CNN: benchmarks/bench_quantize.WideCNN, 32x32 input,
64-128 channels, ~0.2 GFLOP per image, random weights: latency does not depend on them; the
EfficientNet-Lite-class and ResNet-class CNNs of tests/compilers/edge_cnns.py, 3x64x64, random weights
and BatchNorm statistics; the DS-CNN keyword spotter, dense autoencoder, small transformer encoder, M5
Conv1d audio model and CRNN keyword spotters (GRU, LSTM) of tests/compilers/edge_models.py), a static
int8 QDQ version of each (quantize_static_int8), compiles every bundle for the native target (the
compile step checks the golden examples), then times the native backend and onnxruntime
(OnnxRuntimeBackend, 1 intra-op thread: the session and hot path the Predictor uses) on the same
artifact's source, interleaved call by call
(edgefleet.edge_runtime.bench.time_interleaved). Prints JSON per model: p50/p99 of both, the ratio
native / onnxruntime (below 1: native is faster) and the max abs difference of the outputs on the test
rows. Ratios are the numbers to watch; absolute times depend on the machine and are never a gate.
Each model is also timed at 2 threads (`--threads 1,2`: the native backend's "threads" option against
onnxruntime at the same intra-op threads, in alternating blocks of calls, see BLOCK; results under
"threads_2"), and the "roofline" section
(benchmarks/native_roofline.py) gives this CPU's measured fp32 peak and the GFLOP/s of the fp32 conv /
GEMM kernels and of onnxruntime on the same shapes, as fractions of it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from native_roofline import roofline  # benchmarks/native_roofline.py, beside this script
from report import emit  # noqa: E402 - benchmarks/report.py, beside this script

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.compilers.edge_cnns builds the edge CNNs

from edgefleet.cloud.compress.quantize import quantize_static_int8
from edgefleet.cloud.digits import build_digits_bundle, load_splits
from edgefleet.compilers.compile import compile_bundle
from edgefleet.core.bundle import Bundle
from edgefleet.core.errors import CompileError
from edgefleet.core.signing import SigningKey
from edgefleet.cpp_ext import graph_native
from edgefleet.edge_runtime.backends.native import NativeBackend
from edgefleet.edge_runtime.backends.onnxruntime import OnnxRuntimeBackend
from edgefleet.edge_runtime.bench import time_interleaved


def build_mlp_bundle(workdir: Path, key: SigningKey) -> tuple[Path, np.ndarray, np.ndarray]:
    import torch
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    from edgefleet.cloud.training import FitOptions, fit_classifier
    from edgefleet.compilers import export_torch

    data = load_breast_cancer()
    x_train, x_test, y_train, _ = train_test_split(data.data, data.target, test_size=0.3, random_state=0,
                                                   stratify=data.target)
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    x_train, x_test = (((x - mean) / std).astype(np.float32) for x in (x_train, x_test))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(30, 128), torch.nn.ReLU(), torch.nn.Linear(128, 128),  # as
                                torch.nn.ReLU(), torch.nn.Linear(128, 2))  # examples/train_tabular.make_model
    fit_classifier(model, x_train, y_train, FitOptions(epochs=5, lr=1e-3))
    bundle = export_torch(model, x_train[:4], workdir / "mlp", name="breast-cancer-mlp", version=1,
                          reference_data=x_train, input_names=["features"], output_names=["logits"],
                          task="classification", signing_key=key)
    return bundle.root, x_train, x_test


def build_wide_cnn_bundle(workdir: Path, key: SigningKey, x_train: np.ndarray,
                          x_test: np.ndarray) -> tuple[Path, np.ndarray, np.ndarray]:
    import torch
    from bench_quantize import WideCNN, upsample

    from edgefleet.compilers import export_torch

    torch.manual_seed(0)
    model = WideCNN().eval()
    big_train, big_test = upsample(x_train[:256]), upsample(x_test[:64])
    bundle = export_torch(model, big_train[:4], workdir / "wide", name="wide-cnn", version=1,
                          reference_data=big_train, input_names=["image"], output_names=["logits"],
                          task="classification", signing_key=key)
    return bundle.root, big_train, big_test


def build_edge_cnn_bundle(workdir: Path, key: SigningKey, name: str) -> tuple[Path, np.ndarray, np.ndarray]:
    from edgefleet.compilers import export_torch
    from tests.compilers import edge_cnns

    images = np.random.default_rng(0).standard_normal((96, 3, edge_cnns.SIZE, edge_cnns.SIZE)).astype(np.float32)
    bundle = export_torch(edge_cnns.build(name), images[:4], workdir / name, name=name, version=1,
                          reference_data=images[:64], input_names=["image"], output_names=["logits"],
                          task="classification", signing_key=key)
    return bundle.root, images[:64], images[64:]


# Above 1 thread, calls alternate in blocks of BLOCK with a REST-second pause between blocks: after each
# call onnxruntime's idle workers poll for 2^20 pauses (~40 ms here; 39 ms of CPU measured in the 100 ms
# after one call) before they sleep, so call by call its poller held a core through every native call
# that followed (and native's own poller, 100 us, the start of each onnxruntime call). In blocks each
# runtime runs back to back as a user of it alone would, with the other's threads asleep.
BLOCK, REST = 10, 0.06


def time_blocks(first, second, feed: dict, runs: int) -> tuple[dict, dict]:  # noqa: ANN001 - two callables
    """Latencies (ms percentiles) of two callables on one feed, alternating blocks of BLOCK calls."""
    times: tuple[list[float], list[float]] = ([], [])
    for fn in (first, second):
        for _ in range(BLOCK):
            fn(feed)
    while len(times[0]) < runs:
        for fn, out in zip((first, second), times, strict=True):
            time.sleep(REST)
            fn(feed)  # untimed: it wakes the runtime's sleeping workers (back-to-back calls never pay that)
            for _ in range(BLOCK):
                start = time.perf_counter()
                fn(feed)
                out.append((time.perf_counter() - start) * 1e3)
    return tuple({"p50": float(np.percentile(t, 50)), "p99": float(np.percentile(t, 99)),
                  "mean": float(np.mean(t))} for t in times)


def time_pair(native_path: Path, onnx_path: Path, feed: dict, runs: int, threads: int) -> tuple[dict, dict]:
    """Native and onnxruntime latencies (ms percentiles) at `threads`: interleaved call by call at 1
    thread, in alternating blocks above (BLOCK, REST)."""
    native, ort = NativeBackend(), OnnxRuntimeBackend()
    native.load(native_path, {"threads": threads})
    ort.load(onnx_path, {"threads": threads})
    if threads > 1:
        return time_blocks(native.run, ort.run, feed, runs)
    ours, theirs = time_interleaved(native.run, ort.run, feed, runs)
    return ours["latency_ms"], theirs["latency_ms"]


def build_edge_model_bundle(workdir: Path, key: SigningKey, name: str) -> tuple[Path, Path, dict]:
    """A model of tests/compilers/edge_models.py, fp32 and static int8 QDQ; test rows by input name."""
    from tests.compilers import edge_models
    from tests.compilers.test_native_edge_models import export

    rows = edge_models.inputs(name, 96)
    fp32 = export(name, rows, workdir / name, key).root
    calibration = {k: v[:64] for k, v in rows.items()}
    int8 = quantize_static_int8(fp32, workdir / f"{name}-int8",
                                calibration if len(calibration) > 1 else next(iter(calibration.values())),
                                signing_key=key).bundle.root
    return fp32, int8, {k: v[64:] for k, v in rows.items()}


def measure(label: str, bundle_dir: Path, workdir: Path, test_x: np.ndarray | dict, runs: int,
            threads: list[int]) -> dict:
    compiled = compile_bundle(bundle_dir, ["native"], workdir / f"{label}-compiled")
    bundle = compiled.bundle
    native_artifact = next(a for a in bundle.artifacts if a["backend"] == "native")
    onnx_artifact = next(a for a in bundle.artifacts if a["format"] == "onnx")
    native_path, onnx_path = bundle.path(native_artifact["path"]), bundle.path(onnx_artifact["path"])
    native, ort = NativeBackend(), OnnxRuntimeBackend()
    native.load(native_path, {})
    ort.load(onnx_path, {"threads": 1})
    rows = test_x if isinstance(test_x, dict) else {bundle.inputs[0].name: test_x}
    count = len(next(iter(rows.values())))
    feed = {k: np.ascontiguousarray(v[:1]) for k, v in rows.items()}
    native_ms, ort_ms = time_pair(native_path, onnx_path, feed, runs, 1)
    errors = []
    for i in range(count):
        one = {k: v[i:i + 1] for k, v in rows.items()}
        theirs_out, ours_out = ort.run(one), native.run(one)
        errors += [float(np.abs(ours_out[k] - theirs_out[k]).max()) for k in theirs_out]
    more = {}
    for threads_count in (t for t in threads if t != 1):
        ours, theirs = time_pair(native_path, onnx_path, feed, runs, threads_count)
        more[f"threads_{threads_count}"] = {
            "native_us_p50": ours["p50"] * 1e3, "onnxruntime_us_p50": theirs["p50"] * 1e3,
            "ratio_p50": ours["p50"] / theirs["p50"], "native_speedup_vs_1_thread": native_ms["p50"] / ours["p50"]}
    return {
        "model": label, "precision": native_artifact["precision"], "batch": 1, "runs": runs,
        "native_us": {"p50": native_ms["p50"] * 1e3, "p99": native_ms["p99"] * 1e3, "mean": native_ms["mean"] * 1e3},
        "onnxruntime_us": {"p50": ort_ms["p50"] * 1e3, "p99": ort_ms["p99"] * 1e3, "mean": ort_ms["mean"] * 1e3},
        "ratio_p50": native_ms["p50"] / ort_ms["p50"], "ratio_p99": native_ms["p99"] / ort_ms["p99"],
        "max_abs_error_vs_onnxruntime": max(errors), "compared_rows": count,
        "compile": native_artifact["compile"], "golden_max_abs": native_artifact["numeric_error"]["max_abs"],
        **more,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20000, help="interleaved pairs of calls per model")
    parser.add_argument("--epochs", type=int, default=3, help="digits training epochs (cost is independent)")
    parser.add_argument("--wide-divisor", type=int, default=20,
                        help="the wide and edge CNNs run --runs / this many pairs (~100x slower per call)")
    parser.add_argument("--models", help="comma-separated labels to time (default: all)")
    parser.add_argument("--threads", default="1,2", help="thread counts to time (1 is always timed)")
    parser.add_argument("--roofline-runs", type=int, default=400, help="interleaved pairs per roofline shape (0: skip)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    threads = sorted({int(t) for t in args.threads.split(",")} | {1})
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    results = []
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-native-") as tmp:
        workdir = Path(tmp)
        with contextlib.redirect_stdout(sys.stderr):  # exporter chatter must not corrupt the JSON
            digits_dir, public = build_digits_bundle(workdir / "digits", epochs=args.epochs)
            key = SigningKey.load(public.with_suffix(".key"))
            splits = load_splits()
            chosen = args.models.split(",") if args.models else None

            def wanted(*labels: str) -> bool:
                return chosen is None or any(label in chosen for label in labels)

            plan: list[tuple[str, Path, np.ndarray | dict]] = []
            if wanted("digits-cnn", "digits-cnn-int8", "breast-cancer-mlp", "breast-cancer-mlp-int8"):
                mlp_dir, mlp_train, mlp_test = build_mlp_bundle(workdir, key)
                digits_int8 = quantize_static_int8(digits_dir, workdir / "digits-int8", splits.x_train[:512],
                                                   signing_key=key).bundle.root
                mlp_int8 = quantize_static_int8(mlp_dir, workdir / "mlp-int8", mlp_train, signing_key=key).bundle.root
                plan += [("digits-cnn", digits_dir, splits.x_test), ("breast-cancer-mlp", mlp_dir, mlp_test),
                         ("digits-cnn-int8", digits_int8, splits.x_test),
                         ("breast-cancer-mlp-int8", mlp_int8, mlp_test)]
            if wanted("wide-cnn", "wide-cnn-int8"):
                wide_dir, wide_train, wide_test = build_wide_cnn_bundle(workdir, key, splits.x_train, splits.x_test)
                wide_int8 = quantize_static_int8(wide_dir, workdir / "wide-int8", wide_train,
                                                 signing_key=key).bundle.root
                plan += [("wide-cnn", wide_dir, wide_test), ("wide-cnn-int8", wide_int8, wide_test)]
            for name in ("efficient-lite", "resnet"):
                if wanted(f"{name}-cnn", f"{name}-cnn-int8"):
                    edge_dir, edge_train, edge_test = build_edge_cnn_bundle(workdir, key, name)
                    edge_int8 = quantize_static_int8(edge_dir, workdir / f"{name}-int8", edge_train,
                                                     signing_key=key).bundle.root
                    plan += [(f"{name}-cnn", edge_dir, edge_test), (f"{name}-cnn-int8", edge_int8, edge_test)]
            for name in ("ds-cnn", "autoencoder", "transformer", "m5", "crnn", "crnn-lstm"):
                if wanted(name, f"{name}-int8"):
                    fp32_dir, int8_dir, rows = build_edge_model_bundle(workdir, key, name)
                    plan += [(name, fp32_dir, rows), (f"{name}-int8", int8_dir, rows)]
            for label, bundle_dir, test_x in plan:
                if not wanted(label):
                    continue
                Bundle.open(bundle_dir)
                slow = any(k in label for k in ("wide", "efficient", "resnet", "ds-cnn", "transformer", "m5", "crnn"))
                runs = args.runs if not slow else max(1, args.runs // args.wide_divisor)
                try:
                    results.append(measure(label, bundle_dir, workdir, test_x, runs, threads))
                except CompileError as err:  # a model the native target refuses is a result too
                    results.append({"model": label, "refused": str(err)})
    summary = {"benchmark": "native_vs_onnxruntime", "isa": graph_native.isa(),
               "available_isas": graph_native.available_isas(), "onnxruntime_threads": 1, "results": results}
    if args.roofline_runs > 0:
        summary["roofline"] = roofline(args.roofline_runs)
    emit(summary, args.out)
    return summary


if __name__ == "__main__":
    main()
