"""The native target's float graph rewrites (compilers/targets/native_float_passes.py) on hand-built ONNX
graphs of the forms exporters write: each rewritten graph must run on the C++ executor and match
onnxruntime, and the conversion must record what it rewrote."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefleet.compilers.targets.native import onnx_to_graph
from edgefleet.core.errors import CompileError
from edgefleet.cpp_ext.graph_native import load_executor

RNG = np.random.default_rng(0)


def const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def model(nodes: list, inputs: list, output: str, initializers: list, opset: int = 18) -> onnx.ModelProto:
    """The graph, its output's shape as shape inference (with data propagation) sees it."""
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                              [], initializers)
    graph.output.append(helper.make_value_info(output, helper.make_tensor_type_proto(TensorProto.FLOAT, None)))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    inferred = onnx.shape_inference.infer_shapes(m, data_prop=True)
    found = next(v for v in [*inferred.graph.output, *inferred.graph.value_info] if v.name == output)
    shape = found.type.tensor_type.shape
    m.graph.output[0].type.tensor_type.shape.CopyFrom(shape)
    return m


def bn_params(prefix: str, channels: int) -> list:
    return [const(f"{prefix}_scale", RNG.uniform(0.5, 2.0, channels).astype(np.float32)),
            const(f"{prefix}_bias", RNG.standard_normal(channels).astype(np.float32)),
            const(f"{prefix}_mean", RNG.standard_normal(channels).astype(np.float32)),
            const(f"{prefix}_var", RNG.uniform(0.2, 3.0, channels).astype(np.float32))]


def bn(prefix: str, x: str, y: str) -> onnx.NodeProto:
    return helper.make_node("BatchNormalization", [x] + [f"{prefix}_{k}" for k in ("scale", "bias", "mean", "var")],
                            [y], name=prefix, epsilon=1e-3)


def compare(m: onnx.ModelProto, feed: dict[str, np.ndarray], atol: float = 1e-5) -> dict:
    onnx.checker.check_model(m)
    graph, info = onnx_to_graph(m)
    got = load_executor(graph).run(feed)[graph.outputs[0].name]
    session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    want = session.run(None, feed)[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=atol)
    return info


@pytest.mark.parametrize("bias", [True, False])
def test_batch_norm_folded_into_conv(bias: bool) -> None:
    inits = [const("w", RNG.standard_normal((6, 3, 3, 3)).astype(np.float32)), *bn_params("bn", 6)]
    if bias:
        inits.append(const("b", RNG.standard_normal(6).astype(np.float32)))
    nodes = [helper.make_node("Conv", ["x", "w", "b"] if bias else ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             bn("bn", "c", "n"), helper.make_node("Relu", ["n"], ["y"], name="relu")]
    info = compare(model(nodes, [("x", ["batch", 3, 8, 8])], "y", inits),
                   {"x": RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)})
    assert info["ops"] == {"Conv": 1} and info["fused"]["Conv+BatchNormalization"] == 1
    assert info["fused"]["Conv+Relu"] == 1


def test_batch_norm_folded_into_gemm_and_kept_as_mul_add_elsewhere() -> None:
    inits = [const("w", RNG.standard_normal((5, 4)).astype(np.float32)), const("c", np.ones(5, np.float32)),
             *bn_params("bn1", 5), *bn_params("bn2", 5)]
    nodes = [helper.make_node("Gemm", ["x", "w", "c"], ["g"], name="fc", transB=1, alpha=0.5, beta=2.0),
             bn("bn1", "g", "n"), helper.make_node("Relu", ["n"], ["r"], name="relu"), bn("bn2", "r", "y")]
    info = compare(model(nodes, [("x", ["batch", 4])], "y", inits),
                   {"x": RNG.standard_normal((3, 4)).astype(np.float32)})
    assert info["ops"] == {"Add": 1, "Gemm": 1, "Mul": 1}
    assert info["fused"]["Gemm+BatchNormalization"] == 1 and info["fused"]["BatchNormalization as Mul+Add"] == 1


