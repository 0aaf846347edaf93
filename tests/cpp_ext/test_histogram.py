"""The native histogram kernel against its numpy reference, and the reference against hand-written numbers."""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest

from edgefleet.cpp_ext import histogram_update
from edgefleet.cpp_ext.reference import histogram_update_reference

IMPLEMENTATIONS = {"native": histogram_update, "reference": histogram_update_reference}
INF, NAN = np.inf, np.nan


def random_case(
    rng: np.random.Generator, n: int, f: int, e: int, dtype: type
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted edges with duplicates, values that sit exactly on edges, NaN and +-inf, non-zero counts."""
    # Multiples of 0.5 are exact in float32, multiples of 0.1 are not: both kinds of edge occur.
    grid = np.concatenate([np.arange(-2.0, 2.01, 0.5), np.round(np.arange(-2.0, 2.0, 0.1), 1)])
    edges = np.sort(rng.choice(grid, size=(f, e)), axis=1)
    if e >= 2:
        edges[:, 1] = edges[:, 0]  # a duplicate edge (an always-empty bin) in every row
    on_edge = np.take_along_axis(edges, rng.integers(0, e, size=(f, n)), axis=1).T
    x = np.where(rng.random((n, f)) < 0.4, on_edge, rng.normal(scale=2.0, size=(n, f)))
    special = rng.choice(np.array([NAN, INF, -INF]), size=(n, f))
    x = np.where(rng.random((n, f)) < 0.15, special, x)
    counts = rng.integers(0, 1000, size=(f, e + 2), dtype=np.int64)
    return counts, x.astype(dtype), edges


def assert_parity(counts: np.ndarray, x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Runs both implementations on copies of counts and checks they agree; returns the result."""
    native, expected = counts.copy(), counts.copy()
    histogram_update(native, x, edges)
    histogram_update_reference(expected, x, edges)
    np.testing.assert_array_equal(native, expected)
    return native


# --- the reference against hand-computed numbers ----------------------------------------------------


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_hand_computed_example(impl: str) -> None:
    edges = np.array([[0.0, 1.0, 1.0, 2.0], [-1.0, -1.0, -1.0, 5.0]])
    x = np.array(
        [
            [-INF, 7.0],  # below everything -> bin 0       | >= 5 -> bin 4
            [-1.0, -1.0],  # below 0 -> bin 0               | equals the triple edge -> bin 3
            [0.0, -1.5],  # equals edges[0, 0] -> bin 1     | below -> bin 0
            [0.5, 4.9],  # bin 1                            | bin 3
            [1.0, 5.0],  # equals the duplicate 1.0 -> bin 3 | equals the last edge -> bin 4
            [1.5, NAN],  # bin 3                            | NaN -> bin 5
            [2.0, INF],  # equals the last edge -> bin 4    | +inf -> bin 4
            [3.0, -INF],  # bin 4                           | -inf -> bin 0
            [INF, NAN],  # bin 4                            | NaN -> bin 5
            [NAN, 0.0],  # NaN -> bin 5                     | bin 3
        ]
    )
    counts = np.zeros((2, 6), dtype=np.int64)
    IMPLEMENTATIONS[impl](counts, x, edges)
    np.testing.assert_array_equal(counts, [[2, 2, 0, 2, 3, 1], [2, 0, 0, 3, 3, 2]])
    IMPLEMENTATIONS[impl](counts, x[:3], edges)  # added to, never reset
    np.testing.assert_array_equal(counts, [[4, 3, 0, 2, 3, 1], [3, 0, 0, 4, 4, 2]])


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_interior_bins_agree_with_np_histogram(impl: str) -> None:
    """Bins 1..E-1 are np.histogram's half-open bins [edges[i-1], edges[i])."""
    rng = np.random.default_rng(7)
    edges = np.array([[-1.0, -0.25, 0.0, 0.5, 2.0]])
    x = np.concatenate([rng.uniform(-1.0, 2.0, size=200), edges[0, :-1]])  # inside [first, last)
    counts = np.zeros((1, 7), dtype=np.int64)
    IMPLEMENTATIONS[impl](counts, x[:, None], edges)
    expected, _ = np.histogram(x, bins=edges[0])
    np.testing.assert_array_equal(counts[0, 1:5], expected)
    np.testing.assert_array_equal(counts[0, [0, 5, 6]], [0, 0, 0])


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_float32_values_are_compared_exactly_against_float64_edges(impl: str) -> None:
    # float32(0.7) is 0.699999988..., below the float64 edge 0.7; float32(0.1) is 0.100000001..., above 0.1.
    edges = np.array([[0.7], [0.1]])
    counts32 = np.zeros((2, 3), dtype=np.int64)
    counts64 = np.zeros((2, 3), dtype=np.int64)
    IMPLEMENTATIONS[impl](counts32, np.array([[0.7, 0.1]], dtype=np.float32), edges)
    IMPLEMENTATIONS[impl](counts64, np.array([[0.7, 0.1]], dtype=np.float64), edges)
    np.testing.assert_array_equal(counts32, [[1, 0, 0], [0, 1, 0]])
    np.testing.assert_array_equal(counts64, [[0, 1, 0], [0, 1, 0]])


# --- native against reference -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("n", "f", "e"),
    [
        (0, 4, 3),  # no samples
        (1, 64, 9),  # the typical request
        (3, 1, 1),  # a single edge
        (32, 64, 9),
        (17, 5, 32),  # largest linear-scan size
        (17, 5, 33),  # smallest binary-search size
        (9, 3, 40),
        (2048, 16, 9),  # large enough to release the GIL
    ],
)
def test_matches_reference_and_accumulates(n: int, f: int, e: int, dtype: type) -> None:
    rng = np.random.default_rng([n, f, e, np.dtype(dtype).itemsize])
    counts, x, edges = random_case(rng, n, f, e, dtype)
    _, x2, _ = random_case(rng, n, f, e, dtype)
    native, expected = counts.copy(), counts.copy()
    for values in (x, x2):
        histogram_update(native, values, edges)
        histogram_update_reference(expected, values, edges)
        np.testing.assert_array_equal(native, expected)
    # Each call adds exactly one count per value and feature, on top of what was there.
    np.testing.assert_array_equal((native - counts).sum(axis=1), np.full(f, 2 * n))
    if n >= 32:  # the case really covers the edge conditions it claims to
        assert np.isnan(x).any() and np.isposinf(x).any() and np.isneginf(x).any()
        assert (x.astype(np.float64)[:, :, None] == edges[None]).any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "layout",
    ["fortran", "every_other_row", "reversed_both", "feature_slice", "broadcast_row", "unaligned"],
)
def test_any_x_layout_matches_reference(layout: str, dtype: type) -> None:
    rng = np.random.default_rng(3)
    counts, base, edges = random_case(rng, 40, 12, 9, dtype)
    if layout == "fortran":
        x = np.asfortranarray(base)
    elif layout == "every_other_row":
        x = base[::2]
    elif layout == "reversed_both":
        x = base[::-1, ::-1]
    elif layout == "feature_slice":
        wide = np.repeat(base, 2, axis=1)
        x = wide[:, ::2]
    elif layout == "broadcast_row":
        x = np.broadcast_to(base[0], base.shape)
    else:
        itemsize = np.dtype(dtype).itemsize
        raw = np.zeros(base.size * itemsize + 1, dtype=np.uint8)
        x = raw[1:].view(dtype).reshape(base.shape)
        x[...] = base
        assert not x.flags.aligned
    assert not x.flags.c_contiguous or layout == "unaligned"
    result = assert_parity(counts, x, edges)
    np.testing.assert_array_equal(result, assert_parity(counts, np.ascontiguousarray(x), edges))


