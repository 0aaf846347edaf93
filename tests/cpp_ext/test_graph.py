"""The native graph executor against its numpy spec (graph_reference), op by op, on every kernel ISA tier.

Graphs are built with graph_format.GraphBuilder: these tests need numpy and the extension only (they
also run on aarch64 with the edge extra, without onnx or torch).
"""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.cpp_ext import graph_native
from edgefleet.cpp_ext.graph_format import GraphBuilder, GraphFormatError, graph_bytes, read_graph
from edgefleet.cpp_ext.graph_reference import run_graph
from tests.cpp_ext.conftest import ISAS


def one_op(op: str, x_shape: tuple, consts: dict | None = None, dtype: str = "float32", **attrs) -> object:
    b = GraphBuilder()
    names = [b.input("x", dtype, x_shape)]
    for name, value in (consts or {}).items():
        names.append(b.constant(name, value) if value is not None else "")
    b.output(b.node(op, names, **attrs), "")
    return read_graph(graph_bytes(b.build()))  # through the file format too


def check(graph, x: np.ndarray, exact: bool = False, rtol: float = 1e-5, atol: float = 1e-5) -> None:
    got = graph_native.load_executor(graph).run({"x": x})
    want = run_graph(graph, {"x": x})
    for name, value in want.items():
        assert got[name].dtype == value.dtype and got[name].shape == value.shape, name
        if exact:
            np.testing.assert_array_equal(got[name], value)
        else:
            np.testing.assert_allclose(got[name], value, rtol=rtol, atol=atol)


