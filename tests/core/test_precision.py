"""core/precision.py: the tolerance of a float format, from its epsilon and the outputs' scale."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.core.precision import EPSILON, coarsest, precision_atol, widen


def test_epsilons_are_the_formats_own():
    for name, dtype in (("f32", np.float32), ("f16", np.float16)):
        assert EPSILON[name] == float(np.finfo(dtype).eps)
    assert EPSILON["bf16"] == 2.0**-7  # 8 significand bits (7 stored)


def test_coarsest_ignores_integer_and_unknown_precisions():
    assert coarsest(["f32", "bf16", "f16", "u8"]) == "bf16"
    assert coarsest(["f32", "f16", "i32"]) == "f16"
    assert coarsest(["u8", "i8", "undefined"]) is None


def test_atol_is_two_epsilons_of_the_largest_output():
    outputs = [np.array([[1.0, -13.5]]), np.zeros((0, 3))]
    assert precision_atol("bf16", outputs) == pytest.approx(2 * 2.0**-7 * 13.5)
    assert precision_atol("f16", outputs) == pytest.approx(2 * 2.0**-10 * 13.5)
    with pytest.raises(ValueError, match="unknown float precision 'fp8'"):
        precision_atol("fp8", outputs)


def test_widen_never_tightens_the_bundles_tolerance():
    tolerance = {"atol": 1e-4, "rtol": 1e-3}
    outputs = [np.array([10.0])]
    assert widen(tolerance, "f32", outputs) == tolerance  # 2.4e-6 < 1e-4
    assert widen(tolerance, "bf16", outputs) == {"atol": pytest.approx(0.15625), "rtol": 1e-3}
    assert widen(tolerance, None, outputs) == tolerance
