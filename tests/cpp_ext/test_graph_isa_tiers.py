"""The kernel ISA tiers as a device sees them: which tiers a machine lists (aarch64: "neondot" when the CPU has
the dot-product extension, "neon", then "portable"; checked under qemu by scripts/check-aarch64),
EDGEFLEET_NATIVE_ISA forcing each at import, and the fp32 direct conv's tile shapes (16 channels x 4 pixels,
the last 8 channels x 8 pixels, pixel tails) on every tier against the numpy spec. The other tier
comparisons (depthwise and int8 bit for bit, GEMM within its tolerance) are parametrized over
available_isas() in the neighbouring files."""

from __future__ import annotations

import ctypes
import os
import platform
import subprocess
import sys

import numpy as np
import pytest

from edgefleet.cpp_ext import graph_native
from edgefleet.cpp_ext.graph_format import GraphBuilder
from edgefleet.cpp_ext.graph_reference import run_graph

ISAS = graph_native.available_isas()



def check_every_tier(graph, feed: dict, atol: float, *, threaded: bool) -> None:
    """The graph on every ISA tier matches the numpy reference (rtol 1e-5, atol), the x86 tiers give the
    same bits, and (threaded) 3 threads give each tier's 1-thread bits."""
    want = next(iter(run_graph(graph, feed).values()))
    outputs = {}
    try:
        for name in ISAS:
            graph_native.select_isa(name)
            outputs[name] = next(iter(graph_native.load_executor(graph).run(feed).values()))
            np.testing.assert_allclose(outputs[name], want, rtol=1e-5, atol=atol, err_msg=name)
            if threaded:
                again = next(iter(graph_native.load_executor(graph, threads=3).run(feed).values()))
                np.testing.assert_array_equal(again, outputs[name], err_msg=name)
    finally:
        graph_native.select_isa("auto")
    if "avx512" in outputs and "avx2" in outputs:
        np.testing.assert_array_equal(outputs["avx512"], outputs["avx2"])

@pytest.mark.skipif(platform.machine() != "aarch64", reason="the neon tier exists on aarch64 only")
def test_aarch64_lists_neon_first_and_runs_it_by_default() -> None:
    libc = ctypes.CDLL(None)
    libc.getauxval.restype = ctypes.c_ulong
    dotprod = bool(libc.getauxval(16) & (1 << 20))  # AT_HWCAP & HWCAP_ASIMDDP (what qemu-user reports too)
    assert ISAS == (["neondot", "neon", "portable"] if dotprod else ["neon", "portable"])
    assert graph_native.isa() == ISAS[0]
    assert graph_native.peak_gflops("neon", 0.01) > 0


@pytest.mark.parametrize("name", ISAS)
def test_environment_variable_forces_each_tier(name: str) -> None:
    env = dict(os.environ, EDGEFLEET_NATIVE_ISA=name)
    out = subprocess.run([sys.executable, "-c", "from edgefleet.cpp_ext import graph_native as g; print(g.isa())"],
                         env=env, capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == name


def test_unknown_tier_is_refused_with_the_available_ones() -> None:
    before = graph_native.isa()
    with pytest.raises(ValueError, match="unknown ISA 'neon9'; available: " + ",".join(ISAS)):
        graph_native.select_isa("neon9")
    assert graph_native.isa() == before


# 100 and 130 output channels: W packed in 3 column panels (32/32/40 and 48/48/40 wide, the last cut at M).
@pytest.mark.parametrize("m,c,hw", [(20, 3, (9, 7)), (40, 16, (6, 5)), (5, 8, (3, 3)), (64, 32, (4, 4)),
                                    (100, 8, (5, 6)), (130, 4, (3, 5))])
def test_direct_conv_tiles_and_tails_on_every_tier(m: int, c: int, hw: tuple) -> None:
    rng = np.random.default_rng(m * c)
    b = GraphBuilder()
    x = b.input("x", "float32", ("n", c, *hw))
    w = b.constant("w", rng.standard_normal((m, c, 3, 3)).astype(np.float32))
    bias = b.constant("b", rng.standard_normal(m).astype(np.float32))
    b.output(b.node("Conv", [x, w, bias], pads=[1, 1, 1, 1], activation="relu"), "")
    graph = b.build()
    feed = {"x": rng.standard_normal((2, c, *hw)).astype(np.float32)}
    want = next(iter(run_graph(graph, feed).values()))
    try:
        for name in ISAS:
            graph_native.select_isa(name)
            got = next(iter(graph_native.load_executor(graph).run(feed).values()))
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.sqrt(9 * c), err_msg=name)
    finally:
        graph_native.select_isa("auto")


@pytest.mark.parametrize("m,c,hw,residual", [(72, 24, (5, 7), False), (20, 100, (9, 9), True),
                                             (16, 16, (32, 32), True)])
