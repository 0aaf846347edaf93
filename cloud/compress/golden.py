"""The golden examples of a bundle whose precision a compression stage lowered (int8, fp16): the error
measured there, the tolerance written for later checks, and the decision check that goes with it.

The expected outputs stay the float model's, so every later check (compile, the device's self-test)
compares against the model the new one replaces. From the new model's max abs error against the float
model on the golden inputs (as one batch and one example at a time, as the checks run them; dynamic
quantization's ranges depend on the batch), the stage writes into the golden entry:

- `atol`: `tolerance_margin` times that error (never below the bundle's): room for other runtimes'
  kernels (OpenVINO's or the native int8 kernels round differently from onnxruntime's);
- `noise`: the error itself (never below the bundle's atol). It sets the tie margin of the decision
  check (core/decision.py: 2 * noise), independently of `atol`, so a wide tolerance margin never
  excuses a flipped top-1.

The two agree: atol = tolerance_margin * noise, and the tie margin, 2 * noise, is below atol whenever
tolerance_margin > 2 (default 3). For a classifier the stage then runs the decision check on its own
model, on the same runs: a decisive golden example cannot flip by construction (its margin exceeds twice
the error), so the check fails only when fewer than core.decision.MIN_DECISIONS golden examples are
decisive (a model whose error is large against the golden margins, such as one calibrated on
unrepresentative data): the stage then warns and records why ("refused"), and the compile check and the
device's self-test will refuse the bundle with the same reason. The record goes into the artifact's
numeric_error.decisions.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import onnxruntime as ort

from edgefleet.compilers.numeric import max_errors
from edgefleet.core.decision import compare_decisions, decision_output, tie_margin

log = logging.getLogger(__name__)


def golden_error(float_session: ort.InferenceSession, new_session: ort.InferenceSession,
                 golden: dict[str, np.ndarray], dtypes: dict[str, np.dtype]) -> tuple[dict, list[dict]]:
    """Max abs and rel error of the new model against the float one over the golden inputs, run as one
    batch and one example at a time; and the new model's outputs of those two runs (name -> array)."""
    if not golden:
        return {"samples": 0, "max_abs": 0.0, "max_rel": 0.0}, []
    count = len(next(iter(golden.values())))
    names = [o.name for o in new_session.get_outputs()]
    max_abs = max_rel = 0.0
    outputs: list[list[np.ndarray]] = []
    for rows in [slice(None), *(slice(i, i + 1) for i in range(count))]:
        feed = {k: v[rows] for k, v in golden.items()}
        want = float_session.run(None, feed)
        got = new_session.run(None, {k: v.astype(dtypes.get(k, v.dtype)) for k, v in feed.items()})
        rows_abs, rows_rel = max_errors(got, want)
        max_abs, max_rel = max(max_abs, rows_abs), max(max_rel, rows_rel)
        outputs.append(got)
    batch, singles = outputs[0], outputs[1:]
    runs = [dict(zip(names, batch, strict=True)),
            {name: np.concatenate([s[i] for s in singles]) for i, name in enumerate(names)}]
    return {"samples": count, "max_abs": max_abs, "max_rel": max_rel}, runs


def lowered_golden(golden: Mapping, max_abs: float, tolerance_margin: float) -> tuple[dict, dict]:
    """The new golden entry (atol and noise, module docstring) and the lineage step's record of it."""
    before = {"atol": float(golden["atol"]), "rtol": float(golden["rtol"])}
    atol = max(before["atol"], tolerance_margin * max_abs)
    noise = max(before["atol"], float(max_abs))
    entry = {**golden, "atol": atol, "noise": noise}
    record = {"before": before, "after": {**before, "atol": atol}, "margin": tolerance_margin,
              "measured_max_abs": max_abs, "noise": noise, "tie_margin": tie_margin(entry)}
    return entry, record


def check_decisions(interface: Mapping, golden: Mapping, golden_out: Mapping[str, np.ndarray],
                    runs: list[dict]) -> dict | None:
    """The decision check of the new model on its golden runs (None for a task without a decision).
    A failure is logged as a warning and recorded ("refused": why): the stage still writes the bundle
    (its report says what quantization cost), but the compile check and the self-test will refuse it."""
    output = decision_output(interface)
    if output is None or not runs:
        return None
    check = compare_decisions(golden_out[output], [run[output] for run in runs], tie_margin(golden),
                              interface.get("class_names"))
    if check.passed:
        return check.record()
    log.warning("the new model's golden decisions cannot be checked: %s", check.problem())
    return {**check.record(), "refused": check.problem()}
