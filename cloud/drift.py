"""Drift evaluation: merged telemetry counts against a bundle's reference profile -> a report with verdicts.

Pure functions, no database: the drift monitor (cloud/drift_monitor.py) reads and merges the windows,
`evaluate` decides. Signals come in two groups, judged separately:

    data_drift        one signal per input feature tap (e.g. "pixels.c0.mean", "pixels.c0.std")
    prediction_drift  "predictions" (predicted-class counts) and "confidence" (its histogram), and one
                      signal per row of the profile's per-output summaries, "<output>.<row>" (e.g.
                      "price.price[0]", "embedding.norm", "embedding.proj3", "scores.count", "scores.score")

Each signal gets PSI, Jensen-Shannon distance, the chi-square test of homogeneity and the binned KS test
(core/drift.py); KS is left out (None) for "predictions", whose classes have no order. Every signal's n
and m are its own totals: a detector's "score" row counts detections, so min_samples asks for that many
detections, not requests.

Per-output summaries are optional on both sides. A profile without `outputs` gives exactly the report it
gave before they existed. A window without any (an agent older than them) says nothing about the outputs:
it adds nothing to their rows, and a scope with no output counts at all gets those signals with n = 0,
"insufficient". A window with output counts the profile does not have, or of another shape, is refused
(CountsMismatch), as for features.

A group's verdict is decided by its signals with enough samples: "drift" when one of them drifts, "ok"
when all of them are ok, "insufficient" only when none has enough. A short row (a detector's score row
counts only the detections at or above the threshold, the count row counts images; an output row of an
agent that sends none) is "insufficient" on its own and listed under the group's "insufficient"; it does
not hold back the other rows. Bonferroni still divides alpha by every signal of the group, judged or not
(the test each row faces does not depend on how many others had data). An open alert closes only on runs
where every signal of its group was judged ok (`cleared`).

The decision rule (DriftThresholds), per signal with n window samples and m reference samples:

    insufficient  if n < min_samples                                   (no verdict on a handful of requests)
    drift         if chi-square p < alpha / G                          (Bonferroni over the G signals of the group)
                  and PSI > max(psi_floor, noise_multiplier * (B - 1) * (1/n + 1/m))
    ok            otherwise

and, for an input feature whose profile has magnitude facts (cloud/drift_magnitude.py), the PSI condition
becomes "PSI above its threshold or the Wasserstein-1 distance at least 1 reference sd", and a difference
under 0.1 sd of Wasserstein-1 is never drift: a large move is never "ok", a tiny one never pages.

and where n or m is below 100 (cloud/drift_small_n.py: a slow stream whose fleet lowered min_samples, or a
short reference series), where the asymptotic p-value is wrong and the noise term explodes (4.05 for
n = 20, m = 25, B = 10):

    drift         if the permutation p-value (chi-square; and KS on ordered bins) < alpha / G   (exact, fixed seed)
                  and PSI > psi_floor

and where the profile says the reference is serially dependent (a positive lag-1 autocorrelation of a
series in time order, cloud/drift_dependence.py), both tests judge n / F and m / F effective samples:
chi-square and permutation statistics are divided by the variance inflation F (KS by sqrt(F)), and the
PSI noise term uses the effective sizes. Without it, the iid level 0.01 flagged US GDP growth's clean
pre-1984 quarters 1.82 times per 100 evaluations.

Why PSI needs a sample-size-aware threshold: with proportions o and r drawn from the same distribution,
o_i - r_i has variance pi_i (1 - pi_i) (1/n + 1/m), and to second order PSI = sum (o_i - r_i)^2 / pi_i, so
its expected value under no drift is (B - 1) (1/n + 1/m) with B the non-empty bins (in fact n_eff * PSI
is close to the chi-square statistic, ~ chi2(B - 1)). A fixed PSI cut-off therefore alerts on pure
sampling noise in small windows (10 bins, n = 100: the expected PSI is already 0.1). The noise term
scales the cut-off with that expectation; with multiplier k the PSI condition alone has a false-alert
rate of about P(chi2(B - 1) > k (B - 1)), 1e-6 for k = 5 and B = 10. The floor is for large windows:
there the chi-square test becomes sure of tiny but real differences between the training data and
clean production traffic (a different sample of the same population, a different camera batch), and
PSI converges to that difference instead of to zero; those must not page anyone. PSI < 0.1 is the
usual "no meaningful shift" band and 0.1-0.25 "moderate".

How the defaults were chosen, on the real digits data (the reference is the 1347-image training split;
clean traffic is windows resampled with replacement from the 450-image test split, 8000 windows per
size; drifted traffic is the test split brightened by 0.03..0.15, with Gaussian noise of 0.05..0.15, or
limited to some classes), for the CNN trained 10 epochs (the tests' bundle) and 15 (the default):

- The whole test split against the training profile: PSI 0.02-0.03 on the pixel taps, 0.005 on the
  predictions, 0.02 (10 epochs) and 0.04 (15 epochs) on the confidence, which is the real difference
  between training and held-out data: the longer-trained model is surer of the images it learned from.
  At n = 2000 the chi-square test finds it (p < 0.005) in 35% (10 epochs) and 97% (15 epochs) of
  the clean windows: the test alone would page someone all day.
- Resampled windows add noise of their own (each repeats test images, a 1/450 variance term). Their
  largest PSI over 8000 clean windows was 0.47-0.49 at n = 100, 0.23-0.28 at 200, 0.15-0.17 at 500
  and 0.07-0.08 at 2000.
- min_samples = 100: Cochran's rule of thumb (every expected count >= 5) holds for up to 20 bins, and
  the three required drifts (brightness +0.15, noise 0.15, only digits 0-2) are detected in every
  window of 100.
- noise_multiplier = 5: false alerts per window at most 0.04% for any size and either model (k = 4:
  up to 0.41%, from the confidence of the 15-epoch model at n = 200; k = 4.5: up to 0.11%). The price
  is sensitivity to mild drift in small windows: noise 0.05 at n = 200 is caught in 44% of windows
  (59% with k = 4.5), at n = 500 in 99%.
- psi_floor = 0.15: with 0.1 the floor binds from n = 500 on, where clean windows reach 0.165, and
  false alerts rose to 0.47% per window; with 0.2 noise 0.05 at n = 500 is caught in 66% of windows
  instead of 99%. 0.15 also sits in the usual "moderate shift" band.
- alpha = 0.01 (family-wise, per group): with the PSI threshold above, the chi-square condition rarely
  decides; it keeps PSI from flagging where the test sees nothing (a few large smoothed empty-bin terms).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field

import numpy as np

from edgefleet.cloud import drift_dependence as dependence
from edgefleet.cloud import drift_magnitude as magnitude
from edgefleet.cloud import drift_small_n as small_n
from edgefleet.core import drift as stats
from edgefleet.core.errors import EdgefleetError
from edgefleet.core.telemetry import TelemetryWindow

DRIFT, OK, INSUFFICIENT = "drift", "ok", "insufficient"
GROUPS = ("data_drift", "prediction_drift")
Signal = tuple[np.ndarray, np.ndarray, bool, "Mapping | None"]  # window row, reference row, ordered, magnitude facts


class CountsMismatch(EdgefleetError):
    """Window counts that cannot be compared with (or merged into) the others: wrong shape or signal."""


@dataclass(frozen=True)
class DriftThresholds:
    """The decision rule of `evaluate` (see the module docstring for the derivation and the tuning)."""

    min_samples: int = 100
    alpha: float = 0.01
    psi_floor: float = 0.15
    noise_multiplier: float = 5.0

    def __post_init__(self) -> None:
        if self.min_samples < 1:
            raise ValueError(f"min_samples must be at least 1, got {self.min_samples}")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.psi_floor < 0 or self.noise_multiplier < 0:
            raise ValueError("psi_floor and noise_multiplier must be non-negative")

    def psi_threshold(self, dof: int, n: float, m: float) -> float:
        """max(psi_floor, k (B - 1)(1/n + 1/m)): the PSI a signal must exceed, given its sample sizes."""
        return max(self.psi_floor, self.noise_multiplier * dof * (1.0 / n + 1.0 / m))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, eq=False)
class WindowCounts:
    """The counts of one or more telemetry windows of one model version, merged by adding."""

    samples: int
    features: Mapping[str, np.ndarray] = field(default_factory=dict)  # input -> (features, edges + 2)
    predictions: np.ndarray | None = None  # (classes,) or None for a non-classifier
    confidence: np.ndarray | None = None  # (edges + 2,) or None
    outputs: Mapping[str, np.ndarray] = field(default_factory=dict)  # output -> (rows, edges + 2); {} = not sent

    @classmethod
    def from_telemetry(cls, window: TelemetryWindow) -> WindowCounts:
        features: dict[str, np.ndarray] = {}
        for item in window.features:
            if item.input in features:
                raise CountsMismatch(f"input {item.input!r} appears twice in the window's features")
            features[item.input] = np.asarray(item.counts, dtype=np.int64)
        outputs: dict[str, np.ndarray] = {}
        for item in window.outputs:
            if item.output in outputs:
                raise CountsMismatch(f"output {item.output!r} appears twice in the window's outputs")
            outputs[item.output] = np.asarray(item.counts, dtype=np.int64)
        return cls(
            samples=window.samples,
            features=features,
            predictions=np.asarray(window.predictions, dtype=np.int64) if window.predictions else None,
            confidence=np.asarray(window.confidence, dtype=np.int64) if window.confidence else None,
            outputs=outputs,
        )

    def __add__(self, other: WindowCounts) -> WindowCounts:
        if set(self.features) != set(other.features):
            raise CountsMismatch(f"windows profile different inputs: {sorted(self.features)} and "
                                 f"{sorted(other.features)}")
        features = {name: _add(counts, other.features[name], f"features of input {name!r}")
                    for name, counts in self.features.items()}
        return WindowCounts(
            samples=self.samples + other.samples,
            features=features,
            predictions=_add_optional(self.predictions, other.predictions, "predictions"),
            confidence=_add_optional(self.confidence, other.confidence, "confidence"),
            outputs=_add_outputs(self.outputs, other.outputs),
        )


SUM_AT_ONCE = 16  # from this many windows on, merge_windows sums each signal in one numpy call


def merge_windows(windows: Iterable[WindowCounts]) -> WindowCounts:
    """Adds windows of one model version; CountsMismatch if their shapes differ. Many windows of one shape
    and integer counts (a fleet's) are summed per signal at once: integer sums are exact in any order, so
    the result is the one adding them pair by pair gives; anything else is added pair by pair."""
    items = windows if isinstance(windows, list) else list(windows)
    if not items:
        raise ValueError("no windows to merge")
    if len(items) >= SUM_AT_ONCE:
        total = _sum_alike(items)
        if total is not None:
            return total
    total = items[0]
    for window in items[1:]:
        total = total + window
    return total


def _shape_of(counts: WindowCounts) -> tuple | None:
    """What `_sum_alike` needs equal across windows: every signal's name, shape and dtype (None: a signal
    whose counts are not integers, which only the pair-by-pair path adds)."""
    arrays = [*counts.features.items(), ("", counts.predictions), (" ", counts.confidence),
              *((f"output {name}", array) for name, array in counts.outputs.items())]
    shape = []
    for name, array in arrays:
        if array is None:
            shape.append((name, None))
        elif not isinstance(array, np.ndarray) or array.dtype.kind not in "iu":
            return None
        else:
            shape.append((name, array.shape, array.dtype))
    return tuple(shape)


def _sum_alike(items: list[WindowCounts]) -> WindowCounts | None:
    """The sum of windows whose signals all have one shape and integer dtype, one numpy sum per signal;
    None when any differs (merge_windows then adds them pair by pair, raising what that raises)."""
    shape = _shape_of(items[0])
    if shape is None or any(_shape_of(item) != shape for item in items[1:]):
        return None

    def total(get: Callable[[WindowCounts], np.ndarray]) -> np.ndarray:
        return np.add.reduce(np.stack([get(item) for item in items]), axis=0)

    first = items[0]
    samples = items[0].samples
    for item in items[1:]:
        samples = samples + item.samples
    return WindowCounts(
        samples=samples,
        features={name: total(lambda item, name=name: item.features[name]) for name in first.features},
        predictions=None if first.predictions is None else total(lambda item: item.predictions),
        confidence=None if first.confidence is None else total(lambda item: item.confidence),
        outputs={name: total(lambda item, name=name: item.outputs[name]) for name in first.outputs},
    )


def _add(a: np.ndarray, b: np.ndarray, label: str) -> np.ndarray:
    if a.shape != b.shape:
        raise CountsMismatch(f"{label}: cannot add counts of shapes {a.shape} and {b.shape}")
    return a + b


def _add_outputs(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
    """Adds per-output rows; a window without any (an older agent) adds nothing."""
    if not a or not b:
        return dict(a or b)
    if set(a) != set(b):
        raise CountsMismatch(f"windows summarise different outputs: {sorted(a)} and {sorted(b)}")
    return {name: _add(counts, b[name], f"summary rows of output {name!r}") for name, counts in a.items()}


def _add_optional(a: np.ndarray | None, b: np.ndarray | None, label: str) -> np.ndarray | None:
    if a is None and b is None:
        return None
    if a is None or b is None:
        raise CountsMismatch(f"{label}: present in one window and missing in the other")
    return _add(a, b, label)


def check_against_profile(counts: WindowCounts, profile: Mapping) -> None:
    """Raises CountsMismatch naming the first signal whose shape differs from the profile's."""
    expected = {f["input"]: (len(f["counts"]), len(f["counts"][0])) for f in profile.get("features", [])}
    got = {name: tuple(array.shape) for name, array in counts.features.items()}
    if set(expected) != set(got):
        raise CountsMismatch(f"window profiles inputs {sorted(got)}, the reference profile {sorted(expected)}")
    for name, shape in expected.items():
        if got[name] != shape:
            raise CountsMismatch(f"features of input {name!r}: window counts have shape {got[name]}, "
                                 f"the reference profile {shape} (another model version or bin count?)")
    for key, array in (("predictions", counts.predictions), ("confidence", counts.confidence)):
        reference = profile.get(key)
        if reference is None:
            if array is not None:
                raise CountsMismatch(f"window has {key} counts but the reference profile has none")
            continue
        want = len(reference["counts"])
        if array is None or array.shape != (want,):
            shape = None if array is None else tuple(array.shape)
            raise CountsMismatch(f"{key}: window counts have shape {shape}, the reference profile ({want},)")
    _check_outputs(counts.outputs, profile.get("outputs") or [])