def test_pointwise_conv_pixels_in_lanes_on_every_tier(m: int, c: int, hw: tuple, residual: bool) -> None:
    """1x1 convs (avx512 runs them with pixels in the lanes, tails masked) match the reference on every
    tier, and the x86 tiers give the same bits: each output is the same k-ordered FMA chain."""
    rng = np.random.default_rng(m + c)
    b = GraphBuilder()
    x = b.input("x", "float32", ("n", c, *hw))
    w = b.constant("w", rng.standard_normal((m, c, 1, 1)).astype(np.float32))
    bias = b.constant("b", rng.standard_normal(m).astype(np.float32))
    inputs = [x, w, bias] + ([b.input("z", "float32", ("n", m, *hw))] if residual else [])
    b.output(b.node("Conv", inputs, activation="relu"), "")
    graph = b.build()
    feed = {"x": rng.standard_normal((2, c, *hw)).astype(np.float32)}
    if residual:
        feed["z"] = rng.standard_normal((2, m, *hw)).astype(np.float32)
    check_every_tier(graph, feed, 1e-5 * np.sqrt(c), threaded=False)


@pytest.mark.parametrize("m,c,hw,stride", [(16, 3, (40, 37), 1), (24, 16, (9, 64), 1), (20, 3, (33, 33), 2)])
def test_shallow_padded_conv_row_runs_on_every_tier(m: int, c: int, hw: tuple, stride: int) -> None:
    """Shallow 3x3 convs with padding on wide rows (avx512: pixels in the lanes, output row by output
    row; at stride 2 too, rows of 17 as 16 + 1) match the reference, with the same bits on the x86
    tiers, and at 1 and 3 threads."""
    rng = np.random.default_rng(m * c + stride)
    b = GraphBuilder()
    x = b.input("x", "float32", ("n", c, *hw))
    w = b.constant("w", rng.standard_normal((m, c, 3, 3)).astype(np.float32))
    bias = b.constant("b", rng.standard_normal(m).astype(np.float32))
    b.output(b.node("Conv", [x, w, bias], pads=[1, 1, 1, 1], strides=[stride, stride], activation="relu"), "")
    graph = b.build()
    feed = {"x": rng.standard_normal((2, c, *hw)).astype(np.float32)}
    check_every_tier(graph, feed, 1e-5 * np.sqrt(9 * c), threaded=True)


@pytest.mark.parametrize("m,c,hw,kernel,pads,dilation,residual", [
    (16, 16, (12, 64), (3, 3), [1, 1, 1, 1], 1, True),     # ResNet's 16-channel layers, a row of 4 vectors
    (8, 3, (5, 70), (3, 3), [1, 1, 1, 1], 1, False),       # 64 + a 6-pixel tail per row
    (12, 5, (6, 37), (5, 5), [2, 1, 0, 3], 1, True),       # asymmetric pads, a 5-wide kernel
    (20, 4, (7, 100), (3, 3), [2, 2, 2, 2], 2, False),     # dilation 2: taps two columns apart
    (9, 6, (4, 48), (1, 3), [0, 1, 0, 1], 1, True),        # 3 vectors, edge lanes only padded
])
def test_conv_padded_in_kernel_on_every_tier(m: int, c: int, hw: tuple, kernel: tuple, pads: list, dilation: int,
                                             residual: bool) -> None:
    """Stride-1 shallow convs on rows of 32 pixels and more (avx512 reads the input in place, its loads
    masked to the plane, where the other tiers copy it zero-padded) match the reference, with the same
    bits on the x86 tiers and at 1 and 3 threads."""
    rng = np.random.default_rng(m * c + kernel[1])
    b = GraphBuilder()
    x = b.input("x", "float32", ("n", c, *hw))
    w = b.constant("w", rng.standard_normal((m, c, *kernel)).astype(np.float32))
    bias = b.constant("b", rng.standard_normal(m).astype(np.float32))
    out_hw = tuple(d + pads[i] + pads[i + 2] - dilation * (kernel[i] - 1) for i, d in enumerate(hw))
    inputs = [x, w, bias] + ([b.input("z", "float32", ("n", m, *out_hw))] if residual else [])
    b.output(b.node("Conv", inputs, pads=pads, dilations=[dilation, dilation], activation="relu"), "")
    graph = b.build()
    feed = {"x": rng.standard_normal((2, c, *hw)).astype(np.float32)}
    if residual:
        feed["z"] = rng.standard_normal((2, m, *out_hw)).astype(np.float32)
    check_every_tier(graph, feed, 1e-5 * np.sqrt(kernel[0] * kernel[1] * c), threaded=True)


