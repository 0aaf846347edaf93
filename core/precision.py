"""The tolerance a float format allows: derived from the precision a device really executes, never from
one machine's measurement.

A runtime may execute another format than the one asked for: OpenVINO's CPU plugin turns an `f16` hint
into `bf16` on CPUs without AVX512-FP16 (AMD Zen 4, Intel before Sapphire Rapids) and runs `bf16` on
AMX machines by default. So a check compares against the golden outputs with an absolute tolerance of

    atol = ATOL_EPSILONS * epsilon(executed format) * max |golden output|

never tighter than the bundle's own tolerance. Measured on the digits CNN over all 1,797 digits against
float32: f16 compute errs by at most 0.5 epsilon(f16) times the largest |logit| (0.0084 at logits up to
17, Intel AVX512-FP16), bf16 compute by 0.39 epsilon(bf16) (0.052 at 16.8, AMD Zen 4 and Intel AMX
alike); two epsilons leave four to five times that. Precision names are OpenVINO's element type names
("f32", "f16", "bf16"), which is also what the manifest records.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

# machine epsilon (the gap between 1 and the next number) of each float format, by mantissa bits
EPSILON = {"f32": 2.0**-23, "f16": 2.0**-10, "bf16": 2.0**-7}
ATOL_EPSILONS = 2.0


def coarsest(precisions: Iterable[str]) -> str | None:
    """The least precise float format among `precisions` (others, such as "u8" or "i32", are ignored)."""
    floats = [p for p in precisions if p in EPSILON]
    return max(floats, key=EPSILON.__getitem__) if floats else None


def precision_atol(precision: str, outputs: Iterable[np.ndarray]) -> float:
    """ATOL_EPSILONS epsilons of `precision` times the largest |value| of the reference outputs."""
    if precision not in EPSILON:
        raise ValueError(f"unknown float precision {precision!r}; known: {', '.join(EPSILON)}")
    scale = max((float(np.abs(v).max()) for v in outputs if np.size(v)), default=0.0)
    return ATOL_EPSILONS * EPSILON[precision] * scale


def widen(tolerance: dict, precision: str | None, outputs: Iterable[np.ndarray]) -> dict:
    """`tolerance` ({"atol", "rtol"}) with atol raised to what `precision` allows; unchanged for None."""
    if precision is None or precision not in EPSILON:
        return dict(tolerance)
    return {**tolerance, "atol": max(float(tolerance["atol"]), precision_atol(precision, outputs))}
