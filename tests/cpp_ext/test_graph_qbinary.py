"""QAdd / QMul, the fused int8 Add and Mul of a QDQ model: bit for bit the numpy reference (the float
island DequantizeLinear x 2 -> op [-> Relu] -> QuantizeLinear) for every mix of uint8 / int8 operands and
output, on every ISA tier (the AVX2 loop takes blocks of 8; sizes with tails), and a clear refusal of
operands of different shapes."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.cpp_ext import graph_native
from edgefleet.cpp_ext.graph_format import GraphBuilder
from edgefleet.cpp_ext.graph_reference import run_graph


def qbinary(op: str, a_dtype: str, b_dtype: str, y_dtype: str, shape: tuple, activation: str = "none"):
    b = GraphBuilder()
    a = b.input("x", a_dtype, shape)
    second = b.input("b", b_dtype, shape)
    zero = {"uint8": 120, "int8": -6}
    params = [b.constant("sa", np.float32(0.031)), b.constant("za", np.array(zero[a_dtype], a_dtype)),
              b.constant("sb", np.float32(0.057)), b.constant("zb", np.array(zero[b_dtype] + 3, b_dtype)),
              b.constant("sy", np.float32(0.07 if op == "QAdd" else 0.9)),
              b.constant("zy", np.array(zero[y_dtype] - 2, y_dtype))]
    inputs = [a, params[0], params[1], second, params[2], params[3], params[4], params[5]]
    b.output(b.node(op, inputs, activation=activation), y_dtype)
    return b.build()


def ints(rng: np.random.Generator, dtype: str, shape: tuple) -> np.ndarray:
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max + 1, shape).astype(dtype)


@pytest.mark.parametrize("op", ["QAdd", "QMul"])
@pytest.mark.parametrize("dtypes", [("uint8", "uint8", "uint8"), ("int8", "int8", "int8"), ("uint8", "int8", "int8"),
                                    ("int8", "uint8", "uint8"), ("int8", "int8", "uint8"), ("uint8", "uint8", "int8")])
@pytest.mark.parametrize("activation", ["none", "relu"])
def test_exact_against_the_float_island(isa: str, op: str, dtypes: tuple, activation: str) -> None:
    rng = np.random.default_rng(len(op) + len(activation))
    for shape in ((1, 16, 8, 8), (2, 3, 5, 7), (1, 5)):  # blocks of 8 and tails
        graph = qbinary(op, *dtypes, shape, activation)
        feed = {"x": ints(rng, dtypes[0], shape), "b": ints(rng, dtypes[1], shape)}
        want = run_graph(graph, feed)
        got = graph_native.load_executor(graph).run(feed)
        for name, value in want.items():
            assert got[name].dtype == np.dtype(dtypes[2])
            np.testing.assert_array_equal(got[name], value)


def test_operands_of_different_shapes_are_refused() -> None:
    graph = qbinary("QAdd", "uint8", "uint8", "uint8", ("n", 4))
    with pytest.raises(ValueError, match=r"a \(2, 4\) and b \(1, 4\) must have the same shape"):
        graph_native.load_executor(graph).run({"x": np.zeros((2, 4), np.uint8), "b": np.zeros((1, 4), np.uint8)})
