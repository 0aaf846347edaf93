"""The float Conv's Winograd F(2x2, 3x3) path (graph_ops_winograd.cpp: 3x3 stride-1 convs with constant W, 24+
channels in and out, 64+ output tiles) against the numpy spec on every ISA tier: odd map sizes (the last tile
row and column cut), asymmetric and no padding, channel counts off the vector width, batch 2, and the fused
epilogues (bias, ReLU / Clip / HardSwish, residual Z). The x86 tiers give the same bits (the transforms are
the same additions on every tier, in AVX-512 registers on avx512 and C++ loops on the others, the GEMMs the
same sums), and 3 threads give 1 thread's bits."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.cpp_ext.graph_format import GraphBuilder
from tests.cpp_ext.test_graph_isa_tiers import check_every_tier

ACTIVATIONS = {"none": {}, "relu": {"activation": "relu"},
               "clip": {"activation": "clip", "act_min": 0.0, "act_max": 6.0},
               "hardswish": {"activation": "hardswish"}}


def conv_graph(rng: np.random.Generator, m: int, c: int, hw: tuple, pads: list[int], activation: str,
               residual: bool):
    oh, ow = hw[0] + pads[0] + pads[2] - 2, hw[1] + pads[1] + pads[3] - 2
    b = GraphBuilder()
    x = b.input("x", "float32", ("n", c, *hw))
    w = b.constant("w", (rng.standard_normal((m, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32))
    bias = b.constant("b", rng.standard_normal(m).astype(np.float32))
    inputs = [x, w, bias] + ([b.input("z", "float32", ("n", m, oh, ow))] if residual else [])
    b.output(b.node("Conv", inputs, pads=pads, **ACTIVATIONS[activation]), "")
    feed = {"x": (rng.standard_normal((2, c, *hw)) * 2).astype(np.float32)}
    if residual:
        feed["z"] = rng.standard_normal((2, m, oh, ow)).astype(np.float32)
    return b.build(), feed


# (M, C, H x W, pads top/left/bottom/right): 64 tiles on 16x16; 9 x 8 tiles, the last row and column cut;
# asymmetric pads (19 x 17 out); no padding (18 x 19 out); 33 -> 64 channels on 31x32 (256 tiles); 24 -> 40
# channels on 33x31 (17 x 16 tiles, the fewest channels it takes); ResNet's 32 channels on 32x32; 5 x 22
# tiles (avx512's transforms: 16 tiles of a row, then 6) and 5 x 17 with the last column cut (16 + 1);
# 24 -> 40 on 64x63 (32 x 32 tiles, the last tile column cut; 2 blocks of tile rows, 11 on avx512).
# Each of these runs the Winograd path (checked against the build without it: other bits).
SHAPES = [(64, 64, (16, 16), [1, 1, 1, 1]), (40, 90, (17, 15), [1, 1, 1, 1]), (72, 57, (19, 18), [0, 1, 2, 0]),
          (64, 64, (20, 21), [0, 0, 0, 0]), (64, 33, (31, 32), [1, 1, 1, 1]), (40, 24, (33, 31), [1, 1, 1, 1]),
          (32, 32, (32, 32), [1, 1, 1, 1]), (64, 64, (10, 44), [1, 1, 1, 1]), (64, 64, (9, 33), [1, 1, 1, 1]),
          (40, 24, (64, 63), [1, 1, 1, 1])]


@pytest.mark.parametrize("m,c,hw,pads", SHAPES)
@pytest.mark.parametrize("activation,residual", [("relu", False), ("none", True), ("clip", True),
                                                 ("hardswish", False), ("hardswish", True)])
def test_winograd_conv_matches_reference_on_every_tier(m: int, c: int, hw: tuple, pads: list[int], activation: str,
                                                       residual: bool) -> None:
    rng = np.random.default_rng(m * c + hw[0])
    graph, feed = conv_graph(rng, m, c, hw, pads, activation, residual)
    # Outputs up to ~11 in magnitude; the error measured under 1e-5 on every shape here.
    check_every_tier(graph, feed, 2e-5, threaded=True)



@pytest.mark.parametrize("activation,residual", [("relu", True), ("clip", False), ("none", True)])
def test_winograd_nan_and_inf_inputs_give_the_same_bits_on_x86_tiers(activation: str, residual: bool) -> None:
    """A NaN and an infinity in X (and in Z) reach the outputs whose windows hold them the same way on the
    avx512 tier (its clamp and residual in the output transform's store) as on avx2 (the C++ passes): NaN
    stays NaN through ReLU / Clip, bit for bit."""
    from edgefleet.cpp_ext import graph_native

    rng = np.random.default_rng(11)
    graph, feed = conv_graph(rng, 32, 32, (32, 32), [1, 1, 1, 1], activation, residual)
    feed["x"][0, 3, 5, 7] = np.nan
    feed["x"][1, 9, 20, 30] = np.inf
    feed["x"][1, 0, 0, 0] = -np.inf
    if residual:
        feed["z"][0, 2, 31, 31] = np.nan
    outputs = {}
    try:
        for name in ("avx512", "avx2"):
            if name not in graph_native.available_isas():
                pytest.skip(f"this CPU has no {name}")
            graph_native.select_isa(name)
            outputs[name] = next(iter(graph_native.load_executor(graph).run(feed).values()))
    finally:
        graph_native.select_isa("auto")
    assert np.isnan(outputs["avx512"][0, :, 4:7, 6:9]).all()
    if residual:
        assert np.isnan(outputs["avx512"][0, 2, 31, 31])
    np.testing.assert_array_equal(outputs["avx512"].view(np.uint32), outputs["avx2"].view(np.uint32))