@pytest.mark.parametrize("layout", ["fortran", "column_slice"])
def test_non_contiguous_edges_match_reference(layout: str) -> None:
    rng = np.random.default_rng(5)
    counts, x, edges = random_case(rng, 20, 6, 5, np.float64)
    if layout == "fortran":
        edges = np.asfortranarray(edges)
    else:
        wide = np.repeat(edges, 2, axis=1)
        edges = wide[:, ::2]
    assert not edges.flags.c_contiguous
    assert_parity(counts, x, edges)


def test_keyword_arguments() -> None:
    counts = np.zeros((1, 3), dtype=np.int64)
    result = histogram_update(counts=counts, x=np.array([[0.5]]), edges=np.array([[0.0]]))
    assert result is None
    np.testing.assert_array_equal(counts, [[0, 1, 0]])


# --- bad arguments ----------------------------------------------------------------------------------


def good_arguments() -> dict[str, np.ndarray]:
    return {
        "counts": np.zeros((3, 6), dtype=np.int64),
        "x": np.zeros((2, 3), dtype=np.float64),
        "edges": np.tile(np.arange(4.0), (3, 1)),
    }


def read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def with_edge(row: int, col: int, value: float) -> np.ndarray:
    edges = np.tile(np.arange(4.0), (3, 1))
    edges[row, col] = value
    return edges