def test_batch_norm_feeding_two_readers_is_not_folded_into_them() -> None:  # conv output also read elsewhere
    inits = [const("w", RNG.standard_normal((4, 4, 1, 1)).astype(np.float32)), *bn_params("bn", 4)]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), bn("bn", "c", "n"),
             helper.make_node("Add", ["c", "n"], ["y"], name="residual")]
    info = compare(model(nodes, [("x", [1, 4, 5, 5])], "y", inits),
                   {"x": RNG.standard_normal((1, 4, 5, 5)).astype(np.float32)})
    assert "Conv+BatchNormalization" not in info["fused"] and info["ops"]["Mul"] == 1


@pytest.mark.parametrize("keepdims,axes", [(1, [2, 3]), (1, [-1, -2]), (0, [2, 3])])
def test_spatial_reduce_mean_becomes_global_average_pool(keepdims: int, axes: list) -> None:
    nodes = [helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="node_mean", keepdims=keepdims,
                              noop_with_empty_axes=0)]
    info = compare(model(nodes, [("x", ["batch", 6, 7, 5])], "y", [const("axes", np.asarray(axes, np.int64))]),
                   {"x": RNG.standard_normal((2, 6, 7, 5)).astype(np.float32)})
    assert info["ops"] == ({"GlobalAveragePool": 1} if keepdims else {"Flatten": 1, "GlobalAveragePool": 1})


def test_reduce_mean_over_other_axes_runs_as_a_reduction() -> None:
    nodes = [helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="node_mean", keepdims=1)]
    m = model(nodes, [("x", ["batch", 6, 7, 5])], "y", [const("axes", np.asarray([1], np.int64))])
    info = compare(m, {"x": RNG.standard_normal((2, 6, 7, 5)).astype(np.float32)})
    assert info["ops"] == {"ReduceMean": 1}


def test_flatten_through_shape_arithmetic_is_folded() -> None:
    """The legacy exporter's x.view(x.size(0), -1): Shape -> Gather(0) -> Unsqueeze -> Concat -> Reshape.
    The batch dim stays symbolic (Gather 0 is not fixed), so here the fixed dims are: C, H, W from Shape,
    sliced, multiplied together as the second dim."""
    inits = [const("one", np.asarray(1, np.int64)), const("axes0", np.asarray([0], np.int64)),
             const("minus1", np.asarray([-1], np.int64))]
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape", start=1),
             helper.make_node("ReduceProd", ["s"], ["p"], name="prod", keepdims=1),
             helper.make_node("Concat", ["minus1", "p"], ["target"], name="concat", axis=0),
             helper.make_node("Reshape", ["x", "target"], ["r"], name="reshape"),
             helper.make_node("Shape", ["r"], ["s2"], name="shape2"),
             helper.make_node("Gather", ["s2", "one"], ["d"], name="gather", axis=0),
             helper.make_node("Unsqueeze", ["d", "axes0"], ["du"], name="unsqueeze"),
             helper.make_node("Concat", ["minus1", "du"], ["target2"], name="concat2", axis=0),
             helper.make_node("Reshape", ["r", "target2"], ["y"], name="reshape2")]
    info = compare(model(nodes, [("x", ["batch", 3, 4, 5])], "y", inits),
                   {"x": RNG.standard_normal((2, 3, 4, 5)).astype(np.float32)})
    assert info["ops"] == {"Reshape": 2}
    assert info["fused"]["Shape folded"] == 1 and info["fused"]["Shape+Gather folded"] == 1


