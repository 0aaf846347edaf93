"""Static int8 (QDQ, per-channel) against float on a CNN big enough for arithmetic to dominate.

    python benchmarks/bench_quantize.py [--epochs 4] [--runs 300] [--out runs/quantize.json]
    python benchmarks/bench_quantize.py --model efficientnet-lite0 [--max-drop 0.1] [--runs 100]
        [--gate-strategy sensitivity|budget|prefix16 --validation-rows 1000
         --validation-photos calibration+validation]
        [--method Percentile] [--skip-variants] [--bias-correction empirical]
    python benchmarks/bench_quantize.py --model efficientnet-lite0 --bias-variants --method Percentile
        [--float-heads 0,8] [--corrections analytic,empirical] [--calibration-rows 256] [--runs 100]

The digits images upsampled to 32x32 through a VGG-style CNN (64 and 128 channels, ~0.2 GFLOP per
image), trained for real on the digits training split, exported with export_torch, quantized with
edgefleet.cloud.compress.quantize.quantize_static_int8 (calibrated on training rows), then measured
side by side in one run: latency at batch 1 with one intra-op thread (float and int8 interleaved call by
call), file sizes, and accuracy of both on the held-out split. Variants (QOperator format, per-tensor
weights, reduce_range, signed activations, graph optimisation levels) are measured the same way, each
interleaved with float, so the report says what was tried. Prints JSON with the machine.

--model efficientnet-lite0: the pretrained ImageNet CNN (tests/natural_images.py) on random crops of
natural photos, three disjoint photo sets: calibration, validation (the calibration method is chosen
and the accuracy gate decides on it) and test (--test-rows crops, the reported figure). No labels: the
metric is top-1 agreement with the float model, each with its Wilson 95% interval (200 crops at 0.93
span +-0.035, so steps smaller than that are not told apart). Prints every method's score, the gate's
trials and the nodes it kept in float (--gate-strategy: the gate's strategy, gate.py; --validation-rows and
--validation-photos calibration+validation: a larger decision pool of crops drawn with another seed
from the calibration and validation photos, never the test photos; --method: one calibration method
instead of choosing), agreement on validation, test crops, test crops the float model
is confident about (top-1 probability >= 0.5) and centred test photos; an ablation of the static int8
path with every node int8 (plain, bias correction, cross-layer equalization, both; each calibration
method; AdaRound weight rounding) and with the first convolution and the classifier kept in float (a
common recipe: the layers with the fewest channels to average rounding over); the float model's
median top-1 probability (how ambiguous the inputs are), file sizes and latency float vs int8 (batch 1,
one thread). --skip-variants leaves the ablation out.

--bias-variants (instead of the gate and the ablation): analytic against sequential empirical bias
correction (quantize_static_int8's bias_correction="analytic" / "empirical"), every node int8 and with the
first k groups (--float-heads) kept in float, one calibration method; each row prints to stderr as it is
done (a row takes 2-4 minutes on a loaded 2-core machine), the JSON at the end (--runs 0: no latency).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from report import emit  # noqa: E402 - benchmarks/report.py, beside this script

from edgefleet.cloud.compress.evaluate import wilson_interval
from edgefleet.cloud.compress.quantize import QuantizationError, quantize_static_int8
from edgefleet.cloud.digits import load_splits
from edgefleet.cloud.training import FitOptions, fit_classifier
from edgefleet.compilers import export_torch
from edgefleet.edge_runtime.backends.onnxruntime import session_options
from edgefleet.edge_runtime.bench import time_interleaved

GOALS = {"p50_speedup_min": 2.0, "size_ratio_min": 3.5, "accuracy_drop_max": 0.01}
SIZE = 32


class WideCNN(torch.nn.Module):
    """32x32 grey image -> 10 classes: conv 64, 64, pool, 128, 128, pool, 128, pool, linear."""

    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[torch.nn.Module]:
            return [torch.nn.Conv2d(cin, cout, 3, padding=1), torch.nn.ReLU()]

        self.features = torch.nn.Sequential(
            *block(1, 64), *block(64, 64), torch.nn.MaxPool2d(2),
            *block(64, 128), *block(128, 128), torch.nn.MaxPool2d(2),
            *block(128, 128), torch.nn.MaxPool2d(2),
        )
        self.head = torch.nn.Linear(128 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))


def upsample(x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        big = torch.nn.functional.interpolate(torch.from_numpy(x), size=(SIZE, SIZE), mode="bilinear")
    return big.numpy().astype(np.float32)


def session(path: Path, level: ort.GraphOptimizationLevel | None = None) -> ort.InferenceSession:
    options = session_options(1)
    if level is not None:
        options.graph_optimization_level = level
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def accuracy(sess: ort.InferenceSession, x: np.ndarray, y: np.ndarray) -> float:
    scores = np.concatenate([sess.run(None, {"pixels": x[i:i + 128]})[0] for i in range(0, len(x), 128)])
    return float((scores.argmax(1) == y).mean())


def side_by_side(float_path: Path, int8_path: Path, feed: dict, runs: int,
                 level: ort.GraphOptimizationLevel | None = None) -> dict:
    fp32, int8 = session(float_path, level), session(int8_path, level)
    first, second = time_interleaved(lambda f: fp32.run(None, f), lambda f: int8.run(None, f), feed, runs)
    p50_f, p50_q = first["latency_ms"]["p50"], second["latency_ms"]["p50"]
    return {
        "float_ms": {k: first["latency_ms"][k] for k in ("p50", "p99", "mean")},
        "int8_ms": {k: second["latency_ms"][k] for k in ("p50", "p99", "mean")},
        "p50_speedup": p50_f / p50_q,
        "p99_speedup": first["latency_ms"]["p99"] / second["latency_ms"]["p99"],
        "runs": first["runs"],
    }


def efficientnet(args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from natural_images import (
        CALIBRATION_PHOTOS,
        TEST_PHOTOS,
        VALIDATION_PHOTOS,
        centred,
        crops,
        efficientnet_input,
        efficientnet_lite0,
    )

    from edgefleet.cloud.compress.evaluate import onnx_outputs

    validation = ((VALIDATION_PHOTOS, 1) if args.validation_photos == "validation" else
                  (CALIBRATION_PHOTOS + VALIDATION_PHOTOS, 3))  # seed 3: other crops than calibration's
    sets = {name: efficientnet_input(crops(photos, rows, seed=seed)) for name, photos, rows, seed in (
        ("calibration", CALIBRATION_PHOTOS, args.calibration_rows, 0),
        ("validation", validation[0], args.validation_rows, validation[1]), ("test", TEST_PHOTOS, args.test_rows, 2))}
    sets["test_centred"] = efficientnet_input(centred(TEST_PHOTOS))  # whole photos: fewer near ties
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-quantize-") as workdir:
        work = Path(workdir)
        with contextlib.redirect_stdout(sys.stderr):
            bundle = export_torch(efficientnet_lite0(), sets["calibration"][:2], work / "float",
                                  name="efficientnet-lite0", version=1, reference_data=sets["calibration"][:64],
                                  input_names=["image"], output_names=["logits"], task="classification")
        float_path = bundle.root / "model.onnx"
        floats = {k: onnx_outputs(float_path, v) for k, v in sets.items() if k != "calibration"}
        if args.bias_variants:
            return {"benchmark": "quantize", "model": "efficientnet-lite0 (pretrained, ImageNet)",
                    "metric": "top-1 agreement with the float model (no labels)", "method": args.method,
                    "rows": {k: len(v) for k, v in sets.items()},
                    "bias_correction": bias_variants(args, bundle, work, sets, floats, onnx_outputs)}
        started = time.perf_counter()
        try:
            result = quantize_static_int8(bundle, work / "int8", sets["calibration"], method=args.method,
                                          calibration_batch=16, eval_data=(sets["validation"], None),
                                          max_drop=args.max_drop, gate_strategy=args.gate_strategy,
                                          bias_correction=args.bias_correction)
        except QuantizationError as err:  # the gate missed: report every trial instead of a traceback
            return {"benchmark": "quantize", "model": "efficientnet-lite0 (pretrained, ImageNet)",
                    "gate": {"max_drop": args.max_drop, "strategy": args.gate_strategy, "missed": str(err),
                             "trials": [{k: s.get(k) for k in ("float_groups", "accuracy", "drop")}
                                        for s in err.steps]}}
        quantize_seconds = time.perf_counter() - started
        int8_path = result.bundle.root / "model.int8.onnx"
        ablation = {}  # every node int8 (but first_last_float), the gate's method unless the variant names one
        ends = [n.name for n in onnx.load(str(float_path)).graph.node if n.op_type in ("Conv", "Gemm")]
        variants = {} if args.skip_variants else {**ABLATION,
                                                  "first_last_float": {"nodes_to_exclude": [ends[0], ends[-1]]}}
        for name, options in variants.items():
            options = {"method": result.bundle.artifacts[0]["quantization"]["method"], **options}
            model = quantize_static_int8(bundle, work / name, sets["calibration"], calibration_batch=16, **options)
            step = model.bundle.manifest["lineage"]["steps"][-1]["options"]
            ablation[name] = {"options": options, "equalized_pairs": len((step["equalization"] or {}).get("pairs", [])),
                              **agreement(floats, model.bundle.root / "model.int8.onnx", sets, onnx_outputs)}
        latency = side_by_side(float_path, int8_path, {"image": sets["test"][:1]}, args.runs)
        gated = agreement(floats, int8_path, sets, onnx_outputs)
        int8_path_bytes = int8_path.read_bytes()
    gate = result.gate or {}
    int8_weights = weights_int8_fraction(int8_path_bytes)
    return {
        "summary": {"metric": "top-1 agreement with the float model (no labels)",
                    "test_agreement": gated["test"]["agreement"], "test_ci95": gated["test"]["ci95"],
                    "weights_int8_fraction": int8_weights, "size_ratio": result.size_ratio,
                    "p50_speedup_vs_float": latency["p50_speedup"],
                    "float_groups": len(gate.get("kept_in_float") or ()), "bias_correction": args.bias_correction},
        "benchmark": "quantize",
        "model": {"name": "efficientnet-lite0 (pretrained, ImageNet)", "input": [1, 3, 224, 224],
                  "flops_per_sample": bundle.artifacts[0]["flops_per_sample"]},
        "metric": result.metric, "rows": {k: len(v) for k, v in sets.items()},
        "photos": {"calibration": CALIBRATION_PHOTOS, "validation": validation[0], "test": TEST_PHOTOS},
        "agreement_note": f"top-1 agreement with the float model; ci95: Wilson interval; confident: crops whose "
                          f"float top-1 probability is at least {CONFIDENT}",
        "calibration": result.calibration,
        "equalization": result.bundle.artifacts[0]["quantization"].get("equalization"),
        "gate": {"max_drop": args.max_drop, "strategy": gate.get("strategy"),
                 "trials": [{k: s.get(k) for k in ("float_groups", "accuracy", "output_error", "divergence")}
                            for s in gate.get("steps", [])],
                 "ranking": [{k: r.get(k) for k in ("node", "divergence", "accuracy")}
                             for r in gate.get("ranking", [])],
                 "kept_in_float": list(result.excluded_nodes)},
        "agreement": gated,
        "ablation_every_node_int8": ablation,
        "float_median_top1_probability": {k: float(np.median(top1_probability(v))) for k, v in floats.items()},
        "quantize_seconds": quantize_seconds,
        "file_bytes": {"float": result.float_bytes, "int8": result.quantized_bytes, "ratio": result.size_ratio},
        "latency": latency, "threads": 1, "batch": 1,
        "versions": {"onnxruntime": ort.__version__, "torch": torch.__version__},
    }


def bias_variants(args: argparse.Namespace, bundle, work: Path, sets: dict, floats: dict,  # noqa: ANN001
                  outputs) -> dict:  # noqa: ANN001
    """Analytic against empirical bias correction (every node int8, then the first k groups float for each k
    of --float-heads), one calibration method (--method, Percentile for auto): agreement on every held-out
    set, size ratio, seconds to quantize, and latency against float (batch 1, one thread)."""
    from edgefleet.cloud.compress.gate import node_groups
    from edgefleet.cloud.compress.onnx_model import prepare

    method = "Percentile" if args.method == "auto" else args.method
    groups = node_groups(prepare((bundle.root / "model.onnx").read_bytes(), work, True)[0])
    rows = {}
    for head in args.float_heads:
        excluded = [n for g in groups[:head] for n in g]
        for correction in args.corrections:
            name = f"{correction}, first {head} groups float"
            started = time.perf_counter()
            result = quantize_static_int8(bundle, work / f"bias-{correction}-{head}", sets["calibration"],
                                          method=method, calibration_batch=16, bias_correction=correction,
                                          nodes_to_exclude=excluded)
            seconds = time.perf_counter() - started
            path = result.bundle.root / "model.int8.onnx"
            rows[name] = {"float_groups": head, "bias_correction": correction, "quantize_seconds": seconds,
                          "empirical": result.bundle.artifacts[0]["quantization"].get("empirical_bias"),
                          "size_ratio": result.size_ratio, **agreement(floats, path, sets, outputs)}
            if args.runs:
                latency = side_by_side(bundle.root / "model.onnx", path, {"image": sets["test"][:1]}, args.runs)
                rows[name]["p50_speedup_vs_float"] = latency["p50_speedup"]
            print(json.dumps({name: {k: rows[name][k] for k in ("test", "validation", "quantize_seconds")}}),
                  file=sys.stderr, flush=True)
    return rows


ABLATION = {
    "plain": {"bias_correction": False, "equalization": False},
    "bias_correction": {"bias_correction": True, "equalization": False},
    "equalization": {"bias_correction": False, "equalization": True},
    "equalization+bias_correction": {"bias_correction": True, "equalization": True},
    # bias correction on (the default) from here: calibration methods, adaptive rounding
    "minmax": {"method": "MinMax"},
    "percentile": {"method": "Percentile"},
    "entropy": {"method": "Entropy"},
    "adaround": {"method": "MinMax", "rounding": "adaround"},
    "adaround+percentile": {"method": "Percentile", "rounding": "adaround"},
}
CONFIDENT = 0.5


def agreement(floats: dict, int8_path: Path, sets: dict, outputs) -> dict:  # noqa: ANN001
    """Top-1 agreement of the int8 model with the float model on each held-out set, with its Wilson 95%
    interval, and on the test crops the float model is confident about."""
    out = {}
    for key, logits in floats.items():
        same = outputs(int8_path, sets[key]).argmax(1) == logits.argmax(1)
        out[key] = {"agreement": float(same.mean()), "ci95": wilson_interval(int(same.sum()), len(same)),
                    "rows": len(same)}
        if key == "test":
            confident = top1_probability(logits) >= CONFIDENT
            out["test_confident"] = {"agreement": float(same[confident].mean()),
                                     "ci95": wilson_interval(int(same[confident].sum()), int(confident.sum())),
                                     "rows": int(confident.sum())}
    return out


def weights_int8_fraction(model_bytes: bytes) -> float:
    """The share of the weights (initializers of rank >= 2) stored as int8; the rest stayed float."""
    counts = {"int8": 0, "other": 0}
    for tensor in onnx.load_from_string(model_bytes).graph.initializer:
        if len(tensor.dims) >= 2:
            key = "int8" if tensor.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) else "other"
            counts[key] += int(np.prod(tensor.dims))
    return counts["int8"] / max(1, counts["int8"] + counts["other"])


def top1_probability(logits: np.ndarray) -> np.ndarray:
    """Each row's top-1 softmax probability: how ambiguous the input is to the float model."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted.max(axis=1) / shifted.sum(axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("digits-wide-cnn", "efficientnet-lite0"), default="digits-wide-cnn")
    parser.add_argument("--max-drop", type=float, default=0.1, help="efficientnet-lite0: 1 - the agreement target")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--calibration-rows", type=int, default=256)
    parser.add_argument("--test-rows", type=int, default=600, help="efficientnet-lite0: crops of the test photos")
    parser.add_argument("--gate-strategy", choices=("auto", "rank", "prefix", "sensitivity", "budget", "prefix16"),
                        default="auto")
    parser.add_argument("--validation-rows", type=int, default=200, help="efficientnet-lite0: the decision crops")
    parser.add_argument("--validation-photos", choices=("validation", "calibration+validation"), default="validation")
    parser.add_argument("--method", choices=("auto", "MinMax", "Entropy", "Percentile"), default="auto")
    parser.add_argument("--skip-variants", action="store_true")
    parser.add_argument("--bias-correction", choices=("analytic", "empirical"), default="analytic",
                        help="efficientnet-lite0: the gated model's bias correction")
    parser.add_argument("--bias-variants", action="store_true",
                        help="efficientnet-lite0: analytic vs empirical bias correction instead of the gate")
    parser.add_argument("--float-heads", type=lambda v: [int(k) for k in v.split(",")], default=[0, 8],
                        help="with --bias-variants: the numbers of leading groups kept in float")
    parser.add_argument("--corrections", type=lambda v: v.split(","), default=["analytic", "empirical"],
                        help="with --bias-variants: the bias corrections to compare")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    torch.set_num_threads(2)
    if args.model == "efficientnet-lite0":
        emit(efficientnet(args), args.out)
        return

    splits = load_splits()
    x_train, x_test = upsample(splits.x_train), upsample(splits.x_test)
    torch.manual_seed(0)
    model = WideCNN()
    started = time.perf_counter()
    fit_classifier(model, x_train, splits.y_train, FitOptions(epochs=args.epochs, lr=1e-3))
    train_seconds = time.perf_counter() - started

    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-quantize-") as workdir:
        work = Path(workdir)
        with contextlib.redirect_stdout(sys.stderr):
            bundle = export_torch(model, x_train[:4], work / "float", name="digits-wide-cnn", version=1,
                                  reference_data=x_train[:256], input_names=["pixels"], output_names=["logits"],
                                  task="classification")
        calibration = x_train[:args.calibration_rows]
        started = time.perf_counter()
        result = quantize_static_int8(bundle, work / "int8", calibration, quant_format="QDQ", per_channel=True,
                                      eval_data=(x_test, splits.y_test))
        quantize_seconds = time.perf_counter() - started
        float_path, int8_path = bundle.root / "model.onnx", result.bundle.root / "model.int8.onnx"
        feed = {"pixels": x_test[:1]}
        main_run = side_by_side(float_path, int8_path, feed, args.runs)

        variants = {}
        if not args.skip_variants:
            tried = {
                "QOperator": {"quant_format": "QOperator"},
                "per_tensor": {"per_channel": False},
                "reduce_range": {"reduce_range": True},
                "S8S8 (QInt8 activations)": {"activation_type": "QInt8"},
            }
            for name, options in tried.items():
                variant = quantize_static_int8(bundle, work / name.split()[0], calibration,
                                               eval_data=(x_test, splits.y_test), **options)
                variants[name] = {"options": options, "accuracy": variant.quantized_accuracy,
                                  "size_ratio": variant.size_ratio,
                                  **side_by_side(float_path, variant.bundle.root / "model.int8.onnx", feed,
                                                 args.runs)}
            for level in ("ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED"):
                variants[f"QDQ per-channel, {level}"] = side_by_side(
                    float_path, int8_path, feed, args.runs, getattr(ort.GraphOptimizationLevel, level))

    report = {
        "benchmark": "quantize",
        "model": {"name": "digits-wide-cnn", "input": [1, 1, SIZE, SIZE],
                  "parameters": sum(p.numel() for p in model.parameters()),
                  "flops_per_sample": bundle.artifacts[0]["flops_per_sample"], "epochs": args.epochs,
                  "train_seconds": train_seconds},
        "quantization": result.bundle.artifacts[0]["quantization"],
        "quantize_seconds": quantize_seconds,
        "versions": {"onnxruntime": ort.__version__, "torch": torch.__version__},
        "threads": 1,
        "batch": 1,
        "latency": main_run,
        "file_bytes": {"float": result.float_bytes, "int8": result.quantized_bytes, "ratio": result.size_ratio},
        "accuracy": {"float": result.float_accuracy, "int8": result.quantized_accuracy,
                     "drop": result.accuracy_drop, "test_rows": len(x_test)},
        "numeric_error_golden": result.numeric_error,
        "goals": GOALS,
        "meets": {
            "p50_speedup": main_run["p50_speedup"] >= GOALS["p50_speedup_min"],
            "size_ratio": result.size_ratio >= GOALS["size_ratio_min"],
            "accuracy_drop": result.accuracy_drop <= GOALS["accuracy_drop_max"],
        },
        "variants": variants,
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
