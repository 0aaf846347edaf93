"""The native target's int8 Add / Mul in QDQ models (ResNet residual adds, x * HardSigmoid(x)): the float
island DequantizeLinear x 2 -> Add | Mul [-> Relu] -> QuantizeLinear becomes one QAdd / QMul on the bytes.

Against onnxruntime on the same QDQ file: bit-exact with its graph optimizations off (it then runs the
island itself, as the ONNX spec defines it), and within one output quantization step with them on, where
onnxruntime fuses the island into QLinearAdd / QLinearMul (its scale ratios round differently); the
fraction of elements one step apart is printed by the assertion message when it fails. Operands of
different shapes (squeeze-excite's x * s (N, C, 1, 1)) are left as the float island."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefleet.compilers.targets.native import onnx_to_graph
from edgefleet.cpp_ext.graph_native import load_executor


def qdq_model(op: str, shape_b: list, relu: bool, dtype: int) -> onnx.ModelProto:
    """y = Q(op(DQ(Q(a)), DQ(Q(b))) [relu]), dequantized: the pattern quantize_static writes."""
    zero = 128 if dtype == TensorProto.UINT8 else 0
    numpy_dtype = np.uint8 if dtype == TensorProto.UINT8 else np.int8
    inits = []
    for name, scale, z in (("a", 0.021, zero - 5), ("b", 0.033, zero + 9), ("y", 0.045 if op == "Add" else 0.06, zero)):
        inits += [numpy_helper.from_array(np.array(scale, np.float32), f"{name}_s"),
                  numpy_helper.from_array(np.array(z, numpy_dtype), f"{name}_z")]
    nodes = [helper.make_node("QuantizeLinear", ["a", "a_s", "a_z"], ["aq"]),
             helper.make_node("DequantizeLinear", ["aq", "a_s", "a_z"], ["ad"]),
             helper.make_node("QuantizeLinear", ["b", "b_s", "b_z"], ["bq"]),
             helper.make_node("DequantizeLinear", ["bq", "b_s", "b_z"], ["bd"]),
             helper.make_node(op, ["ad", "bd"], ["sum"])]
    last = "sum"
    if relu:
        nodes.append(helper.make_node("Relu", ["sum"], ["act"]))
        last = "act"
    nodes += [helper.make_node("QuantizeLinear", [last, "y_s", "y_z"], ["yq"]),
              helper.make_node("DequantizeLinear", ["yq", "y_s", "y_z"], ["y"])]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 16, 12, 12]),
                                             helper.make_tensor_value_info("b", TensorProto.FLOAT, shape_b)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 12, 12])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def onnxruntime_run(m: onnx.ModelProto, feed: dict, optimize: bool) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    return ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feed)[0]


@pytest.mark.parametrize("op", ["Add", "Mul"])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [TensorProto.UINT8, TensorProto.INT8])
def test_same_shaped_add_and_mul_run_on_the_bytes(op: str, relu: bool, dtype: int) -> None:
    m = qdq_model(op, [1, 16, 12, 12], relu, dtype)
    graph, info = onnx_to_graph(m)
    ops = info["ops"]
    assert ops.get(f"Q{op}") == 1 and op not in ops and "Relu" not in ops
    assert info["fused"][f"DequantizeLinear+{op}{'+Relu' if relu else ''}+QuantizeLinear"] == 1
    rng = np.random.default_rng(len(op))
    feed = {"a": rng.standard_normal((1, 16, 12, 12)).astype(np.float32) * 2,
            "b": rng.standard_normal((1, 16, 12, 12)).astype(np.float32) * 2}
    got = load_executor(graph).run(feed)["y"]
    np.testing.assert_array_equal(got, onnxruntime_run(m, feed, optimize=False))
    fused = onnxruntime_run(m, feed, optimize=True)
    step = 0.045 if op == "Add" else 0.06
    apart = np.abs(got - fused)
    assert apart.max() <= step * 1.0001, f"{np.mean(apart > 0):.4%} of elements differ, max {apart.max() / step} steps"


def test_broadcast_mul_stays_a_float_island() -> None:  # x * s (N, C, 1, 1): shapes differ
    m = qdq_model("Mul", [1, 16, 1, 1], False, TensorProto.UINT8)
    graph, info = onnx_to_graph(m)
    assert "QMul" not in info["ops"] and info["ops"]["Mul"] == 1
    rng = np.random.default_rng(0)
    feed = {"a": rng.standard_normal((1, 16, 12, 12)).astype(np.float32),
            "b": rng.standard_normal((1, 16, 1, 1)).astype(np.float32)}
    np.testing.assert_array_equal(load_executor(graph).run(feed)["y"], onnxruntime_run(m, feed, optimize=False))