@pytest.mark.parametrize("through_transpose", [False, True])
def test_reshape_target_keeps_its_inputs_symbolic_batch(through_transpose: bool) -> None:
    """torch's reshape after a GRU, (T, batch, D, H) -> (T, batch, D * H), built from Slices of the Shape:
    the symbolic batch becomes Reshape's 0 (copy the dim). onnxruntime's optimizer writes the Shape of a
    Transpose as a Gather of the Shape of its input; that form folds too."""
    inits = [const(n, np.asarray([v], np.int64)) for n, v in (("i0", 0), ("i1", 1), ("i2", 2), ("i3", 3), ("i4", 4))]
    inits.append(const("perm", np.asarray([1, 0, 2, 3], np.int64)))
    shape = ([helper.make_node("Shape", ["x"], ["sx"], name="shape"),
              helper.make_node("Gather", ["sx", "perm"], ["s"], name="gather", axis=0)] if through_transpose else
             [helper.make_node("Shape", ["t"], ["s"], name="shape")])
    nodes = [helper.make_node("Transpose", ["x"], ["t"], name="transpose", perm=[1, 0, 2, 3]), *shape,
             *[helper.make_node("Slice", ["s", f"i{k}", f"i{k + 1}"], [f"d{k}"], name=f"slice{k}") for k in range(4)],
             helper.make_node("Mul", ["d2", "d3"], ["dh"], name="mul"),
             helper.make_node("Concat", ["d0", "d1", "dh"], ["target"], name="concat", axis=0),
             helper.make_node("Reshape", ["t", "target"], ["y"], name="reshape")]
    m = model(nodes, [("x", ["batch", 5, 2, 3])], "y", inits)
    for batch in (1, 3):
        info = compare(m, {"x": RNG.standard_normal((batch, 5, 2, 3)).astype(np.float32)})
        assert info["ops"] == {"Reshape": 1, "Transpose": 1}
        assert info["fused"]["Reshape keeps a symbolic dim"] == 1


def test_shape_of_the_symbolic_batch_is_refused() -> None:
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape", end=1),
             helper.make_node("Cast", ["s"], ["f"], name="cast", to=TensorProto.FLOAT),
             helper.make_node("Mul", ["x", "f"], ["y"], name="mul")]
    with pytest.raises(CompileError, match=r"Shape \(node 'shape'\): op not supported"):
        onnx_to_graph(model(nodes, [("x", ["batch", 3])], "y", []))


def test_hard_sigmoid_times_input_is_hard_swish() -> None:
    nodes = [helper.make_node("HardSigmoid", ["x"], ["h"], name="hs", alpha=1 / 6, beta=0.5),
             helper.make_node("Mul", ["x", "h"], ["y"], name="mul")]
    info = compare(model(nodes, [("x", ["batch", 4, 3, 3])], "y", []),
                   {"x": (RNG.standard_normal((2, 4, 3, 3)) * 4).astype(np.float32)})
    assert info["ops"] == {"HardSwish": 1}


def test_residual_add_and_relu_fold_into_the_conv() -> None:  # ResNet's BasicBlock tail
    w1, w2 = (RNG.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.2 for _ in range(2))
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"], name="r1"),
             helper.make_node("Conv", ["r", "w2"], ["c"], name="c2", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c", "x"], ["s"], name="add"),
             helper.make_node("Relu", ["s"], ["y"], name="r2")]
    info = compare(model(nodes, [("x", ["batch", 8, 7, 7])], "y", [const("w1", w1), const("w2", w2)]),
                   {"x": RNG.standard_normal((2, 8, 7, 7)).astype(np.float32)})
    assert info["ops"] == {"Conv": 2} and info["fused"]["Conv+Add"] == 1 and info["fused"]["Conv+Relu"] == 2


def test_residual_computed_after_the_conv_or_broadcast_stays_an_add() -> None:
    w = RNG.standard_normal((8, 8, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="c"),
             helper.make_node("Sigmoid", ["x"], ["later"], name="later"),  # after the Conv in node order
             helper.make_node("Add", ["c", "later"], ["s"], name="add"),
             helper.make_node("Add", ["s", "bias"], ["y"], name="broadcast")]
    info = compare(model(nodes, [("x", ["batch", 8, 5, 5])], "y",
                         [const("w", w), const("bias", RNG.standard_normal((8, 1, 1)).astype(np.float32))]),
                   {"x": RNG.standard_normal((1, 8, 5, 5)).astype(np.float32)})
    assert info["ops"]["Add"] == 2 and "Conv+Add" not in info["fused"]
