"""The fused activations' row passes (graph_vecmath_act.cpp: HardSwish and the clamp in vectors of the
active tier, 16 / 8 / 4 lanes with tails): the HardSwish node bit for bit equal to the float32 reference on
every tier, for every length across the vector widths' tails, with NaN, infinities, signed zeros and the
kinks; and the convs whose output they finish (HardSwish on the direct path's panels, clip on the
matrix-vector path) within the float tolerance on every tier; Mul by a per-channel scale (scale_planes) bit for
bit on every tier."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.cpp_ext.graph_format import GraphBuilder
from edgefleet.cpp_ext.graph_reference import run_graph
from tests.cpp_ext.conftest import run_on
from tests.cpp_ext.test_graph import f32, one_op

pytestmark = pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # the reference's -inf * 0
SPECIAL = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, -3.0, 3.0, -1e30, 1e30, 2.5, -2.5], np.float32)


@pytest.mark.parametrize("length", [1, 3, 4, 7, 8, 15, 16, 17, 31, 33, 70])
def test_hard_swish_node_bits_on_every_tier(isa: str, length: int) -> None:
    rng = np.random.default_rng(length)
    x = (f32(rng, 2, length) * 4).astype(np.float32)
    x[0, : min(length, SPECIAL.size)] = SPECIAL[:length]
    graph = one_op("HardSwish", x.shape)
    want = run_graph(graph, {"x": x})
    got = run_on(graph, {"x": x}, isa)
    np.testing.assert_array_equal(got, next(iter(want.values())))  # NaN where the reference has NaN
    assert np.signbit(got[np.isfinite(got) & (got == 0)]).tolist() == np.signbit(
        next(iter(want.values()))[np.isfinite(got) & (got == 0)]).tolist()


@pytest.mark.parametrize("m,hw", [(72, 16), (37, 5), (16, 3)])
def test_conv_hard_swish_panels(isa: str, m: int, hw: int) -> None:
    rng = np.random.default_rng(m)
    graph = one_op("Conv", (1, 24, hw, hw), {"w": f32(rng, m, 24, 1, 1), "b": f32(rng, m)}, activation="hardswish")
    x = f32(rng, 1, 24, hw, hw)
    np.testing.assert_allclose(run_on(graph, {"x": x}, isa), next(iter(run_graph(graph, {"x": x}).values())),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("m", [5, 16, 37])
def test_vector_conv_clip(isa: str, m: int) -> None:  # squeeze-excite's 1x1 on a 1x1 input, clamped
    rng = np.random.default_rng(m)
    graph = one_op("Conv", (1, 70, 1, 1), {"w": f32(rng, m, 70, 1, 1), "b": f32(rng, m)}, activation="clip",
                   act_min=-0.5, act_max=1.0)
    x = f32(rng, 1, 70, 1, 1)
    want = next(iter(run_graph(graph, {"x": x}).values()))
    assert (want == -0.5).any() and (want == 1.0).any()  # both bounds bite
    np.testing.assert_allclose(run_on(graph, {"x": x}, isa), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("inner", [5, 16, 17, 33])
@pytest.mark.parametrize("scale_first", [False, True])
def test_channel_scale_mul_bits_on_every_tier(isa: str, inner: int, scale_first: bool) -> None:
    # squeeze-excite's x * s with s (N, C, 1, 1), after a Relu whose buffer the Mul may reuse in place
    rng = np.random.default_rng(inner)
    b = GraphBuilder()
    x = b.input("x", "float32", (1, 7, 1, inner))
    s = b.constant("s", f32(rng, 1, 7, 1, 1))
    y = b.node("Relu", [x])
    b.output(b.node("Mul", [s, y] if scale_first else [y, s]), "float32")
    graph = b.build()
    feed = {"x": f32(rng, 1, 7, 1, inner)}
    feed["x"][0, 0, 0, 0] = np.nan
    np.testing.assert_array_equal(run_on(graph, feed, isa), next(iter(run_graph(graph, feed).values())))