def _check_outputs(outputs: Mapping[str, np.ndarray], reference: list) -> None:
    """The window's per-output rows against the profile's (none at all is an older agent: accepted)."""
    expected = {}
    for item in reference:
        if len(item["names"]) != len(item["counts"]):
            raise ValueError(f"reference profile output {item['output']!r} names {len(item['names'])} rows "
                             f"but holds {len(item['counts'])}")
        expected[item["output"]] = (len(item["counts"]), len(item["counts"][0]))
    if not outputs:
        return
    if set(outputs) != set(expected):
        raise CountsMismatch(f"window summarises outputs {sorted(outputs)}, the reference profile {sorted(expected)}")
    for name, shape in expected.items():
        if outputs[name].shape != shape:
            raise CountsMismatch(f"summary rows of output {name!r}: window counts have shape "
                                 f"{tuple(outputs[name].shape)}, the reference profile {shape} "
                                 f"(another model version or bin count?)")


def evaluate(counts: WindowCounts, profile: Mapping, thresholds: DriftThresholds | None = None) -> dict:
    """The drift report of merged window counts against a reference profile (the dict of profile.json).

    Raises CountsMismatch if the shapes differ from the profile. The report (JSON-serialisable):
        {"verdict": "drift" | "ok" | "insufficient", "samples": n, "reference_samples": m,
         "thresholds": {...},
         "data_drift": {"verdict": ..., "alpha": per-signal alpha, "drifting": [names], "insufficient": [names],
                        "signals": {name: {"n", "m", "psi", "psi_threshold", "js", "chi2": {"statistic",
                                    "dof", "p"}, "ks": {"statistic", "p"} | None,
                                    "location": {"shift", "wasserstein"} (in reference sds) | None, "verdict"}}},
         "prediction_drift": {... same, with "predictions", "confidence" and "<output>.<row>" signals;
                              verdict None for a model without any of them}}
    """
    thresholds = thresholds or DriftThresholds()
    check_against_profile(counts, profile)
    data: dict[str, Signal] = {}
    prediction: dict[str, Signal] = {}
    for group, name, window, reference, ordered, facts in signals_of(profile):
        (data if group == "data_drift" else prediction)[name] = (window(counts), reference, ordered, facts)
    groups = {"data_drift": _group(data, thresholds), "prediction_drift": _group(prediction, thresholds)}
    return assemble(groups, counts.samples, profile, thresholds.to_dict())


