"""The roofline part of bench_native.py: this CPU's measured fp32 peak and the GFLOP/s the native fp32
conv / GEMM kernels and onnxruntime reach on the same single-op models, as fractions of that peak.

The peak is one core's register-only multiply-add loop (edgefleet.cpp_ext.graph_native.peak_gflops,
the best of repeated timings) for the ISA the native kernels use and for the widest one the CPU runs.
Each shape is one Conv (with bias) or Gemm node, built with onnx.helper and random weights, compiled
by the native target's own converter, and timed interleaved with onnxruntime (1 intra-op thread,
batch 1). GFLOP/s = 2 x multiply-adds / p50 latency. The shapes are the heaviest layers of
tests/compilers/edge_cnns.py (ResNet-class 3x3 convs, EfficientNet-Lite-class 1x1 expand/project).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgefleet.compilers.targets.native import onnx_to_graph
from edgefleet.cpp_ext import graph_native
from edgefleet.edge_runtime.bench import time_interleaved

# (label, kind, (in channels, out channels, kernel, stride, image size)) for convs; (M, K, N) for Gemm.
SHAPES: list[tuple[str, str, tuple[int, ...]]] = [
    ("conv3x3 16->16 64x64", "conv", (16, 16, 3, 1, 64)),
    ("conv3x3 32->32 32x32", "conv", (32, 32, 3, 1, 32)),
    ("conv3x3 64->64 16x16", "conv", (64, 64, 3, 1, 16)),
    ("conv3x3 128->128 8x8", "conv", (128, 128, 3, 1, 8)),
    ("conv1x1 24->72 16x16", "conv", (24, 72, 1, 1, 16)),
    ("conv1x1 240->80 4x4", "conv", (240, 80, 1, 1, 4)),
    ("gemm 64x256x256", "gemm", (64, 256, 256)),
]


def _model(kind: str, dims: tuple[int, ...]) -> tuple[onnx.ModelProto, np.ndarray, float]:
    """The single-op model, a batch-1 input and its multiply-add count."""
    rng = np.random.default_rng(0)
    if kind == "conv":
        cin, cout, k, stride, size = dims
        w = rng.standard_normal((cout, cin, k, k)).astype(np.float32) * 0.1
        b = rng.standard_normal(cout).astype(np.float32)
        out = (size + 2 * (k // 2) - k) // stride + 1
        node = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[k, k], strides=[stride, stride],
                                pads=[k // 2] * 4)
        x_shape, y_shape = [1, cin, size, size], [1, cout, out, out]
        macs = float(cout * cin * k * k * out * out)
        inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    else:
        m, k, n = dims
        w = rng.standard_normal((k, n)).astype(np.float32) * 0.1
        b = rng.standard_normal(n).astype(np.float32)
        node = helper.make_node("Gemm", ["x", "w", "b"], ["y"])
        x_shape, y_shape = [m, k], [m, n]
        macs = float(m * k * n)
        inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    graph = helper.make_graph([node], kind, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, rng.standard_normal(x_shape).astype(np.float32), macs


def roofline(runs: int) -> dict:
    """Peaks and per-shape achieved GFLOP/s of native and onnxruntime (JSON-ready)."""
    import onnxruntime as ort

    used = graph_native.isa()
    widest = graph_native.available_isas()[0]
    peaks = {name: graph_native.peak_gflops(name, 0.3) for name in dict.fromkeys([used, widest])}
    rows = []
    for label, kind, dims in SHAPES:
        model, x, macs = _model(kind, dims)
        graph, _info = onnx_to_graph(model)
        executor = graph_native.load_executor(graph)
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        ours, theirs = time_interleaved(executor.run, lambda feed, s=session: s.run(None, feed), {"x": x}, runs)
        gflops = {who: 2 * macs / (result["latency_ms"]["p50"] * 1e-3) / 1e9
                  for who, result in (("native", ours), ("onnxruntime", theirs))}
        rows.append({"shape": label, "kind": kind, "mflop": 2 * macs / 1e6,
                     "native_gflops": gflops["native"], "onnxruntime_gflops": gflops["onnxruntime"],
                     "native_fraction_of_peak": gflops["native"] / peaks[used],
                     "onnxruntime_fraction_of_peak": gflops["onnxruntime"] / peaks[widest],
                     "ratio_p50": ours["latency_ms"]["p50"] / theirs["latency_ms"]["p50"]})
    return {"peak_gflops_one_core": peaks, "native_isa": used, "peak_for_native": peaks[used],
            "peak_for_onnxruntime": peaks[widest], "shapes": rows}
