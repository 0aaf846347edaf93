"""The C++ executor against the numpy spec (graph_reference_tensor.py) on the ops added for transformer
encoders and audio models: element-wise math, Cast, Equal, Where, Expand, Gather, Slice, Pad, reductions,
LayerNormalization; on shapes and attributes the ONNX backend cases do not reach (broadcasting from both
sides, negative steps, several axes), and the refusals a user would meet."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.cpp_ext import graph_native
from edgefleet.cpp_ext.graph_format import GraphBuilder, GraphFormatError
from edgefleet.cpp_ext.graph_reference import run_graph
from tests.cpp_ext.test_graph import check, f32, one_op

RNG = np.random.default_rng(3)
I64 = np.int64


@pytest.mark.parametrize("op,attrs", [("Erf", {}), ("Gelu", {}), ("Gelu", {"approximate": "tanh"}), ("Exp", {}),
                                      ("Neg", {}), ("Reciprocal", {})])
def test_unary(op: str, attrs: dict) -> None:
    x = f32(RNG, 2, 3, 17) * 3
    check(one_op(op, x.shape, **attrs), x, rtol=1e-5, atol=1e-6)


def test_sqrt_pow_prelu_broadcast_both_ways() -> None:
    x = np.abs(f32(RNG, 4, 1, 6)) + 0.1
    check(one_op("Sqrt", x.shape), x, rtol=1e-6, atol=0)
    for exponent in (np.float32(2), np.float32(0.5), np.float32(3), f32(RNG, 5, 1)):
        check(one_op("Pow", x.shape, {"e": exponent}), x, rtol=1e-5, atol=1e-6)
    check(one_op("PRelu", (2, 3, 4, 5), {"slope": f32(RNG, 3, 1, 1)}), f32(RNG, 2, 3, 4, 5), exact=True)


@pytest.mark.parametrize("dtype", ["float32", "int64", "uint8"])
def test_equal_where_cast(dtype: str) -> None:
    b = GraphBuilder()
    x = b.input("x", dtype, (3, 1, 5))
    same = b.node("Equal", [x, b.constant("other", np.asarray([[1], [2]], dtype))])
    picked = b.node("Where", [same, b.constant("yes", f32(RNG, 2, 1)), b.node("Cast", [x], to="float32")])
    b.output(picked, "float32")
    b.output(same, "uint8")
    b.output(b.node("Cast", [picked], to="int32"), "int32")
    graph = b.build()
    x = RNG.integers(0, 4, (3, 1, 5)).astype(dtype)
    got, want = graph_native.load_executor(graph).run({"x": x}), run_graph(graph, {"x": x})
    for name, value in want.items():
        assert got[name].dtype == value.dtype
        np.testing.assert_array_equal(got[name], value)


def test_gather_slice_expand_pad() -> None:
    x = f32(RNG, 4, 6, 5)
    check(one_op("Gather", x.shape, {"i": np.asarray([[3, -1], [0, 0]], I64)}, axis=1), x, exact=True)
    check(one_op("Gather", x.shape, {"i": np.asarray([2, 0], np.int32)}), x, exact=True)
    slices = {"starts": np.asarray([-1, 1], I64), "ends": np.asarray([-100, 100], I64),
              "axes": np.asarray([2, 0], I64), "steps": np.asarray([-2, 2], I64)}
    check(one_op("Slice", x.shape, slices), x, exact=True)
    check(one_op("Expand", (3, 1), {"shape": np.asarray([2, 3, 4], I64)}), f32(RNG, 3, 1), exact=True)
    for mode in ("constant", "reflect", "edge"):
        pads = {"pads": np.asarray([0, 2, 1, 0, 3, 2], I64), "value": np.float32(1.5)}
        check(one_op("Pad", x.shape, pads, mode=mode), x, exact=True)
    check(one_op("Pad", x.shape, {"pads": np.asarray([1, 2], I64), "value": None, "axes": np.asarray([-1], I64)}),
          x, exact=True)


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceL2"])
@pytest.mark.parametrize("axes,keepdims", [([1], 1), ([0, 2], 0), ([-1], 1), (None, 0)])
def test_reductions(op: str, axes: list | None, keepdims: int) -> None:
    x = f32(RNG, 3, 4, 5)
    consts = {"axes": np.asarray(axes, I64)} if axes is not None else {}
    check(one_op(op, x.shape, consts, keepdims=keepdims), x, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("axis", [-1, 1])
def test_layer_norm(axis: int) -> None:
    x = f32(RNG, 2, 6, 8) * 4 + 3
    tail = x.shape[axis % 3:]
    check(one_op("LayerNormalization", x.shape, {"scale": f32(RNG, *tail), "bias": f32(RNG, *tail)}, axis=axis,
                 epsilon=1e-3), x, rtol=1e-5, atol=1e-5)


def test_refusals_name_the_node() -> None:
    with pytest.raises(GraphFormatError, match=r"Cast \(node 'cast_0'\): cast to float64 not supported"):
        graph_native.load_executor(one_op("Cast", (2,), to="float64"))
    with pytest.raises(ValueError, match=r"Pad \(node 'pad_0'\): mode wrap is not supported"):
        graph_native.load_executor(one_op("Pad", (2,), {"pads": np.asarray([1, 1], I64)}, mode="wrap"))
    executor = graph_native.load_executor(one_op("Gather", (3,), {"i": np.asarray([5], I64)}))
    with pytest.raises(ValueError, match="Gather: index 5 is out of range for size 3"):
        executor.run({"x": np.zeros(3, np.float32)})


def test_token_ids_do_not_key_the_plan() -> None:
    """An int64 input read only as indices: new token ids reuse the plan (a Reshape shape input would not)."""
    b = GraphBuilder()
    ids = b.input("ids", "int64", (1, 4))
    b.output(b.node("Gather", [b.constant("table", f32(RNG, 10, 3)), ids]), "float32")
    executor = graph_native.load_executor(b.build())
    for row in range(5):
        executor.run({"ids": np.asarray([[row, 1, 2, 3]], I64)})
    assert executor.cached_plans == 1


@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("coords", ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"])
def test_resize_with_constant_scales(mode: str, coords: str) -> None:
    """The ONNX cases give scales at run time (not claimed); a model's are constant, as here."""
    x = f32(RNG, 1, 3, 5, 7)
    for scales in ([1, 1, 2, 2], [1, 1, 0.6, 1.5]):
        consts = {"roi": None, "scales": np.asarray(scales, np.float32)}
        check(one_op("Resize", x.shape, consts, mode=mode, coordinate_transformation_mode=coords), x,
              rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("group,per_group,strides,dilations,pads,extra", [
    (1, 6, [2, 2], [1, 1], [1, 1, 1, 1], [1, 1]), (2, 3, [1, 2], [2, 1], [0, 1, 2, 0], [0, 1]),
    (4, 1, [3, 3], [1, 1], [0, 0, 0, 0], [0, 0])])
def test_conv_transpose(group: int, per_group: int, strides: list, dilations: list, pads: list, extra: list) -> None:
    x = f32(RNG, 2, 4, 5, 6)
    consts = {"w": f32(RNG, 4, per_group, 3, 3), "b": f32(RNG, per_group * group)}
    check(one_op("ConvTranspose", x.shape, consts, group=group, strides=strides, dilations=dilations, pads=pads,
                 output_padding=extra), x, rtol=1e-5, atol=1e-5)