@pytest.mark.parametrize("m,c,hw,kernel,pads,residual", [
    (32, 16, (12, 64), (3, 3), [1, 1, 1, 1], False),   # ResNet's 16 -> 32 downsampling: rows of 2 vectors
    (20, 5, (9, 67), (3, 3), [1, 0, 2, 2], True),      # asymmetric pads, a 2-pixel tail, 12 + 8 channels
    (13, 3, (7, 100), (5, 3), [2, 1, 2, 1], False),    # 5 rows of taps, 50-pixel rows, 12 + 4 channels
    (64, 8, (5, 80), (3, 3), [1, 1, 1, 1], True),      # 40-pixel rows: a vector and a half
    (64, 32, (9, 32), (3, 3), [1, 1, 1, 1], True),     # ResNet's 32 -> 64: rows of 16, two to a tile
    (24, 7, (8, 40), (3, 3), [1, 1, 1, 1], False),     # rows of 20: 16 + 4, each row its own tiles
])
def test_stride_2_conv_padded_in_kernel_on_every_tier(m: int, c: int, hw: tuple, kernel: tuple, pads: list,
                                                       residual: bool) -> None:
    """Stride-2 convs with 3-wide rows of taps on output rows of 16 pixels and more (avx512 reads the
    input in place, even and odd columns apart, where the other tiers copy it zero-padded) match the
    reference, with the same bits on the x86 tiers and at 1 and 3 threads."""
    rng = np.random.default_rng(m * c + kernel[0])
    b = GraphBuilder()
    x = b.input("x", "float32", ("n", c, *hw))
    w = b.constant("w", rng.standard_normal((m, c, *kernel)).astype(np.float32))
    bias = b.constant("b", rng.standard_normal(m).astype(np.float32))
    out_hw = tuple((d + pads[i] + pads[i + 2] - kernel[i]) // 2 + 1 for i, d in enumerate(hw))
    assert out_hw[1] >= 16
    inputs = [x, w, bias] + ([b.input("z", "float32", ("n", m, *out_hw))] if residual else [])
    b.output(b.node("Conv", inputs, pads=pads, strides=[2, 2], activation="relu"), "")
    graph = b.build()
    feed = {"x": rng.standard_normal((2, c, *hw)).astype(np.float32)}
    if residual:
        feed["z"] = rng.standard_normal((2, m, *out_hw)).astype(np.float32)
    check_every_tier(graph, feed, 1e-5 * np.sqrt(kernel[0] * kernel[1] * c), threaded=True)


@pytest.mark.parametrize("m,c,hw,k,stride,residual", [(32, 16, (17, 20), 1, 2, True), (24, 8, (9, 9), 1, 3, False),
                                                      (64, 40, (9, 11), 3, 1, True), (128, 8, (6, 7), 3, 2, False)])
def test_strided_pointwise_and_64_channel_panels_on_every_tier(m: int, c: int, hw: tuple, k: int, stride: int,
                                                                residual: bool) -> None:
    """Strided 1x1 convs (ResNet's shortcuts: their pixels copied side by side first) and 3x3 convs of a
    multiple of 64 channels (avx512: 4-vector x 6-pixel tiles) match the reference on every tier, with the
    same bits on the x86 tiers and at 1 and 3 threads."""
    rng = np.random.default_rng(m + c + k)
    b = GraphBuilder()
    x = b.input("x", "float32", ("n", c, *hw))
    w = b.constant("w", rng.standard_normal((m, c, k, k)).astype(np.float32))
    bias = b.constant("b", rng.standard_normal(m).astype(np.float32))
    out_hw = tuple((d + 2 * (k // 2) - k) // stride + 1 for d in hw)
    inputs = [x, w, bias] + ([b.input("z", "float32", ("n", m, *out_hw))] if residual else [])
    b.output(b.node("Conv", inputs, pads=[k // 2] * 4, strides=[stride, stride], activation="relu"), "")
    graph = b.build()
    feed = {"x": rng.standard_normal((2, c, *hw)).astype(np.float32)}
    if residual:
        feed["z"] = rng.standard_normal((2, m, *out_hw)).astype(np.float32)
    check_every_tier(graph, feed, 1e-5 * np.sqrt(k * k * c), threaded=True)


def eight_wide_conv(m: int, c: int, h: int, residual: bool, w: np.ndarray, stride: int = 1):
    """A 3x3 relu conv padded by 1 onto (n, m, h, 8) from (n, c, h * stride, 8 * stride) with W w, a linspace
    bias and (residual) an input z."""
    b = GraphBuilder()
    bias = b.constant("b", np.linspace(-1, 1, m, dtype=np.float32))
    inputs = [b.input("x", "float32", ("n", c, h * stride, 8 * stride)), b.constant("w", w), bias]
    if residual:
        inputs.append(b.input("z", "float32", ("n", m, h, 8)))
    b.output(b.node("Conv", inputs, pads=[1, 1, 1, 1], strides=[stride, stride], activation="relu"), "")
    return b.build()


@pytest.mark.parametrize("m,c,h,residual,stride", [
    (128, 128, 8, True, 1), (40, 7, 16, False, 1), (64, 20, 2, True, 1), (8, 3, 5, True, 1), (100, 5, 9, False, 1),
    (128, 64, 8, False, 2), (40, 7, 16, True, 2),
])
def test_eight_wide_3x3_conv_skipping_the_padding_on_every_tier(m: int, c: int, h: int, residual: bool,
                                                                 stride: int) -> None:
    """3x3 convs padded by 1 onto maps 8 wide (ResNet's last stage; at stride 1 avx512 reads the input in
    place and skips the taps of the padding, pixels in classes by their taps: inner rows and columns, top
    and bottom rows, corners; at stride 2 the tiles over the padded copy) match the reference, with the
    same bits on the x86 tiers and at 1 and 3 threads (16 rows: 128 pixels, split by pixels; 128 channels:
    3 panels; 64: one of 4 vectors; 40 and 100: masked vectors)."""
    rng = np.random.default_rng(m * c + h + stride)
    graph = eight_wide_conv(m, c, h, residual, rng.standard_normal((m, c, 3, 3)).astype(np.float32), stride)
    feed = {"x": rng.standard_normal((2, c, h * stride, 8 * stride)).astype(np.float32)}
    if residual:
        feed["z"] = rng.standard_normal((2, m, h, 8)).astype(np.float32)
    check_every_tier(graph, feed, 1e-5 * np.sqrt(9 * c), threaded=True)


def test_eight_wide_conv_with_an_infinite_weight_keeps_the_padding_nan_on_every_tier() -> None:
    """An infinite weight times the padding's zero is NaN in the padded copy's chain: avx512 does not skip
    the padding's taps then, so the top row of that channel is NaN on every tier, the same bits on x86."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((16, 4, 3, 3)).astype(np.float32)
    w[0, 0, 0, 0] = np.inf
    graph = eight_wide_conv(16, 4, 8, False, w)
    feed = {"x": rng.standard_normal((1, 4, 8, 8)).astype(np.float32)}
    outputs = {}
    try:
        for name in ISAS:
            graph_native.select_isa(name)
            outputs[name] = next(iter(graph_native.load_executor(graph).run(feed).values()))
            assert np.isnan(outputs[name][0, 0, 0]).all(), name
            assert np.isfinite(outputs[name][0, 1:]).all(), name
    finally:
        graph_native.select_isa("auto")
    if "avx512" in outputs and "avx2" in outputs:
        np.testing.assert_array_equal(outputs["avx512"], outputs["avx2"])


def test_squeeze_excite_matrix_vector_over_panels_on_every_tier() -> None:
    """A 1x1 conv on a 1x1 input (squeeze-excite's fully connected layer) with 100 outputs: the
    matrix-vector path walks W's column panels."""
    rng = np.random.default_rng(7)
    b = GraphBuilder()
    x = b.input("x", "float32", ("n", 72, 1, 1))
    w = b.constant("w", rng.standard_normal((100, 72, 1, 1)).astype(np.float32))
    bias = b.constant("b", rng.standard_normal(100).astype(np.float32))
    b.output(b.node("Conv", [x, w, bias], activation="relu"), "")
    graph = b.build()
    feed = {"x": rng.standard_normal((3, 72, 1, 1)).astype(np.float32)}
    want = next(iter(run_graph(graph, feed).values()))
    try:
        for name in ISAS:
            graph_native.select_isa(name)
            got = next(iter(graph_native.load_executor(graph).run(feed).values()))
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.sqrt(72), err_msg=name)
    finally:
        graph_native.select_isa("auto")


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # the reference: Gelu(-inf) is nan
@pytest.mark.parametrize("op,shape", [("Softmax", (3, 37)), ("Softmax", (2, 64)), ("Softmax", (4, 7)),
                                      ("Gelu", (3, 1001)), ("Erf", (2, 999))])
def test_exp_erf_rows_same_bits_on_every_tier(op: str, shape: tuple) -> None:
    # the vecmath rows are the same IEEE operations in every tier (the NEON ones included)
    rng = np.random.default_rng(shape[1])
    x = (rng.standard_normal(shape) * 8).astype(np.float32)
    x[0, :3] = [np.nan, np.inf, -np.inf] if op != "Softmax" else [-1e4, 0.0, 88.5]
    b = GraphBuilder()
    b.output(b.node(op, [b.input("x", "float32", shape)], **({"axis": -1} if op == "Softmax" else {})), "")
    graph = b.build()
    outputs = []
    try:
        for name in ISAS:
            graph_native.select_isa(name)
            outputs.append(next(iter(graph_native.load_executor(graph).run({"x": x}).values())))
    finally:
        graph_native.select_isa("auto")
    for got in outputs[1:]:
        np.testing.assert_array_equal(got, outputs[0])