BAD_ARGUMENTS = [
    # (case id, argument replaced, its bad value, exception, message pattern)
    ("counts_list", "counts", [[0] * 6] * 3, TypeError, r"^counts must be a numpy.ndarray, got list$"),
    ("x_list", "x", [[0.0] * 3] * 2, TypeError, r"^x must be a numpy.ndarray, got list$"),
    ("edges_none", "edges", None, TypeError, r"^edges must be a numpy.ndarray, got NoneType$"),
    ("x_1d", "x", np.zeros(3), ValueError, r"^x must be 2-D, got 1-D with shape \(3,\)$"),
    ("x_3d", "x", np.zeros((1, 2, 3)), ValueError, r"^x must be 2-D, got 3-D with shape \(1, 2, 3\)$"),
    ("counts_1d", "counts", np.zeros(18, np.int64), ValueError, r"^counts must be 2-D, got 1-D"),
    ("edges_1d", "edges", np.arange(4.0), ValueError, r"^edges must be 2-D, got 1-D with shape \(4,\)$"),
    (
        "x_int",
        "x",
        np.zeros((2, 3), np.int64),
        TypeError,
        r"^x must have dtype float32 or float64, got int64$",
    ),
    ("x_half", "x", np.zeros((2, 3), np.float16), TypeError, r"float32 or float64, got float16$"),
    ("x_big_endian", "x", np.zeros((2, 3), ">f8"), TypeError, r"float32 or float64, got >f8$"),
    (
        "edges_f32",
        "edges",
        np.zeros((3, 4), np.float32),
        TypeError,
        r"^edges must have dtype float64, got float32$",
    ),
    (
        "counts_i32",
        "counts",
        np.zeros((3, 6), np.int32),
        TypeError,
        r"^counts must have dtype int64, got int32$",
    ),
    ("counts_f64", "counts", np.zeros((3, 6)), TypeError, r"^counts must have dtype int64, got float64$"),
    (
        "no_edges",
        "edges",
        np.zeros((3, 0)),
        ValueError,
        r"^edges must have at least one column \(E >= 1\), got shape \(3, 0\)$",
    ),
    (
        "x_features",
        "x",
        np.zeros((2, 4)),
        ValueError,
        r"^x must have shape \(N, 3\) to match edges of shape \(3, 4\), got \(2, 4\)$",
    ),
    (
        "counts_bins",
        "counts",
        np.zeros((3, 5), np.int64),
        ValueError,
        r"^counts must have shape \(F, E \+ 2\) = \(3, 6\) to match edges of shape \(3, 4\), got \(3, 5\)$",
    ),
    (
        "counts_features",
        "counts",
        np.zeros((2, 6), np.int64),
        ValueError,
        r"= \(3, 6\) to match edges of shape \(3, 4\), got \(2, 6\)$",
    ),
    (
        "counts_fortran",
        "counts",
        np.zeros((3, 6), np.int64, order="F"),
        ValueError,
        r"^counts must be C-contiguous \(it is updated in place\), got strides \(8, 24\) for shape \(3, 6\)$",
    ),
    (
        "counts_strided",
        "counts",
        np.zeros((3, 12), np.int64)[:, ::2],
        ValueError,
        r"^counts must be C-contiguous .* got strides \(96, 16\) for shape \(3, 6\)$",
    ),
    (
        "counts_read_only",
        "counts",
        read_only(np.zeros((3, 6), np.int64)),
        ValueError,
        r"^counts must be writable \(it is updated in place\), got a read-only array$",
    ),
    (
        "edges_unsorted",
        "edges",
        with_edge(1, 2, 0.5),
        ValueError,
        r"^edges\[1\] must be sorted ascending \(non-decreasing\) and free of NaN, "
        r"got \[0.0, 1.0, 0.5, 3.0\]$",
    ),
    (
        "edges_nan_last",
        "edges",
        with_edge(2, 3, NAN),
        ValueError,
        r"^edges\[2\] must be sorted .* got \[0.0, 1.0, 2.0, nan\]$",
    ),
    (
        "edges_nan_first",
        "edges",
        with_edge(0, 0, NAN),
        ValueError,
        r"^edges\[0\] must be sorted .* got \[nan, 1.0, 2.0, 3.0\]$",
    ),
]