def assemble(groups: Mapping[str, dict], samples: int, profile: Mapping, thresholds: dict) -> dict:
    """The report around its two groups (`group_report`); `thresholds` as DriftThresholds.to_dict()."""
    return {
        "verdict": _overall([g["verdict"] for g in groups.values()]),
        "samples": int(samples),
        "reference_samples": int(profile.get("count", 0)),
        "thresholds": thresholds,
        **groups,
    }


def signals_of(profile: Mapping) -> list[tuple[str, str, Callable[[WindowCounts], np.ndarray], np.ndarray, bool,
                                                  Mapping | None]]:
    """The profile's signals in report order: (group, name, the window's row of it from WindowCounts,
    reference row, ordered, magnitude facts)."""
    signals: list = []
    for feature in profile.get("features", []):
        for index, name in enumerate(feature["names"]):
            signals.append(("data_drift", name, lambda c, i=feature["input"], k=index: c.features[i][k],
                            np.asarray(feature["counts"][index]), True, magnitude.facts_of(feature, index)))
    names: set[str] = set()
    if profile.get("predictions") is not None:
        signals.append(("prediction_drift", "predictions", lambda c: c.predictions,
                        np.asarray(profile["predictions"]["counts"]), False, None))
        names.add("predictions")
    if profile.get("confidence") is not None:
        signals.append(("prediction_drift", "confidence", lambda c: c.confidence,
                        np.asarray(profile["confidence"]["counts"]), True, None))
        names.add("confidence")
    for item in profile.get("outputs") or []:
        reference = np.asarray(item["counts"])
        for index, row in enumerate(item["names"]):
            name = f"{item['output']}.{row}"
            if name in names:
                raise ValueError(f"reference profile names the prediction signal {name!r} twice")
            names.add(name)
            signals.append(("prediction_drift", name,
                            lambda c, o=item["output"], k=index, z=reference: c.outputs.get(o, np.zeros_like(z))[k],
                            reference[index], True, None))
    return signals


