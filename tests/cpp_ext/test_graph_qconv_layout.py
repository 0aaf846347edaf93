"""The direct int8 QConv's input copy (graph_ops_qlayout.hpp: NCHW bytes into padded HWC, 16 channels by
16 pixels per SSE2 transpose on x86-64, the rest byte by byte) seen through QConv against the numpy
spec, bit for bit, on every ISA tier: 1x1 convs without padding (the plane copied as one run, as a
keyword spotter's pointwise convs) and 3x3 with padding (row by row), channel counts at, above and below
the block of 16, planes with and without a pixel tail, uint8 and int8 (flipped to uint8 on the way)."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.cpp_ext import graph_native
from edgefleet.cpp_ext.graph_format import GraphBuilder
from edgefleet.cpp_ext.graph_reference import run_graph
from tests.cpp_ext.test_graph import qparams


@pytest.mark.parametrize("x_dtype", ["uint8", "int8"])
@pytest.mark.parametrize("m,c,k,hw,pads", [(64, 64, 1, (25, 5), [0, 0, 0, 0]),
                                           (24, 16, 1, (4, 4), [0, 0, 0, 0]),
                                           (40, 35, 1, (7, 9), [0, 0, 0, 0]),
                                           (16, 48, 3, (19, 33), [1, 1, 1, 1]),
                                           (20, 17, 3, (6, 16), [0, 2, 1, 0]),
                                           (8, 15, 1, (32, 1), [0, 0, 0, 0])])
def test_direct_qconv_matches_spec(isa: str, x_dtype: str, m: int, c: int, k: int, hw: tuple, pads: list) -> None:
    rng = np.random.default_rng(m + c)
    p = qparams(rng, x_dtype, m, True)
    b = GraphBuilder()
    x = b.input("x", x_dtype, ("n", c, *hw))
    w = b.constant("w", rng.integers(-128, 128, (m, c, k, k)).astype(np.int8))
    names = [b.constant(key, value) for key, value in p.items()]
    inputs = [x, names[0], names[1], w, names[2], names[3], names[4], names[5],
              b.constant("bias", rng.integers(-5000, 5000, m).astype(np.int32))]
    b.output(b.node("QConv", inputs, pads=pads, activation="relu"), x_dtype)
    graph = b.build()
    info = np.iinfo(x_dtype)
    feed = {"x": rng.integers(info.min, info.max + 1, (2, c, *hw)).astype(x_dtype)}
    got = next(iter(graph_native.load_executor(graph).run(feed).values()))
    want = next(iter(run_graph(graph, feed).values()))
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(want)) > 10  # not a saturated answer that any copy would match
