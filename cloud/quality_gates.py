"""Model-aware canaries: quality gates that judge the first wave's devices (the canaries, now serving the
candidate) against the target's devices not yet moved (the control, still serving the old model) over
the same period, from the telemetry windows both sent.

    "quality_gates": {"observation_seconds": 60, "min_samples": 200, "min_labels": 100,
                      "on_insufficient": "fail", "max_prediction_psi": 0.2, "max_accuracy_drop": 0.05,
                      "max_p99_ratio": 2.0, "max_error_rate_increase": 0.01}

A threshold left out (null) is a gate not judged; at least one must be set. The gates:

- prediction_drift: the canaries' predicted-class counts against the control's, with the drift monitor's
  statistics and rule (cloud/drift.py): drift when the chi-square test of homogeneity gives p < 0.01 and
  PSI exceeds max(max_prediction_psi, 5 (B - 1)(1/n + 1/m)), the sample-size-aware threshold, so that
  sampling noise between two healthy groups never fails a candidate. Both sides need min_samples. Only
  classifiers' windows carry class counts: for other tasks this gate is "insufficient", and says why.
- accuracy: the control's accuracy minus the canaries', at most max_accuracy_drop. Measured (confusion
  counts of the labels that arrived through the feedback API) when both sides have min_labels labels,
  else estimated without labels (CBPE, core/calibration.py: each model's confidence histogram through its
  own profile's calibration) when both sides have min_samples predictions and both models a calibration.
  A window counts the labels that *arrived* in it, so labels of predictions the old model made just
  before the switch count for the candidate: the observation period should be long against the delay.
- latency: the canaries' p99 over the control's, at most max_p99_ratio. Both p99 come from the windows'
  log-spaced latency histograms (the upper edge of the bin holding the 99th percentile), so the ratio
  moves in steps of 2 or 2.5: a threshold below 2 fails only on a whole bin's move.
- error_rate: the canaries' errors per request minus the control's, at most max_error_rate_increase.
  These two count requests (a request may carry a batch of samples): min_samples requests per side.

Judging starts when the first wave has reached the success threshold (`started`, stored with the
deployment so that a restarted cloud keeps it) and happens once the observation period has passed, on the
windows that ended in (started, now]. A gate without enough data keeps waiting until the later of the
observation's end and the wave's timeout; then it is "insufficient", and `on_insufficient` decides
whether that fails the rollout (the default) or lets it go on: never a silent pass, the verdict says so.
Any failing gate aborts the deployment; the engine rolls the canaries back (mode "switch" only: the
gates need the candidate answering users on the canaries).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select
from sqlalchemy.orm import Session

from edgefleet.cloud.db import TelemetryRecord
from edgefleet.cloud.drift import DriftThresholds
from edgefleet.cloud.ops_monitor import p99_ms
from edgefleet.core import drift as stats
from edgefleet.core.calibration import calibration_of, estimated_accuracy
from edgefleet.core.errors import EdgefleetError
from edgefleet.core.labels import merge_labels
from edgefleet.core.telemetry import TelemetryError, TelemetryWindow, parse_telemetry

ProfileFor = Callable[[str, int], "Mapping | None"]
DRIFT_ALPHA = 0.01  # the drift monitor's family-wise alpha; one signal here
MAX_OBSERVATION_SECONDS = 7 * 86400.0
MAX_COUNT = 1_000_000_000
MAX_WINDOWS = 100_000  # windows one judgement reads per side
GATES = ("prediction_drift", "accuracy", "latency", "error_rate")
PASS, FAIL, INSUFFICIENT = "pass", "fail", "insufficient"


class GateError(EdgefleetError):
    """A quality gate spec that cannot be judged (the HTTP layer answers 400 with the message)."""


class QualityGates(BaseModel):
    """The gates of one deployment; stored in its strategy (module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    observation_seconds: float = 60.0
    min_samples: int = 200  # per side: predictions for drift and estimated accuracy, requests for the others
    min_labels: int = 100  # labels per side for measured accuracy
    on_insufficient: Literal["fail", "pass"] = "fail"
    max_prediction_psi: float | None = None
    max_accuracy_drop: float | None = None
    max_p99_ratio: float | None = None
    max_error_rate_increase: float | None = None

    def checked(self) -> QualityGates:
        """Raises GateError naming the first field out of range."""
        _within("observation_seconds", self.observation_seconds, 0.0, MAX_OBSERVATION_SECONDS, low_open=True)
        # chi-square needs its expected counts (Cochran's rule, as the drift monitor's min_samples)
        _within("min_samples", self.min_samples, 100, MAX_COUNT)
        _within("min_labels", self.min_labels, 1, MAX_COUNT)
        if self.max_prediction_psi is not None:
            _within("max_prediction_psi", self.max_prediction_psi, 0.0, 10.0, low_open=True)
        if self.max_accuracy_drop is not None:
            _within("max_accuracy_drop", self.max_accuracy_drop, 0.0, 1.0)
        if self.max_p99_ratio is not None:
            _within("max_p99_ratio", self.max_p99_ratio, 1.0, 1000.0)
        if self.max_error_rate_increase is not None:
            _within("max_error_rate_increase", self.max_error_rate_increase, 0.0, 1.0)
        if not self.enabled():
            raise GateError("strategy.quality_gates: set at least one threshold (max_prediction_psi, "
                            "max_accuracy_drop, max_p99_ratio, max_error_rate_increase)")
        return self

    def enabled(self) -> list[str]:
        limits = (self.max_prediction_psi, self.max_accuracy_drop, self.max_p99_ratio, self.max_error_rate_increase)
        return [gate for gate, limit in zip(GATES, limits, strict=True) if limit is not None]


def _within(name: str, value: float, low: float, high: float, *, low_open: bool = False) -> None:
    ok = math.isfinite(value) and (value > low if low_open else value >= low) and value <= high
    if not ok:
        raise GateError(f"strategy.quality_gates.{name} must be within {'(' if low_open else '['}{low:g}, {high:g}], "
                        f"got {value:g}")


# --- the two sides ------------------------------------------------------------------------------------------
@dataclass
class Side:
    """What the windows of one side (canary or control) add up to."""

    windows: int = 0
    requests: int = 0
    samples: int = 0
    errors: int = 0
    latency: np.ndarray | None = None
    predictions: np.ndarray | None = None
    confidence_by_model: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    labels: list = field(default_factory=list)
    shapes: set[int] = field(default_factory=set)  # class counts seen (a mismatch is reported, not added)

    def add(self, window: TelemetryWindow) -> None:
        self.windows += 1
        self.requests += window.requests
        self.samples += window.samples
        self.errors += window.errors
        self.latency = _plus(self.latency, window.latency_ms)
        if window.predictions:
            self.shapes.add(len(window.predictions))
            if self.predictions is None or len(self.predictions) == len(window.predictions):
                self.predictions = _plus(self.predictions, window.predictions)
        if window.confidence:
            key = (window.model_name, window.model_version)
            self.confidence_by_model[key] = _plus(self.confidence_by_model.get(key), window.confidence)
        self.labels.append(window.labels)


def _plus(total: np.ndarray | None, counts: Sequence[int]) -> np.ndarray:
    array = np.asarray(counts, np.int64)
    return array if total is None or total.shape != array.shape else total + array


def read_side(session: Session, devices: Iterable[str], since: float, until: float,
              model: tuple[str, int] | None = None, not_model: tuple[str, int] | None = None) -> Side:
    """The windows the devices sent that ended in (since, until], of `model` or of any other than `not_model`."""
    side = Side()
    ids = list(devices)
    if not ids:
        return side
    query = (select(TelemetryRecord.payload).where(TelemetryRecord.device_id.in_(ids),
                                                   TelemetryRecord.window_end > since,
                                                   TelemetryRecord.window_end <= until)
             .order_by(TelemetryRecord.window_end.desc()).limit(MAX_WINDOWS))
    if model is not None:
        query = query.where(TelemetryRecord.model_name == model[0], TelemetryRecord.model_version == model[1])
    if not_model is not None:
        query = query.where(~((TelemetryRecord.model_name == not_model[0])
                              & (TelemetryRecord.model_version == not_model[1])))
    for payload in session.scalars(query):
        try:
            side.add(parse_telemetry(payload, max_bytes=len(payload)))
        except TelemetryError:
            continue  # stored before a parser change: the drift and performance reads skip it too
    return side


# --- the gates -----------------------------------------------------------------------------------------------
def _result(gate: str, outcome: str, text: str, canary: object = None, control: object = None,
            value: float | None = None, threshold: float | None = None, **extra: object) -> dict:
    return {"gate": gate, "outcome": outcome, "canary": canary, "control": control, "value": value,
            "threshold": threshold, "text": text, **extra}


def drift_gate(gates: QualityGates, canary: Side, control: Side) -> dict:
    threshold = gates.max_prediction_psi
    n = int(canary.predictions.sum()) if canary.predictions is not None else 0
    m = int(control.predictions.sum()) if control.predictions is not None else 0
    if len(canary.shapes | control.shapes) > 1:
        return _result("prediction_drift", FAIL, f"the canaries predict {sorted(canary.shapes)} classes, the control "
                       f"{sorted(control.shapes)}", n, m, None, threshold)
    if not (canary.shapes or control.shapes) and max(canary.samples, control.samples) >= gates.min_samples:
        return _result("prediction_drift", INSUFFICIENT, "insufficient data: the windows carry no predicted-class "
                       "counts (not a classifier); this gate judges classifiers", n, m, None, threshold)
    if n < gates.min_samples or m < gates.min_samples:
        return _result("prediction_drift", INSUFFICIENT, f"insufficient data: canary {n}, control {m} predictions "
                       f"(min_samples {gates.min_samples})", n, m, None, threshold)
    statistic, dof, p = stats.chi_square(canary.predictions, control.predictions)
    psi = stats.psi(canary.predictions, control.predictions)
    limit = DriftThresholds(psi_floor=threshold).psi_threshold(max(dof, 1), n, m)
    drifted = p < DRIFT_ALPHA and psi > limit
    text = (f"canary vs control PSI {psi:.3f} {'>' if drifted else '<='} threshold {limit:.3f} "
            f"(chi-square p {_p(p)}; canary {n}, control {m} predictions)")
    return _result("prediction_drift", FAIL if drifted else PASS, text, n, m, psi, limit, p=p,
                   js=stats.js_distance(canary.predictions, control.predictions),
                   canary_share=_shares(canary.predictions), control_share=_shares(control.predictions))


def accuracy_gate(gates: QualityGates, canary: Side, control: Side, profile_for: ProfileFor) -> dict:
    limit = gates.max_accuracy_drop
    ours, theirs = merge_labels([x for x in canary.labels]), merge_labels([x for x in control.labels])
    labelled = [(c.correct / c.count if c and c.count and not c.errors else None, c.count if c else 0)
                for c in (ours, theirs)]
    (acc_canary, n), (acc_control, m) = labelled
    if n >= gates.min_labels and m >= gates.min_labels and acc_canary is not None and acc_control is not None:
        return _accuracy("measured", acc_canary, acc_control, limit, f"on {n} and {m} labels", n=n, m=m)
    estimates = [_estimate(side, profile_for) for side in (canary, control)]
    samples = [sum(int(c.sum()) for c in side.confidence_by_model.values()) for side in (canary, control)]
    if all(e is not None for e in estimates) and min(samples) >= gates.min_samples:
        return _accuracy("estimated", estimates[0], estimates[1], limit,
                         f"without labels on {samples[0]} and {samples[1]} predictions", n=samples[0], m=samples[1])
    short = min(samples) < gates.min_samples
    why = (f"canary {n}, control {m} labels (min_labels {gates.min_labels}); estimate: "
           + (f"canary {samples[0]}, control {samples[1]} predictions (min_samples {gates.min_samples})" if short
              else "a model's profile has no confidence calibration"))
    return _result("accuracy", INSUFFICIENT, f"insufficient data: {why}", None, None, None, limit)


def _accuracy(kind: str, canary: float, control: float, limit: float, basis: str, **counts: int) -> dict:
    drop = control - canary
    failed = drop > limit
    text = (f"{kind} accuracy canary {canary:.3f} vs control {control:.3f}: drop {drop:.3f} "
            f"{'>' if failed else '<='} max_accuracy_drop {limit:.3f} ({basis})")
    return _result("accuracy", FAIL if failed else PASS, text, canary, control, drop, limit, kind=kind, **counts)


def _estimate(side: Side, profile_for: ProfileFor) -> float | None:
    """The count-weighted CBPE estimate over the side's models; None if one has no calibration."""
    total = weighted = 0.0
    for (name, version), counts in side.confidence_by_model.items():
        try:
            calibration = calibration_of(profile_for(name, version))
        except EdgefleetError:  # a stored archive that no longer reads: no estimate, said as insufficient
            return None
        estimate = estimated_accuracy(counts, calibration) if calibration else None
        if estimate is None:
            return None
        total += counts.sum()
        weighted += estimate * counts.sum()
    return weighted / total if total else None


def latency_gate(gates: QualityGates, canary: Side, control: Side) -> dict:
    limit = gates.max_p99_ratio
    if canary.requests < gates.min_samples or control.requests < gates.min_samples:
        return _result("latency", INSUFFICIENT, f"insufficient data: canary {canary.requests}, control "
                       f"{control.requests} requests (min_samples {gates.min_samples})", None, None, None, limit)
    ours, theirs = p99_ms(canary.latency), p99_ms(control.latency)
    ratio = 1.0 if ours == theirs else ours / theirs
    failed = ratio > limit
    text = (f"p99 latency canary {ours:g} ms vs control {theirs:g} ms: ratio {ratio:.2f} "
            f"{'>' if failed else '<='} max_p99_ratio {limit:.2f} (upper bin edges)")
    return _result("latency", FAIL if failed else PASS, text, ours, theirs, ratio, limit)


def error_gate(gates: QualityGates, canary: Side, control: Side) -> dict:
    limit = gates.max_error_rate_increase
    if canary.requests < gates.min_samples or control.requests < gates.min_samples:
        return _result("error_rate", INSUFFICIENT, f"insufficient data: canary {canary.requests}, control "
                       f"{control.requests} requests (min_samples {gates.min_samples})", None, None, None, limit)
    ours, theirs = canary.errors / canary.requests, control.errors / control.requests
    failed = ours - theirs > limit
    text = (f"error rate canary {ours:.4f} vs control {theirs:.4f}: increase {ours - theirs:.4f} "
            f"{'>' if failed else '<='} max_error_rate_increase {limit:.4f} "
            f"({canary.errors} of {canary.requests}, {control.errors} of {control.requests} requests)")
    return _result("error_rate", FAIL if failed else PASS, text, ours, theirs, ours - theirs, limit)


def judge(gates: QualityGates, canary: Side, control: Side, profile_for: ProfileFor) -> list[dict]:
    """Every enabled gate's result, in GATES order."""
    run = {"prediction_drift": lambda: drift_gate(gates, canary, control),
           "accuracy": lambda: accuracy_gate(gates, canary, control, profile_for),
           "latency": lambda: latency_gate(gates, canary, control),
           "error_rate": lambda: error_gate(gates, canary, control)}
    return [run[gate]() for gate in gates.enabled()]


@dataclass(frozen=True)
class Verdict:
    """What the engine does: "wait", "pass" or "fail"; `record` is stored with the deployment (None: wait)."""

    action: Literal["wait", "pass", "fail"]
    record: dict | None = None
    reason: str = ""


def verdict(gates: QualityGates, results: list[dict], *, started: float, now: float, deadline: float,
            canary: Sequence[str], control: Sequence[str]) -> Verdict:
    """Decides from the results at `now`; insufficient data waits until `deadline` (module docstring)."""
    if now < started + gates.observation_seconds:
        return Verdict("wait")
    failed = [r for r in results if r["outcome"] == FAIL]
    short = [r for r in results if r["outcome"] == INSUFFICIENT]
    if short and not failed and now < deadline:
        return Verdict("wait")
    record = {"started": started, "judged_at": now, "canary": list(canary), "control": list(control),
              "on_insufficient": gates.on_insufficient, "results": results}
    if failed or (short and gates.on_insufficient == "fail"):
        # before the deadline a short gate might still get its data: only the gates that failed are named
        named = failed + (short if gates.on_insufficient == "fail" and now >= deadline else [])
        reason = "quality gate failed after the canary wave: " + "; ".join(
            f"{r['gate']}: {r['text']}" for r in named)
        return Verdict("fail", {**record, "outcome": "failed"}, reason)
    outcome = "passed" if not short else "passed with insufficient data (on_insufficient pass)"
    return Verdict("pass", {**record, "outcome": outcome})


def judge_first_wave(session: Session, gates: QualityGates, profile_for: ProfileFor, *, candidate: tuple[str, int],
                     canary: Sequence[str], control: Sequence[str], started: float, now: float,
                     deadline: float) -> Verdict:
    """Reads both sides' windows of (started, now] and decides (`verdict`); the canaries' windows are the
    candidate's, the control's any other model's."""
    if now < started + gates.observation_seconds:
        return Verdict("wait")
    ours = read_side(session, canary, started, now, model=candidate)
    theirs = read_side(session, control, started, now, not_model=candidate)
    results = judge(gates, ours, theirs, profile_for)
    return verdict(gates, results, started=started, now=now, deadline=deadline, canary=canary, control=control)


def _shares(counts: np.ndarray) -> list[float]:
    return [round(float(c), 4) for c in counts / counts.sum()]


def _p(p: float) -> str:
    return "< 1e-300" if p == 0.0 else f"{p:.2g}"