def f32(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("seed", range(6))
def test_conv_random_attributes(isa: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    group = int(rng.choice([1, 2]))
    c, m = 2 * group, 3 * group
    kh, kw = (int(v) for v in rng.integers(1, 4, 2))
    attrs = {"strides": [int(v) for v in rng.integers(1, 3, 2)], "dilations": [int(v) for v in rng.integers(1, 3, 2)],
             "group": group}
    if seed % 3 == 2:
        attrs["auto_pad"] = ["SAME_UPPER", "SAME_LOWER", "VALID"][seed % 3 - 2 + seed // 3 % 3]
    else:
        attrs["pads"] = [int(v) for v in rng.integers(0, 3, 4)]
    activation = ["none", "relu", "clip"][seed % 3]
    extra = {"act_min": -0.5, "act_max": 0.5} if activation == "clip" else {}
    graph = one_op("Conv", ("n", c, 9, 8), {"w": f32(rng, m, c // group, kh, kw), "b": f32(rng, m)},
                   activation=activation, **attrs, **extra)
    check(graph, f32(rng, 2, c, 9, 8))


@pytest.mark.parametrize("m,c,pads,bias", [(1, 1, [1, 1, 1, 1], True), (8, 3, [0, 0, 0, 0], False),
                                            (17, 16, [1, 0, 2, 1], True), (33, 5, [2, 2, 2, 2], True),
                                            (70, 8, [1, 1, 1, 1], True), (130, 9, [0, 1, 0, 1], False),
                                            (64, 2, [1, 1, 1, 1], True)])
def test_conv_direct_channel_and_pixel_tails(isa: str, m: int, c: int, pads: list, bias: bool) -> None:
    # the direct path's output-channel vectors (8 or 16 wide) in bands, pixel tiles (4 or 8) with their
    # tails; on avx2, K = c * 9 >= 64 takes the deep tile, smaller K the 8 x 8 one
    rng = np.random.default_rng(m)
    consts = {"w": f32(rng, m, c, 3, 3), "b": f32(rng, m) if bias else None}
    check(one_op("Conv", ("n", c, 5, 7), consts, pads=pads, activation="relu"), f32(rng, 3, c, 5, 7))


@pytest.mark.parametrize("trans_a,trans_b,bias_shape", [(0, 0, (5,)), (0, 1, (1, 5)), (1, 0, (4, 1)),
                                                        (1, 1, ()), (0, 1, None)])
def test_gemm(isa: str, trans_a: int, trans_b: int, bias_shape: tuple | None) -> None:
    rng = np.random.default_rng(1)
    a_shape = (7, 4) if trans_a else (4, 7)
    b = f32(rng, 5, 7) if trans_b else f32(rng, 7, 5)
    c = None if bias_shape is None else f32(rng, *bias_shape)
    graph = one_op("Gemm", a_shape, {"b": b, "c": c}, transA=trans_a, transB=trans_b, alpha=0.5, beta=2.0)
    check(graph, f32(rng, *a_shape))


@pytest.mark.parametrize("n", [1, 3, 8, 17, 64, 130])
def test_gemm_column_tails_and_relu(isa: str, n: int) -> None:  # every SIMD block and tail width
    rng = np.random.default_rng(n)
    graph = one_op("Gemm", ("batch", 33), {"b": f32(rng, n, 33), "c": f32(rng, n)}, transB=1, activation="relu")
    for rows in (1, 5):
        check(graph, f32(rng, rows, 33))


@pytest.mark.parametrize("a_shape,b_shape", [((3, 4), (4, 5)), ((2, 3, 4), (4, 6)), ((2, 1, 3, 4), (5, 4, 2)),
                                             ((4,), (4, 3)), ((2, 3, 4), (4,))])
def test_matmul_broadcasting(isa: str, a_shape: tuple, b_shape: tuple) -> None:
    rng = np.random.default_rng(2)
    check(one_op("MatMul", a_shape, {"b": f32(rng, *b_shape)}), f32(rng, *a_shape))


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("b_shape", [(2, 3, 4, 5), (5,), (), (3, 1, 1), (1, 3, 4, 1), (2, 1, 4, 5)])
def test_binary_broadcasting(op: str, b_shape: tuple) -> None:
    rng = np.random.default_rng(3)
    b = f32(rng, *b_shape) + (3.0 if op == "Div" else 0.0)
    check(one_op(op, (2, 3, 4, 5), {"b": np.asarray(b, np.float32)}), f32(rng, 2, 3, 4, 5), exact=True)


def test_relu_clip_softmax() -> None:
    rng = np.random.default_rng(4)
    x = f32(rng, 3, 4, 5)
    check(one_op("Relu", (3, 4, 5)), x, exact=True)
    check(one_op("Clip", (3, 4, 5), {"lo": np.float32(-0.3), "hi": np.float32(0.2)}), x, exact=True)
    check(one_op("Clip", (3, 4, 5), {"lo": None, "hi": np.float32(0.2)}), x, exact=True)
    for axis in (0, 1, -1):
        check(one_op("Softmax", (3, 4, 5), axis=axis), x * 10, rtol=1e-5, atol=1e-7)
    check(one_op("Softmax", (3, 4, 5), axis=1, coerce_2d=1), x, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_pools(op: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    kernel = [int(v) for v in rng.integers(1, 4, 2)]
    attrs = {"kernel_shape": kernel, "strides": [int(v) for v in rng.integers(1, 3, 2)],
             "ceil_mode": int(seed % 2)}
    if seed % 4 == 3:
        attrs["auto_pad"] = "SAME_UPPER"
    else:
        attrs["pads"] = [int(rng.integers(0, k)) for k in kernel * 2]
    if op == "MaxPool":
        attrs["dilations"] = [int(v) for v in rng.integers(1, 3, 2)]
    else:
        attrs["count_include_pad"] = int(seed // 2 % 2)
    check(one_op(op, (2, 3, 9, 10), **attrs), f32(rng, 2, 3, 9, 10), exact=op == "MaxPool")


@pytest.mark.parametrize("dtype", ["float32", "uint8", "int8"])
def test_max_pool_2x2_stride_2(dtype: str) -> None:  # the unchecked path; odd sizes drop the last row, column
    rng = np.random.default_rng(6)
    x = f32(rng, 2, 3, 7, 9) * 50
    x = x if dtype == "float32" else np.clip(x, np.iinfo(dtype).min, np.iinfo(dtype).max).astype(dtype)
    check(one_op("MaxPool", (2, 3, 7, 9), dtype=dtype, kernel_shape=[2, 2], strides=[2, 2]), x, exact=True)


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_max_pool_integer(dtype: str) -> None:
    info = np.iinfo(dtype)
    x = np.random.default_rng(5).integers(info.min, info.max + 1, (1, 2, 6, 6)).astype(dtype)
    check(one_op("MaxPool", (1, 2, 6, 6), dtype=dtype, kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]), x,
          exact=True)


def test_global_pools() -> None:
    x = f32(np.random.default_rng(6), 2, 3, 5, 4)
    check(one_op("GlobalAveragePool", (2, 3, 5, 4)), x)
    check(one_op("GlobalMaxPool", (2, 3, 5, 4)), x, exact=True)


@pytest.mark.parametrize("op,consts,attrs,x_shape", [
    ("Reshape", {"s": np.array([0, -1], np.int64)}, {}, (2, 3, 4)),
    ("Reshape", {"s": np.array([4, 0, 6], np.int64)}, {"allowzero": 1}, (0, 4, 6)),
    ("Flatten", {}, {"axis": 2}, (2, 3, 4)),
    ("Flatten", {}, {"axis": -3}, (2, 3, 4)),
    ("Squeeze", {"a": np.array([1], np.int64)}, {}, (2, 1, 4)),
    ("Squeeze", {}, {}, (1, 3, 1)),
    ("Unsqueeze", {"a": np.array([0, -1], np.int64)}, {}, (2, 3)),
    ("Identity", {}, {}, (2, 3)),
    ("Transpose", {}, {"perm": [2, 0, 1]}, (2, 3, 4)),
    ("Transpose", {}, {}, (2, 3, 4)),
])
def test_shape_ops(op: str, consts: dict, attrs: dict, x_shape: tuple) -> None:
    x = np.arange(int(np.prod(x_shape)), dtype=np.float32).reshape(x_shape)
    check(one_op(op, x_shape, consts, **attrs), x, exact=True)


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("axis", [None, 1, -1])
def test_quantize_dequantize(dtype: str, axis: int | None) -> None:
    rng = np.random.default_rng(7)
    x = f32(rng, 2, 3, 4) * 5
    x[0, 0, :3] = [0.5, 1.5, -2.5]  # ties round to even
    count = 1 if axis is None else (3 if axis == 1 else 4)
    scale = (rng.random(count).astype(np.float32) + 0.01).reshape(() if axis is None else (count,))
    zero = rng.integers(0, 10, count).astype(dtype).reshape(scale.shape)
    attrs = {} if axis is None else {"axis": axis}
    check(one_op("QuantizeLinear", (2, 3, 4), {"s": scale, "z": zero}, **attrs), x, exact=True)
    q = np.random.default_rng(8).integers(0, 100, (2, 3, 4)).astype(dtype)
    check(one_op("DequantizeLinear", (2, 3, 4), {"s": scale, "z": zero}, dtype=dtype, **attrs), q, exact=True)
    check(one_op("DequantizeLinear", (2, 3, 4), {"s": scale}, dtype="int32", **attrs), q.astype(np.int32), exact=True)


def qparams(rng: np.random.Generator, x_dtype: str, channels: int, per_channel: bool) -> dict:
    count = channels if per_channel else 1
    return {"sx": np.float32(0.02), "zx": np.array(7 if x_dtype == "uint8" else -3, x_dtype),
            "sw": (rng.random(count) * 0.01 + 0.001).astype(np.float32), "zw": np.zeros(count, np.int8),
            "sy": np.float32(0.05), "zy": np.array(100 if x_dtype == "uint8" else 5, x_dtype)}


@pytest.mark.parametrize("x_dtype", ["uint8", "int8"])
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("relu", [False, True])
def test_qconv_exact(isa: str, x_dtype: str, per_channel: bool, relu: bool) -> None:
    rng = np.random.default_rng(9)
    p = qparams(rng, x_dtype, 6, per_channel)
    b = GraphBuilder()
    x = b.input("x", x_dtype, ("n", 4, 7, 7))
    w = b.constant("w", rng.integers(-127, 128, (6, 2, 3, 3)).astype(np.int8))
    bias = b.constant("bias", rng.integers(-500, 500, 6).astype(np.int32))
    names = [b.constant(k, v) for k, v in p.items()]
    inputs = [x, names[0], names[1], w, names[2], names[3], names[4], names[5], bias]
    b.output(b.node("QConv", inputs, group=2, pads=[1, 0, 1, 2], strides=[1, 2],
                    activation="relu" if relu else "none"), x_dtype)
    info = np.iinfo(x_dtype)
    check(b.build(), rng.integers(info.min, info.max + 1, (2, 4, 7, 7)).astype(x_dtype), exact=True)


@pytest.mark.parametrize("x_dtype", ["uint8", "int8"])
@pytest.mark.parametrize("m,c,hw,attrs", [(1, 1, (5, 7), {"pads": [1, 1, 1, 1]}),
                                          (17, 3, (6, 9), {"pads": [0, 1, 2, 1], "strides": [2, 1]}),
                                          (70, 6, (7, 5), {"pads": [2, 2, 2, 2], "dilations": [2, 1]}),
                                          (130, 5, (4, 4), {})])
def test_qconv_direct_tails(isa: str, x_dtype: str, m: int, c: int, hw: tuple, attrs: dict) -> None:
    # group 1: the direct u8 x s8 path (channel groups of 4, output-channel vectors of 16, pixel tiles)
    rng = np.random.default_rng(m)
    p = qparams(rng, x_dtype, m, True)
    b = GraphBuilder()
    x = b.input("x", x_dtype, ("n", c, *hw))
    w = b.constant("w", rng.integers(-128, 128, (m, c, 3, 3)).astype(np.int8))
    names = [b.constant(k, v) for k, v in p.items()]
    inputs = [x, names[0], names[1], w, names[2], names[3], names[4], names[5],
              b.constant("bias", rng.integers(-5000, 5000, m).astype(np.int32))]
    b.output(b.node("QConv", inputs, activation="relu" if m % 2 else "none", **attrs), x_dtype)
    info = np.iinfo(x_dtype)
    check(b.build(), rng.integers(info.min, info.max + 1, (2, c, *hw)).astype(x_dtype), exact=True)


@pytest.mark.parametrize("x_dtype", ["uint8", "int8"])
def test_qconv_weights_beyond_int8_after_zero_point(isa: str, x_dtype: str) -> None:
    # w - w_zero_point outside int8: the im2row + int16 path, on every tier
    rng = np.random.default_rng(3)
    p = qparams(rng, x_dtype, 5, True)
    p["zw"] = np.full(5, 100, np.int8)
    b = GraphBuilder()
    x = b.input("x", x_dtype, ("n", 3, 6, 6))
    w = b.constant("w", rng.integers(-128, 128, (5, 3, 3, 3)).astype(np.int8))
    names = [b.constant(k, v) for k, v in p.items()]
    inputs = [x, names[0], names[1], w, names[2], names[3], names[4], names[5]]
    b.output(b.node("QConv", inputs, pads=[1, 1, 1, 1]), x_dtype)
    info = np.iinfo(x_dtype)
    check(b.build(), rng.integers(info.min, info.max + 1, (2, 3, 6, 6)).astype(x_dtype), exact=True)


@pytest.mark.parametrize("x_dtype", ["uint8", "int8"])
@pytest.mark.parametrize("n", [2, 5, 128])
def test_qgemm_exact(isa: str, x_dtype: str, n: int) -> None:
    rng = np.random.default_rng(n)
    p = qparams(rng, x_dtype, n, True)
    b = GraphBuilder()
    x = b.input("x", x_dtype, ("batch", 37))
    w = b.constant("w", rng.integers(-127, 128, (37, n)).astype(np.int8))
    names = [b.constant(k, v) for k, v in p.items()]
    inputs = [x, names[0], names[1], w, names[2], names[3], names[4], names[5],
              b.constant("bias", rng.integers(-900, 900, n).astype(np.int32))]
    b.output(b.node("QGemm", inputs, activation="relu"), x_dtype)
    info = np.iinfo(x_dtype)
    for rows in (1, 3):
        check(b.build(), rng.integers(info.min, info.max + 1, (rows, 37)).astype(x_dtype), exact=True)


def small_cnn() -> tuple:
    rng = np.random.default_rng(10)
    b = GraphBuilder()
    x = b.input("x", "float32", ("batch", 1, 8, 8))
    y = b.node("Conv", [x, b.constant("w1", f32(rng, 4, 1, 3, 3)), b.constant("b1", f32(rng, 4))],
               pads=[1, 1, 1, 1], activation="relu")
    y = b.node("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
    y = b.node("Reshape", [y, b.constant("s", np.array([-1, 64], np.int64))])
    b.output(b.node("Gemm", [y, b.constant("w", f32(rng, 10, 64)), b.constant("c", f32(rng, 10))], transB=1,
                    outputs=["head"]), "float32", ("batch", 10))
    return b.build(), rng


def test_isas_agree_and_plans_are_cached() -> None:
    graph, rng = small_cnn()
    executor = graph_native.load_executor(graph)
    outputs = {}
    for name in ISAS:
        graph_native.select_isa(name)
        assert graph_native.isa() == name
        outputs[name] = [executor.run({"x": f32(np.random.default_rng(b), b, 1, 8, 8)})["head"] for b in (1, 2, 5)]
    graph_native.select_isa("auto")
    for name in ISAS:
        for got, want in zip(outputs[name], outputs[ISAS[-1]], strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert executor.cached_plans == 3
    for batch in range(1, 12):
        executor.run({"x": f32(rng, batch, 1, 8, 8)})
    assert executor.cached_plans == 8  # bounded


def test_inputs_are_checked_and_any_layout_is_read() -> None:
    graph, rng = small_cnn()
    executor = graph_native.load_executor(graph)
    x = f32(rng, 4, 1, 8, 16)[:, :, :, ::2]  # not contiguous
    np.testing.assert_allclose(executor.run({"x": x})["head"], run_graph(graph, {"x": x})["head"], rtol=1e-5,
                               atol=1e-5)
    with pytest.raises(TypeError, match="dtype float32"):
        executor.run({"x": x.astype(np.float64)})
    with pytest.raises(KeyError, match="missing input 'x'"):
        executor.run({"y": x})
    with pytest.raises(ValueError, match="Conv"):
        executor.run({"x": f32(rng, 1, 2, 8, 8)})  # wrong channel count: named, not a crash


def test_format_refuses_damaged_files() -> None:
    graph, _ = small_cnn()
    data = graph_bytes(graph)
    assert read_graph(data).nodes == graph.nodes
    for damaged, message in ((b"NOTGRAPH" + data[8:], "not an edgefleet graph"), (data[:12], "too short"),
                             (data[:40], "truncated"), (data[:-30], "truncated"),
                             (data[:16] + b"X" + data[17:], "corrupt graph header")):
        with pytest.raises(GraphFormatError, match=message):
            read_graph(damaged)


def test_unsupported_ops_and_dtypes_are_named() -> None:
    b = GraphBuilder()
    x = b.input("x", "float32", (2,))
    y = b.node("Sin", [x], name="sine")
    b.output(b.node("Relu", [b.node("Cos", [y], name="cos")]))
    with pytest.raises(GraphFormatError, match=r"Sin \(node 'sine'\).*Cos \(node 'cos'\)"):
        graph_native.load_executor(b.build())
    with pytest.raises(GraphFormatError, match="input 0 has dtype int8"):
        graph_native.load_executor(one_op("Add", (2,), {"b": np.int8(1)}, dtype="int8"))


@pytest.mark.parametrize("op,attrs", [("Sigmoid", {}), ("Tanh", {}), ("HardSigmoid", {}),
                                      ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}), ("HardSwish", {}),
                                      ("LeakyRelu", {}), ("LeakyRelu", {"alpha": 0.2})])
def test_activations(op: str, attrs: dict) -> None:
    x = f32(np.random.default_rng(7), 2, 3, 5, 7) * 6
    x[0, 0, 0, :4] = [0.0, -3.0, 3.0, -100.0]  # the kinks and a saturated sigmoid
    exact = op not in ("Sigmoid", "Tanh")  # piecewise-linear: the same float32 formula; else libm's exp / tanh
    check(one_op(op, x.shape, **attrs), x, exact=exact, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", ["float32", "uint8", "int64"])
@pytest.mark.parametrize("axis,shapes", [(1, [(2, 3, 4), (2, 1, 4), (2, 5, 4)]), (-1, [(2, 3, 4), (2, 3, 2)]),
                                         (0, [(1, 3, 4), (2, 3, 4)])])
def test_concat(dtype: str, axis: int, shapes: list) -> None:
    rng = np.random.default_rng(8)
    values = [(rng.standard_normal(s) * 50).astype(dtype) for s in shapes]
    b = GraphBuilder()
    names = [b.input("x", dtype, shapes[0])] + [b.constant(f"c{i}", v) for i, v in enumerate(values[1:])]
    b.output(b.node("Concat", names, axis=axis), dtype)
    check(read_graph(graph_bytes(b.build())), values[0], exact=True)


@pytest.mark.parametrize("b_shape", [(2, 3, 1, 1), (1, 3, 1, 1), (2, 3, 4, 1), (1, 1, 1, 5)])
def test_binary_blocked_broadcasting_either_side(b_shape: tuple) -> None:  # x * s in squeeze-excite blocks
    rng = np.random.default_rng(9)
    for order in ((0, 1), (1, 0)):
        b = GraphBuilder()
        names = [b.input("x", "float32", (2, 3, 4, 5)), b.constant("s", f32(rng, *b_shape))]
        b.output(b.node("Sub", [names[order[0]], names[order[1]]]), "float32")
        check(b.build(), f32(rng, 2, 3, 4, 5), exact=True)


@pytest.mark.parametrize("seed", range(8))
def test_depthwise_conv(isa: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    channels, mult = int(rng.integers(1, 20)), int(rng.integers(1, 3))
    k = [int(v) for v in rng.integers(1, 6, 2)]
    attrs = {"group": channels, "kernel_shape": k, "strides": [int(v) for v in rng.integers(1, 3, 2)],
             "dilations": [1, 1] if seed % 3 else [2, 1]}
    if seed % 4 == 3:
        attrs["auto_pad"] = "SAME_UPPER"
    else:
        attrs["pads"] = [int(rng.integers(0, v)) for v in k * 2]
    if seed % 2:
        attrs.update(activation="clip", act_min=0.0, act_max=6.0)
    consts = {"w": f32(rng, channels * mult, 1, *k), "b": f32(rng, channels * mult) if seed % 3 != 1 else None}
    shape = (2, channels, int(rng.integers(9, 17)), int(rng.integers(9, 17)))
    check(one_op("Conv", shape, consts, **attrs), f32(rng, *shape), rtol=1e-5, atol=1e-5)


def test_depthwise_conv_tiers_agree_bit_for_bit() -> None:  # the same products and sums in the same order
    rng = np.random.default_rng(10)
    for stride, k in ((1, 3), (2, 3), (1, 5), (2, 5), (3, 2)):
        graph = one_op("Conv", (1, 12, 19, 21), {"w": f32(rng, 12, 1, k, k), "b": f32(rng, 12)}, group=12,
                       kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4)
        x = f32(rng, 1, 12, 19, 21)
        results = []
        for name in ISAS:
            graph_native.select_isa(name)
            results.append(graph_native.load_executor(graph).run({"x": x}))
        graph_native.select_isa("auto")
        for result in results[1:]:
            np.testing.assert_array_equal(result[next(iter(result))], results[0][next(iter(result))])


@pytest.mark.parametrize("x_dtype", ["uint8", "int8"])
@pytest.mark.parametrize("k,mult,attrs", [(3, 1, {"pads": [1, 1, 1, 1]}),
                                          (5, 1, {"pads": [2, 2, 2, 2], "strides": [2, 2]}),
                                          (3, 2, {"pads": [0, 1, 2, 1], "strides": [1, 2], "dilations": [2, 1]}),
                                          (17, 1, {})])  # 17x17: sums beyond float32's exact range, general path
def test_qconv_depthwise_exact(isa: str, x_dtype: str, k: int, mult: int, attrs: dict) -> None:
    rng = np.random.default_rng(k * mult)
    c = 10
    p = qparams(rng, x_dtype, c * mult, True)
    p["zw"] = rng.integers(-128, 0 if k == 17 else 4, c * mult).astype(np.int8)
    b = GraphBuilder()
    x = b.input("x", x_dtype, ("n", c, 19, 18))
    w = b.constant("w", (np.full((c * mult, 1, k, k), 127) if k == 17 else
                         rng.integers(-128, 128, (c * mult, 1, k, k))).astype(np.int8))
    names = [b.constant(k, v) for k, v in p.items()]
    inputs = [x, names[0], names[1], w, names[2], names[3], names[4], names[5],
              b.constant("bias", rng.integers(-5000, 5000, c * mult).astype(np.int32))]
    b.output(b.node("QConv", inputs, group=c, activation="relu" if mult == 2 else "none", **attrs), x_dtype)
    info = np.iinfo(x_dtype)
    check(b.build(), rng.integers(info.min, info.max + 1, (2, c, 19, 18)).astype(x_dtype), exact=True)


def test_quantize_linear_blocks_and_tails_exact(isa: str) -> None:  # the AVX2 loop takes blocks of 8
    x = f32(np.random.default_rng(11), 3, 37) * 40
    x[0, :6] = [0.5, 1.5, -2.5, 1e9, -1e9, 0.0]  # ties (scale 1) and saturation
    for dtype in ("uint8", "int8"):
        check(one_op("QuantizeLinear", (3, 37), {"s": np.float32(1.0), "z": np.array(3, dtype)}), x, exact=True)
        check(one_op("QuantizeLinear", (3, 37), {"s": np.float32(0.37), "z": np.array(3, dtype)}), x, exact=True)


@pytest.mark.parametrize("group,k,w_shape", [(1, 3, (8, 4, 3, 3)), (1, 1, (8, 4, 1, 1)), (2, 3, (8, 2, 3, 3)),
                                             (4, 3, (8, 1, 3, 3))])
def test_conv_fused_hard_swish(isa: str, group: int, k: int, w_shape: tuple) -> None:
    # direct, pointwise (GEMM), grouped (im2col) and depthwise paths all finish with the same hard swish
    rng = np.random.default_rng(12)
    graph = one_op("Conv", (2, 4, 9, 8), {"w": f32(rng, *w_shape), "b": f32(rng, 8)}, group=group,
                   kernel_shape=[k, k], pads=[k // 2] * 4, activation="hardswish")
    check(graph, f32(rng, 2, 4, 9, 8) * 2)
    check(one_op("Gemm", (3, 5), {"b": f32(rng, 5, 6)}, activation="hardswish"), f32(rng, 3, 5) * 3)


@pytest.mark.parametrize("bias,activation", [(True, "relu"), (False, "none"), (True, "hardswish")])
def test_conv_1x1_on_1x1_input(bias: bool, activation: str) -> None:  # squeeze-excite's layers: matrix-vector
    rng = np.random.default_rng(13)
    consts = {"w": f32(rng, 37, 70, 1, 1), "b": f32(rng, 37) if bias else None}
    check(one_op("Conv", ("n", 70, 1, 1), consts, kernel_shape=[1, 1], activation=activation), f32(rng, 3, 70, 1, 1))