def _group(signals: Mapping[str, Signal], thresholds: DriftThresholds) -> dict:
    """A group's signals and its verdict, decided by the signals that have enough samples (module docstring)."""
    alpha = thresholds.alpha / max(len(signals), 1)
    return group_report({name: judge_signal(obs, ref, ordered, alpha, thresholds, facts)
                         for name, (obs, ref, ordered, facts) in signals.items()}, alpha)


def group_report(results: Mapping[str, dict], alpha: float) -> dict:
    """A group's part of the report from its signals' results (`judge_signal`) and its per-signal alpha."""
    judged = [r["verdict"] for r in results.values() if r["verdict"] != INSUFFICIENT]
    return {
        "verdict": (_overall(judged) if judged else INSUFFICIENT) if results else None,
        "alpha": alpha,
        "drifting": [name for name, r in results.items() if r["verdict"] == DRIFT],
        "insufficient": [name for name, r in results.items() if r["verdict"] == INSUFFICIENT],
        "signals": results,
    }


def cleared(group: Mapping) -> bool:
    """True when a report's group is ok on every one of its signals: an open alert closes only on such runs
    (cloud/drift_monitor.py), not on an "ok" that left a short row unjudged."""
    return group.get("verdict") == OK and all(s["verdict"] == OK for s in group.get("signals", {}).values())


