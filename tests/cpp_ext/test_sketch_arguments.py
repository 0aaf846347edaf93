"""Bad arguments to the native RequestSketch and its numpy reference: the same message from both, and no
count changed (tests/cpp_ext/test_sketch.py holds the numbers)."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.cpp_ext import RequestSketch
from edgefleet.cpp_ext.reference import RequestSketchReference
from tests.cpp_ext.test_sketch import IMPLEMENTATIONS, LATENCY, NAN


def digits_like(impl: str) -> RequestSketch | RequestSketchReference:
    """channel_stats of (N, 1, 8, 8) images (F = 2), a 10-class softmax classifier."""
    return IMPLEMENTATIONS[impl]("channel_stats", np.zeros((2, 9)), np.linspace(0.1, 0.9, 9), LATENCY, 10, True)


GOOD_X = np.zeros((2, 1, 8, 8), np.float32)
GOOD_SCORES = np.zeros((2, 10), np.float32)

BAD_UPDATES = [
    # (case id, x, scores, latency_ns, exception, message pattern)
    ("x_list", [[0.0]], GOOD_SCORES, 1, TypeError, r"^x must be a numpy.ndarray, got list$"),
    ("x_int", GOOD_X.astype(np.int64), GOOD_SCORES, 1, TypeError, r"^x must have dtype float32 or float64, got int64$"),
    ("x_half", GOOD_X.astype(np.float16), GOOD_SCORES, 1, TypeError, r"float32 or float64, got float16$"),
    ("x_big_endian", GOOD_X.astype(">f4"), GOOD_SCORES, 1, TypeError, r"float32 or float64, got >f4$"),
    ("x_1d", np.zeros(4, np.float32), GOOD_SCORES, 1, ValueError,
     r"^x must have shape \(N, C, \.\.\.\) for 'channel_stats' features, got shape \(4,\)$"),
    ("x_channels", np.zeros((2, 3, 8, 8), np.float32), GOOD_SCORES, 1, ValueError,
     r"^x of shape \(2, 3, 8, 8\) has 3 channels, hence 6 'channel_stats' features, but feature_edges has 2 rows$"),
    ("x_fortran", np.asfortranarray(np.zeros((2, 1, 8, 8), np.float32)), GOOD_SCORES, 1, ValueError,
     r"^x must be C-contiguous, got strides \(4, 8, 8, 64\) for shape \(2, 1, 8, 8\)$"),
    ("x_strided", np.zeros((2, 1, 8, 16), np.float32)[..., ::2], GOOD_SCORES, 1, ValueError,
     r"^x must be C-contiguous, got strides \(512, 512, 64, 8\) for shape \(2, 1, 8, 8\)$"),
    ("scores_none", GOOD_X, None, 1, ValueError,
     r"^scores must be given: the sketch counts the predictions of 10 classes, got None$"),
    ("scores_list", GOOD_X, [[0.0] * 10] * 2, 1, TypeError, r"^scores must be a numpy.ndarray, got list$"),
    ("scores_int", GOOD_X, GOOD_SCORES.astype(np.int32), 1, TypeError,
     r"^scores must have dtype float32 or float64, got int32$"),
    ("scores_rows", GOOD_X, np.zeros((3, 10), np.float32), 1, ValueError,
     r"^scores must have shape \(N, n_classes\) = \(2, 10\) to match x of shape \(2, 1, 8, 8\), got \(3, 10\)$"),
    ("scores_classes", GOOD_X, np.zeros((2, 9)), 1, ValueError, r"= \(2, 10\) to match .* got \(2, 9\)$"),
    ("scores_1d", GOOD_X, np.zeros(20), 1, ValueError, r"= \(2, 10\) to match .* got \(20,\)$"),
    ("scores_fortran", GOOD_X, np.asfortranarray(GOOD_SCORES), 1, ValueError,
     r"^scores must be C-contiguous, got strides \(4, 8\) for shape \(2, 10\)$"),
    ("latency_float", GOOD_X, GOOD_SCORES, 1.5, TypeError, r"^'float' object cannot be interpreted as an integer$"),
    ("latency_none", GOOD_X, GOOD_SCORES, None, TypeError, r"^'NoneType' object cannot be interpreted as an integer$"),
    ("latency_negative", GOOD_X, GOOD_SCORES, -1, ValueError,
     r"^latency_ns must be a non-negative int below 2\*\*63, got -1$"),
    ("latency_huge", GOOD_X, GOOD_SCORES, 2**63, ValueError, r"below 2\*\*63, got 9223372036854775808$"),
]


@pytest.mark.parametrize(
    ("x", "scores", "latency_ns", "error", "pattern"),
    [case[1:] for case in BAD_UPDATES],
    ids=[case[0] for case in BAD_UPDATES],
)
def test_bad_update_is_rejected_with_the_same_message_and_counts_nothing(
    x: object, scores: object, latency_ns: object, error: type[Exception], pattern: str
) -> None:
    messages = {}
    for impl in IMPLEMENTATIONS:
        sketch = digits_like(impl)
        with pytest.raises(error, match=pattern) as info:
            sketch.update(x, scores, latency_ns)
        messages[impl] = str(info.value)
        snap = sketch.snapshot()
        assert snap["requests"] == 0 and not snap["latency"].any() and not snap["features"].any()
    assert messages["native"] == messages["reference"]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_bad_elements_input_is_rejected(impl: str) -> None:
    sketch = IMPLEMENTATIONS[impl]("elements", np.zeros((6, 2)), None, LATENCY, 0, False)
    with pytest.raises(ValueError, match=r"^x must have shape \(N, \.\.\.\) for 'elements' features, got shape \(\)$"):
        sketch.update(np.array(1.0), None, 1)
    with pytest.raises(ValueError, match=r"^x of shape \(4, 5\) has 5 features per sample, but feature_edges has 6"):
        sketch.update(np.zeros((4, 5)), None, 1)
    sketch.update(np.zeros((4, 2, 3)), None, 1)  # (N, 2, 3) is 6 features per sample: fine
    assert sketch.snapshot()["samples"] == 4


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_bad_error_latency_is_rejected(impl: str) -> None:
    sketch = digits_like(impl)
    with pytest.raises(ValueError, match=r"^latency_ns must be a non-negative int below 2\*\*63, got -5$"):
        sketch.error(-5)
    with pytest.raises(TypeError, match=r"cannot be interpreted as an integer"):
        sketch.error("5")
    assert sketch.snapshot()["requests"] == 0


GOOD_CONFIG = {
    "kind": "channel_stats",
    "feature_edges": np.zeros((2, 3)),
    "confidence_edges": np.array([0.5, 0.9]),
    "latency_edges_ms": LATENCY,
    "n_classes": 3,
    "softmax": True,
}

BAD_CONFIGS = [
    # (case id, argument replaced, its bad value, exception, message pattern)
    ("kind", "kind", "pixels", ValueError,
     r"^kind must be 'elements' or 'channel_stats' \(core.profile.feature_kind\), got 'pixels'$"),
    ("kind_none", "kind", None, ValueError, r"^kind must be .* got None$"),
    ("features_none", "feature_edges", None, TypeError, r"^feature_edges must be an array of real numbers, got None$"),
    ("features_str", "feature_edges", [["a"]], TypeError,
     r"^feature_edges must be an array of real numbers, got dtype <U1$"),
    ("features_1d", "feature_edges", np.zeros(3), ValueError,
     r"^feature_edges must be 2-D, got 1-D with shape \(3,\)$"),
    ("features_empty", "feature_edges", np.zeros((2, 0)), ValueError,
     r"^feature_edges must hold at least one edge per row, got shape \(2, 0\)$"),
    ("features_unsorted", "feature_edges", np.array([[0.0, 1.0], [2.0, 1.0]]), ValueError,
     r"^feature_edges\[1\] must be sorted ascending \(non-decreasing\) and free of NaN, got \[2.0, 1.0\]$"),
    ("features_nan", "feature_edges", np.array([[0.0, NAN], [1.0, 2.0]]), ValueError,
     r"^feature_edges\[0\] must be sorted .* got \[0.0, nan\]$"),
    ("features_odd", "feature_edges", np.zeros((3, 2)), ValueError,
     r"^'channel_stats' features come in pairs .* must have an even number of rows, got shape \(3, 2\)$"),
    ("confidence_missing", "confidence_edges", None, ValueError,
     r"^confidence_edges must be given for a classifier \(n_classes = 3\), got None$"),
    ("confidence_2d", "confidence_edges", np.zeros((1, 2)), ValueError, r"^confidence_edges must be 1-D, got 2-D"),
    ("confidence_unsorted", "confidence_edges", np.array([0.9, 0.5]), ValueError,
     r"^confidence_edges must be sorted ascending \(non-decreasing\) and free of NaN, got \[0.9, 0.5\]$"),
    ("latency_nan", "latency_edges_ms", np.array([1.0, NAN]), ValueError,
     r"^latency_edges_ms must be sorted .* nan\]$"),
    ("latency_bool", "latency_edges_ms", np.array([True]), TypeError,
     r"^latency_edges_ms must be an array of real numbers, got dtype bool$"),
    ("classes_negative", "n_classes", -1, ValueError,
     r"^n_classes must be >= 0 \(0 when the model is not a classifier\), got -1$"),
    ("classes_float", "n_classes", 3.0, TypeError, r"^n_classes must be an int, got float$"),
    ("classes_bool", "n_classes", True, TypeError, r"^n_classes must be an int, got bool$"),
    ("softmax_str", "softmax", "yes", TypeError, r"^softmax must be a bool, got str$"),
]


@pytest.mark.parametrize(
    ("argument", "value", "error", "pattern"),
    [case[1:] for case in BAD_CONFIGS],
    ids=[case[0] for case in BAD_CONFIGS],
)
def test_bad_construction_is_rejected_with_the_same_message(
    argument: str, value: object, error: type[Exception], pattern: str
) -> None:
    messages = {}
    for impl, cls in IMPLEMENTATIONS.items():
        with pytest.raises(error, match=pattern) as info:
            cls(**{**GOOD_CONFIG, argument: value})
        messages[impl] = str(info.value)
    assert messages["native"] == messages["reference"]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_confidence_edges_belong_to_classifiers_only(impl: str) -> None:
    config = {**GOOD_CONFIG, "n_classes": 0}
    with pytest.raises(ValueError, match=r"^confidence_edges must be None when n_classes is 0 \(not a classifier\)"):
        IMPLEMENTATIONS[impl](**config)
    sketch = IMPLEMENTATIONS[impl](**{**config, "confidence_edges": None})  # softmax is then ignored
    sketch.update(np.zeros((1, 1, 2)), None, 1)
    assert sketch.snapshot()["requests"] == 1