@pytest.mark.parametrize(
    ("argument", "value", "error", "pattern"),
    [case[1:] for case in BAD_ARGUMENTS],
    ids=[case[0] for case in BAD_ARGUMENTS],
)
def test_bad_argument_is_rejected_with_the_same_message(
    argument: str, value: object, error: type[Exception], pattern: str
) -> None:
    messages = {}
    for name, impl in IMPLEMENTATIONS.items():
        arguments = good_arguments()
        arguments[argument] = value
        before = arguments["counts"].copy() if isinstance(arguments["counts"], np.ndarray) else None
        with pytest.raises(error, match=pattern) as info:
            impl(**arguments)
        messages[name] = str(info.value)
        if before is not None:  # nothing was written before the error
            np.testing.assert_array_equal(arguments["counts"], before)
    assert messages["native"] == messages["reference"]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_single_nan_edge_is_rejected(impl: str) -> None:
    counts = np.zeros((3, 3), dtype=np.int64)
    edges = np.array([[0.0], [NAN], [1.0]])
    with pytest.raises(ValueError, match=r"^edges\[1\] must be sorted .* got \[nan\]$"):
        IMPLEMENTATIONS[impl](counts, np.zeros((2, 3)), edges)
    assert not counts.any()


def test_unaligned_counts_are_rejected() -> None:
    raw = np.zeros(3 * 6 * 8 + 1, dtype=np.uint8)
    counts = raw[1:].view(np.int64).reshape(3, 6)
    assert counts.flags.c_contiguous and not counts.flags.aligned
    arguments = good_arguments()
    with pytest.raises(ValueError, match=r"^counts must be aligned for int64"):
        histogram_update(counts, arguments["x"], arguments["edges"])


def test_missing_extension_raises_one_clear_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "edgefleet.cpp_ext._native", None)  # makes the import fail
    monkeypatch.delitem(sys.modules, "edgefleet.cpp_ext")
    with pytest.raises(ImportError, match=r"native extension .* is not built") as info:
        importlib.import_module("edgefleet.cpp_ext")
    message = str(info.value)
    assert "apt-get install g++ python3-dev" in message
    assert "pip install --force-reinstall --no-deps edgefleet" in message
    assert isinstance(info.value.__cause__, ImportError)