def judge_signal(obs: np.ndarray, ref: np.ndarray, ordered: bool, alpha: float, thresholds: DriftThresholds,
            facts: Mapping | None) -> dict:
    n, m = int(obs.sum()), int(ref.sum())
    result: dict = {"n": n, "m": m}
    if n == 0 or m == 0:
        return {**result, "psi": None, "psi_threshold": None, "js": None, "chi2": None, "ks": None,
                "location": None, "verdict": INSUFFICIENT}
    moved = magnitude.location(obs, ref, facts)
    statistic, dof, p = stats.chi_square(obs, ref)
    inflation = dependence.inflation(facts, n, m)  # serially dependent samples: n / F effective ones
    if inflation > 1.0 and dof > 0:
        p = stats.chi2_sf(statistic / inflation, dof)
    psi = stats.psi(obs, ref)
    small = small_n.is_small(n, m)  # the permutation test decides, against the floor alone
    psi_threshold = (thresholds.psi_floor if small
                     else thresholds.psi_threshold(max(dof, 1), n / inflation, m / inflation))
    ks = None
    if ordered:
        ks_stat, ks_p = stats.ks_binned(obs, ref)
        ks = {"statistic": ks_stat, "p": ks_p}
    exact_p = None
    if n < thresholds.min_samples:
        verdict = INSUFFICIENT
    elif small:
        exact_p = small_n.permutation_p(obs, ref, ordered=ordered, alpha=alpha, inflation=inflation)
        verdict = DRIFT if magnitude.decide(exact_p < alpha, psi > psi_threshold, moved) else OK
    else:
        verdict = DRIFT if magnitude.decide(p < alpha, psi > psi_threshold, moved) else OK
    return {
        **result,
        "psi": psi,
        "psi_threshold": psi_threshold,
        "js": stats.js_distance(obs, ref),
        "chi2": {"statistic": statistic, "dof": dof, "p": p, "exact_p": exact_p, "inflation": inflation},
        "ks": ks,
        "location": moved,
        "verdict": verdict,
    }


def _overall(verdicts: Iterable[str | None]) -> str:
    present = [v for v in verdicts if v is not None]
    if DRIFT in present:
        return DRIFT
    if not present or INSUFFICIENT in present:
        return INSUFFICIENT
    return OK


def summary(report: Mapping, group: str) -> str:
    """One line naming the drifting signals of a group with their PSI and p-value, for alert messages."""
    part = report[group]
    items = []
    for name in part["drifting"]:
        signal = part["signals"][name]
        exact_p = signal["chi2"].get("exact_p")
        test = (f"chi-square p {_format_p(signal['chi2']['p'])}" if exact_p is None
                else f"permutation p {_format_p(exact_p)} (n {signal['n']}, m {signal['m']})")
        moved = signal.get("location")
        where = "" if not moved else f", shift {moved['shift']:+.2f} sd (W1 {moved['wasserstein']:.2f} sd)"
        items.append(f"{name} PSI {signal['psi']:.3f} (threshold {signal['psi_threshold']:.3f}), {test}{where}")
    return "; ".join(items) if items else "no drifting signal"


def _format_p(p: float) -> str:
    return "< 1e-300" if p == 0.0 else f"{p:.2g}" if not math.isnan(p) else "nan"
