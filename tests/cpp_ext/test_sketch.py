"""The native RequestSketch against its numpy reference, and the reference against hand-computed numbers
and against core.profile (the functions that build the reference profile the sketch is compared with)."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from edgefleet.core.profile import build_profile, class_confidence, extract_features
from edgefleet.core.schema import TensorSpec
from edgefleet.core.telemetry import LATENCY_EDGES_MS
from edgefleet.cpp_ext import RequestSketch
from edgefleet.cpp_ext.reference import RequestSketchReference, sketch_classes, sketch_features

IMPLEMENTATIONS = {"native": RequestSketch, "reference": RequestSketchReference}
INF, NAN = np.inf, np.nan
LATENCY = np.asarray(LATENCY_EDGES_MS, dtype=np.float64)
SNAPSHOT_ARRAYS = ("latency", "features", "predictions", "confidence")


def assert_same_snapshot(got: dict, want: dict) -> None:
    assert set(got) == set(want) == {"requests", "samples", "errors", *SNAPSHOT_ARRAYS}
    for key in ("requests", "samples", "errors"):
        assert type(got[key]) is int and got[key] == want[key], key
    for key in SNAPSHOT_ARRAYS:
        assert got[key].dtype == np.int64 and want[key].dtype == np.int64, key
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def both(*args: object) -> tuple[RequestSketch, RequestSketchReference]:
    return RequestSketch(*args), RequestSketchReference(*args)


# --- the reference (and the native sketch) against hand-computed numbers ------------------------------


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_hand_computed_channel_stats_classifier(impl: str) -> None:
    # Two samples of 2 channels x 2 values. Sample 0: channel 0 = [1, 3] (mean 2, std 1), channel 1 =
    # [0, 0] (mean 0, std 0). Sample 1: channel 0 = [2, 2] (mean 2, std 0), channel 1 = [-1, 1] (mean 0,
    # std 1). Features: [mean c0, mean c1, std c0, std c1].
    x = np.array([[[1.0, 3.0], [0.0, 0.0]], [[2.0, 2.0], [-1.0, 1.0]]], dtype=np.float32)
    feature_edges = np.array(
        [
            [1.0, 2.0, 3.0],  # mean c0 = 2, 2 -> on the edge 2 -> bin 2 twice
            [-1.0, -0.5, 0.5],  # mean c1 = 0, 0 -> bin 2 twice
            [0.0, 0.5, 1.0],  # std c0 = 1 -> bin 3 (on the last edge), 0 -> bin 1 (on the first)
            [0.5, 0.5, 2.0],  # std c1 = 0 -> bin 0, 1 -> bin 2 (past the duplicate edge)
        ]
    )
    sketch = IMPLEMENTATIONS[impl]("channel_stats", feature_edges, np.array([0.5, 0.7]), np.array([1.0, 2.0]), 3, False)
    # Not softmax: the confidence is the max score. Row 1 ties between classes 0 and 1: the first wins.
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.5, 0.0]], dtype=np.float32)
    sketch.update(x, scores, 1_500_000)  # 1.5 ms -> bin 1 of [1, 2]
    sketch.error(2_000_000)  # 2 ms, on the last edge -> bin 2
    snap = sketch.snapshot()
    assert (snap["requests"], snap["samples"], snap["errors"]) == (2, 2, 1)
    np.testing.assert_array_equal(
        snap["features"], [[0, 0, 2, 0, 0], [0, 0, 2, 0, 0], [0, 1, 0, 1, 0], [1, 0, 1, 0, 0]]
    )
    np.testing.assert_array_equal(snap["predictions"], [1, 1, 0])
    # float32(0.7) = 0.699999988 < 0.7 -> bin 1; 0.5 is exact, on the first edge -> bin 1.
    np.testing.assert_array_equal(snap["confidence"], [0, 2, 0, 0])
    np.testing.assert_array_equal(snap["latency"], [0, 1, 1, 0])


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_hand_computed_elements_with_nan_and_inf(impl: str) -> None:
    edges = np.array([[0.0, 1.0], [-1.0, -1.0]])
    sketch = IMPLEMENTATIONS[impl]("elements", edges, None, np.array([0.01]), 0, False)
    x = np.array([[NAN, -1.0], [1.0, NAN], [-INF, INF], [0.5, -2.0]])
    sketch.update(x, None, 5)  # 5 ns = 5e-6 ms -> bin 0
    snap = sketch.snapshot()
    assert (snap["requests"], snap["samples"], snap["errors"]) == (1, 4, 0)
    np.testing.assert_array_equal(snap["features"], [[1, 1, 1, 1], [1, 0, 2, 1]])
    np.testing.assert_array_equal(snap["latency"], [1, 0, 0])
    assert snap["predictions"].shape == (0,) and snap["confidence"].shape == (0,)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_hand_computed_softmax_confidence_on_edges(impl: str) -> None:
    conf_edges = np.array([0.25, 0.5, 1.0])
    sketch = IMPLEMENTATIONS[impl]("elements", np.array([[0.0]]), conf_edges, LATENCY, 4, True)
    logits = np.array(
        [
            [0.0, 0.0, -INF, -INF],  # 0.5 exactly, on an edge -> bin 2; the tie goes to class 0
            [3.0, 3.0, 3.0, 3.0],  # 0.25 exactly, on the first edge -> bin 1
            [-INF, 7.0, -INF, -INF],  # 1.0 exactly, on the last edge -> bin 3; class 1
            [0.0, 1.0, NAN, 5.0],  # NaN -> confidence NaN -> bin 4; argmax is the first NaN: class 2
            [-INF, -INF, -INF, -INF],  # -inf - -inf is NaN -> bin 4; class 0
            [INF, 0.0, 0.0, 0.0],  # inf - inf is NaN -> bin 4; class 0
            [0.0, math.log(3.0), -INF, -INF],  # 3/4 up to rounding -> bin 2; class 1
        ]
    )
    sketch.update(np.zeros((7, 1)), logits, 0)
    snap = sketch.snapshot()
    np.testing.assert_array_equal(snap["confidence"], [0, 1, 2, 1, 3])
    np.testing.assert_array_equal(snap["predictions"], [4, 2, 1, 0])
    np.testing.assert_array_equal(snap["latency"][:2], [1, 0])  # 0 ns is below the first edge


def test_reference_features_are_core_profile_extract_features() -> None:
    rng = np.random.default_rng(11)
    for shape, kind in [((5, 3, 4, 4), "channel_stats"), ((4, 2, 300), "channel_stats"), ((6, 3), "channel_stats"),
                        ((5, 7), "elements"), ((3, 2, 3), "elements")]:
        x = rng.normal(scale=3.0, size=shape).astype(np.float32)
        x.flat[::17] = NAN
        np.testing.assert_array_equal(sketch_features(x, kind), extract_features(x, kind))


def test_reference_classes_are_core_profile_class_confidence() -> None:
    rng = np.random.default_rng(12)
    scores = rng.normal(scale=4.0, size=(200, 10)).astype(np.float32)
    for softmax, postprocess in ((True, "softmax"), (False, "none")):
        predicted, confidence = sketch_classes(scores, softmax)
        want_predicted, want_confidence = class_confidence(scores, postprocess)
        np.testing.assert_array_equal(predicted, want_predicted)
        # math.exp and numpy's SIMD exp may differ in the last bit; nothing more.
        np.testing.assert_allclose(confidence, want_confidence, rtol=1e-15, atol=0)


@pytest.mark.parametrize("kind", ["elements", "channel_stats"])
def test_reference_counts_are_extract_features_and_searchsorted(kind: str) -> None:
    rng = np.random.default_rng(13)
    x = rng.normal(size=(40, 2, 3)).astype(np.float64)
    x[3, 1, 2] = NAN
    features = extract_features(x, kind)
    edges = np.sort(rng.normal(size=(features.shape[1], 5)), axis=1)
    sketch = RequestSketchReference(kind, edges, None, LATENCY, 0, False)
    for batch in np.split(x, [1, 4, 17]):
        sketch.update(batch, None, 1000)
    got = sketch.snapshot()["features"]
    for f in range(features.shape[1]):
        values = features[:, f]
        want = np.bincount(np.searchsorted(edges[f], values[~np.isnan(values)], side="right"), minlength=6)
        np.testing.assert_array_equal(got[f, :6], want)
        assert got[f, 6] == np.isnan(values).sum()
    assert got[:, 6].sum() == (1 if kind == "elements" else 2)  # a NaN spoils its channel's mean and std


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_device_counts_on_the_reference_data_reproduce_the_reference_profile(impl: str) -> None:
    """Streaming the profile's own data through a sketch, request by request, gives the profile's counts."""
    rng = np.random.default_rng(14)
    images = rng.normal(loc=0.3, scale=[[[[1.0]], [[2.0]]]], size=(120, 2, 6, 6)).astype(np.float32)
    scores = rng.normal(scale=3.0, size=(120, 5)).astype(np.float32)
    spec = TensorSpec("pixels", "float32", ("batch", 2, 6, 6))
    profile = build_profile({"pixels": images}, [spec], scores, postprocess="none", bins=6)
    feature = profile["features"][0]
    confidence_edges = np.array(profile["confidence"]["edges"])
    sketch = IMPLEMENTATIONS[impl](feature["kind"], np.array(feature["edges"]), confidence_edges, LATENCY, 5, False)
    for start in range(0, 120, 7):
        sketch.update(images[start : start + 7], scores[start : start + 7], 10_000)
    snap = sketch.snapshot()
    np.testing.assert_array_equal(snap["features"], feature["counts"])
    np.testing.assert_array_equal(snap["predictions"], profile["predictions"]["counts"])
    np.testing.assert_array_equal(snap["confidence"], profile["confidence"]["counts"])
    assert snap["samples"] == 120 and snap["requests"] == 18


# --- native against reference -----------------------------------------------------------------------


def sprinkle(rng: np.random.Generator, values: np.ndarray, share: float = 0.05) -> np.ndarray:
    special = rng.choice(np.array([NAN, INF, -INF]), size=values.shape)
    return np.where(rng.random(values.shape) < share, special, values)


def edges_through(rng: np.random.Generator, values: np.ndarray, n_edges: int) -> np.ndarray:
    """(N, F) values -> (F, n_edges) sorted edges, most of them exactly equal to one of the values, and
    one duplicate edge (an always-empty bin) per row."""
    rows = []
    for f in range(values.shape[1]):
        finite = values[np.isfinite(values[:, f]), f]
        picked = rng.choice(finite, size=min(n_edges - 2, len(finite)), replace=False) if len(finite) else []
        extra = rng.normal(size=n_edges - 1 - len(picked))
        rows.append(np.sort(np.concatenate([picked, extra, extra[:1]])))
    return np.array(rows)


X_SHAPES = {
    "elements": [(4,), (1, 30), (2, 3)],  # per sample: F = 4, 30, 6
    "channel_stats": [(1, 8, 8), (3, 5), (2, 16, 16), (4,)],  # S = 64, 5 (< 8), 256 (pairwise split), 1
}


@pytest.mark.parametrize("n", [1, 3, 32])
@pytest.mark.parametrize("x_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["elements", "channel_stats"])
@pytest.mark.parametrize(("softmax", "classes", "scores_dtype"), [
    (True, 10, np.float32), (False, 10, np.float64), (True, 200, np.float64), (False, 3, np.float32), (False, 0, None),
])
def test_native_matches_reference(
    n: int, x_dtype: type, kind: str, softmax: bool, classes: int, scores_dtype: type | None
) -> None:
    rng = np.random.default_rng([n, np.dtype(x_dtype).itemsize, len(kind), classes, softmax])
    for sample_shape in X_SHAPES[kind]:
        batches = []
        for _ in range(3):
            x = rng.normal(loc=0.5, scale=2.0, size=(n, *sample_shape)).astype(x_dtype)
            if kind == "channel_stats":  # make some channels constant, and one exactly like another
                x[0, 0] = 0.25
            # A NaN or inf spoils a whole channel's mean and std: sprinkle them sparsely there.
            x = sprinkle(rng, x, 0.02 if kind == "elements" else 0.002).astype(x_dtype)
            scores = None
            if classes:
                scores = rng.normal(scale=3.0, size=(n, classes))
                scores[:, 1] = scores[:, 0]  # ties
                scores = sprinkle(rng, scores, 0.3 / classes).astype(scores_dtype)  # about a quarter of the rows
            batches.append((x, scores, int(rng.integers(0, 10**10))))
        # Edges through the values the sketch will bin, so that values sit exactly on edges.
        all_x = np.concatenate([b[0] for b in batches])
        features = sketch_features(all_x, kind)
        feature_edges = edges_through(rng, features, 9)
        confidence_edges = None
        if classes:
            confidence = sketch_classes(np.concatenate([b[1] for b in batches]), softmax)[1]
            confidence_edges = edges_through(rng, confidence[:, None], 7)[0]
        native, reference = both(kind, feature_edges, confidence_edges, LATENCY, classes, softmax)
        for x, scores, latency_ns in batches:
            native.update(x, scores, latency_ns)
            reference.update(x, scores, latency_ns)
        native.error(123_456)
        reference.error(123_456)
        assert_same_snapshot(native.snapshot(), reference.snapshot())
        # The case really has values exactly on edges: in every feature, and among the confidences.
        on_edge = (features[:, :, None] == feature_edges[None]).any(axis=2)
        assert on_edge.any(axis=0)[np.isfinite(features).any(axis=0)].all() and on_edge.any()
        if classes:
            assert np.isin(confidence, confidence_edges).any()


def test_native_matches_reference_on_unaligned_and_read_only_inputs() -> None:
    rng = np.random.default_rng(21)
    base = rng.normal(size=(5, 3, 4, 4))
    raw = np.zeros(base.size * 8 + 1, dtype=np.uint8)
    x = raw[1:].view(np.float64).reshape(base.shape)
    x[...] = base
    assert x.flags.c_contiguous and not x.flags.aligned
    scores = rng.normal(size=(5, 4)).astype(np.float32)
    scores.flags.writeable = False
    edges = np.sort(rng.normal(size=(6, 5)), axis=1)
    native, reference = both("channel_stats", edges, np.linspace(0.2, 0.9, 4), LATENCY, 4, True)
    for sketch in (native, reference):
        sketch.update(x, scores, 77_000)
    assert_same_snapshot(native.snapshot(), reference.snapshot())


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_empty_batch_and_empty_channels(impl: str) -> None:
    sketch = IMPLEMENTATIONS[impl]("channel_stats", np.zeros((4, 2)), np.array([0.5]), LATENCY, 3, True)
    sketch.update(np.zeros((0, 2, 8), np.float32), np.zeros((0, 3), np.float32), 1_000)  # N = 0: a request
    sketch.update(np.zeros((3, 2, 0)), np.zeros((3, 3)), 1_000)  # S = 0: mean and std are NaN, as in numpy
    snap = sketch.snapshot()
    assert (snap["requests"], snap["samples"]) == (2, 3)
    np.testing.assert_array_equal(snap["features"], [[0, 0, 0, 3]] * 4)
    np.testing.assert_array_equal(snap["predictions"], [3, 0, 0])
    np.testing.assert_array_equal(snap["latency"].sum(), 2)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_keyword_arguments_and_ignored_scores(impl: str) -> None:
    sketch = IMPLEMENTATIONS[impl]("elements", np.array([[0.0]]), None, LATENCY, 0, False)
    sketch.update(x=np.ones((2, 1)), scores=None, latency_ns=3)
    sketch.update(np.ones((1, 1)), latency_ns=3, scores="not a classifier: scores are ignored")
    snap = sketch.snapshot(reset=False)
    assert (snap["requests"], snap["samples"]) == (2, 3)
    np.testing.assert_array_equal(snap["features"], [[0, 3, 0]])


# --- snapshot, error, state ----------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_snapshot_reset_semantics(impl: str) -> None:
    edges = np.array([[0.0, 1.0, 2.0], [0.5, 1.0, 1.5]])  # mean, std of one channel
    sketch = IMPLEMENTATIONS[impl]("channel_stats", edges, np.array([0.5]), LATENCY, 2, True)
    empty = sketch.snapshot()
    assert (empty["requests"], empty["samples"], empty["errors"]) == (0, 0, 0)
    assert {k: empty[k].shape for k in SNAPSHOT_ARRAYS} == {
        "latency": (len(LATENCY) + 2,), "features": (2, 5), "predictions": (2,), "confidence": (3,),
    }
    assert not any(empty[k].any() for k in SNAPSHOT_ARRAYS)

    sketch.update(np.ones((2, 1, 3), np.float32), np.array([[1.0, 0.0], [0.0, 1.0]]), 50_000)
    kept = sketch.snapshot(reset=False)
    kept["features"][...] = 99  # a copy: the sketch is not affected
    again = sketch.snapshot(reset=False)
    assert (again["requests"], again["samples"]) == (1, 2)
    np.testing.assert_array_equal(again["features"], [[0, 0, 2, 0, 0], [2, 0, 0, 0, 0]])  # mean 1, std 0
    np.testing.assert_array_equal(again["predictions"], [1, 1])
    np.testing.assert_array_equal(again["confidence"], [0, 2, 0])  # 1 / (1 + exp(-1)) = 0.73
    taken = sketch.snapshot()  # reset=True is the default
    assert_same_snapshot(taken, again)
    assert_same_snapshot(sketch.snapshot(), empty)  # zeroed
    sketch.update(np.ones((1, 1, 3)), np.array([[0.0, 2.0]]), 50_000)  # and counting again from zero
    assert sketch.snapshot()["requests"] == 1


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_error_counts_a_request_and_its_latency_only(impl: str) -> None:
    sketch = IMPLEMENTATIONS[impl]("elements", np.zeros((3, 2)), np.array([0.5]), np.array([1.0, 10.0]), 2, False)
    sketch.error(999_999)  # just below 1 ms -> bin 0
    sketch.error(10_000_000)  # exactly 10 ms, on the last edge -> bin 2
    sketch.error(np.int64(5_000_000))  # any integer type -> bin 1
    snap = sketch.snapshot()
    assert (snap["requests"], snap["samples"], snap["errors"]) == (3, 0, 3)
    np.testing.assert_array_equal(snap["latency"], [1, 1, 1, 0])
    assert not snap["features"].any() and not snap["predictions"].any() and not snap["confidence"].any()


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_edges_are_copied_at_construction(impl: str) -> None:
    edges, latency = np.array([[0.0, 1.0]]), np.array([1.0])
    sketch = IMPLEMENTATIONS[impl]("elements", edges, None, latency, 0, False)
    edges[...] = 100.0
    latency[...] = 100.0
    sketch.update(np.array([[0.5]]), None, 2_000_000)
    snap = sketch.snapshot()
    np.testing.assert_array_equal(snap["features"], [[0, 1, 0, 0]])
    np.testing.assert_array_equal(snap["latency"], [0, 1, 0])


def test_latency_edges_may_be_the_telemetry_tuple() -> None:
    native, reference = both("elements", np.zeros((1, 1)), None, LATENCY_EDGES_MS, 0, False)
    for sketch in (native, reference):
        sketch.update(np.zeros((1, 1)), None, 8_000)  # 8 us = 0.008 ms -> bin 0
        sketch.update(np.zeros((1, 1)), None, 3_000_000_000)  # 3 s -> bin 17 of 19 edges
    assert_same_snapshot(native.snapshot(), reference.snapshot())


def test_concurrent_updates_and_snapshots_lose_no_count() -> None:
    sketch = RequestSketch("channel_stats", np.zeros((2, 3)), np.array([0.5]), LATENCY, 10, True)
    x = np.ones((1, 1, 8, 8), np.float32)
    scores = np.zeros((1, 10), np.float32)
    per_thread = 20_000
    start = threading.Barrier(3)

    def serve() -> None:
        start.wait()
        for _ in range(per_thread):
            sketch.update(x, scores, 10_000)

    threads = [threading.Thread(target=serve) for _ in range(2)]
    for thread in threads:
        thread.start()
    start.wait()
    totals = {"requests": 0, "samples": 0}
    windows = 0
    while any(thread.is_alive() for thread in threads) or windows == 0:
        snap = sketch.snapshot(reset=True)  # a timer thread closing windows while requests are served
        windows += 1
        # Each window is consistent in itself: every request counted everywhere, or nowhere.
        assert snap["samples"] == snap["requests"] == snap["predictions"].sum() == snap["latency"].sum()
        assert (snap["features"].sum(axis=1) == snap["requests"]).all()
        for key in totals:
            totals[key] += snap[key]
    for thread in threads:
        thread.join()
    last = sketch.snapshot()
    assert totals["requests"] + last["requests"] == 2 * per_thread
    assert totals["samples"] + last["samples"] == 2 * per_thread


def test_uninitialised_native_sketch_raises_instead_of_crashing() -> None:
    sketch = RequestSketch.__new__(RequestSketch)
    for call in (lambda: sketch.update(np.zeros((1, 1)), None, 1), lambda: sketch.error(1), sketch.snapshot):
        with pytest.raises(TypeError, match="never initialised"):
            call()


def test_native_update_binds_arguments_like_python() -> None:
    sketch = RequestSketch("elements", np.zeros((1, 1)), None, LATENCY, 0, False)
    x = np.zeros((1, 1))
    cases = [
        ((x,), {}, r"^update\(\) missing required argument 'scores'$"),
        ((x, None, 1, 2), {}, r"^update\(\) takes 3 arguments \(4 given\)$"),
        ((x, None), {"latency_ns": 1, "x": x}, r"^update\(\) got multiple values for argument 'x'$"),
        ((x, None), {"latency": 1}, r"^update\(\) got an unexpected keyword argument 'latency'$"),
    ]
    for args, kwargs, pattern in cases:
        with pytest.raises(TypeError, match=pattern):
            sketch.update(*args, **kwargs)
    with pytest.raises(TypeError):
        RequestSketch.update(object(), x, None, 1)
    assert sketch.snapshot()["requests"] == 0
