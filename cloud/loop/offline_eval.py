"""Offline evaluation: is a candidate bundle fit to replace the serving one, judged before any rollout?

    report = evaluate(candidate_dir, serving_dir, "heldout.npz", "recent.npz", trust=store,
                      options=EvalOptions(critical_slices=("night",)))
    report["decision"]  # {"refused": bool, "reasons": [...], "forced": bool, "passed": bool}

Both bundles run through the edge runtime's own Predictor (signature verified, the backend a device
would pick), so what is judged is what devices serve. On the held-out split (labels required) and on
recently captured data (labels optional) each model is measured overall and per slice (eval_data.py):
accuracy with its Wilson interval for a classifier, mean absolute error with a bootstrap interval for
regression; the candidate's improvement over the serving model is the paired mean difference of per-row
scores (correct: 1/0; regression: -|error|) with a bootstrap interval (eval_stats.py). A group is
"worse" only when that whole interval lies below -max_drop: the loss the user accepts on a group (0 by
default; a candidate that gains much on the new condition may be allowed, say, 0.02 accuracy on the old
one, since a retrained model rarely matches the serving one row for row). Recent data without labels gives the share of
answers on which the two models agree (no verdict). The baseline is the best constant answer on the
labels (the majority class; the mean for regression): the candidate must beat it beyond noise.

The candidate is refused when it is worse than the serving model on the whole data or on a critical slice
of either file, fails a sanity check (eval_checks.py), or does not beat the baseline; groups with fewer
than `min_rows` rows are shown but not judged. `force` accepts a refused candidate and says so in the
report. Tasks other than classification and regression are refused with a message.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgefleet.cloud.loop import eval_checks
from edgefleet.cloud.loop.eval_data import OVERALL, EvalData, class_labels, read_data, regression_targets, slice_names
from edgefleet.cloud.loop.eval_stats import calibration, paired_interval, proportion, verdict
from edgefleet.core.answers import probabilities, rows
from edgefleet.core.canonical import format_time, utc_now
from edgefleet.core.decision import decision_output
from edgefleet.core.errors import EdgefleetError
from edgefleet.core.schema import join_samples, sample_count, take_samples
from edgefleet.core.signing import TrustStore
from edgefleet.edge_runtime.predictor import Predictor

log = logging.getLogger(__name__)

TASKS = ("classification", "regression")
CHUNK = 256  # samples per predict call
REPORT_SCHEMA = 1


@dataclass(frozen=True)
class EvalOptions:
    critical_slices: tuple[str, ...] = ()
    slice_keys: tuple[str, ...] = ()
    min_rows: int = 20
    max_drop: float = 0.0  # accepted loss per group (accuracy, or MAE units), module docstring
    force: bool = False
    checks: Path | None = None  # the policy file (eval_checks.py); None: defaults and the bundles' declarations
    backends: tuple[str, ...] | None = None


class ServedModel:
    """A bundle as a device serves it; `answers` gives (top-1 classes, probabilities) or (values, None)."""

    def __init__(self, which: str, path: Path, trust: TrustStore, backends: Sequence[str] | None) -> None:
        self.which = which
        try:
            self.predictor = Predictor(path, list(backends) if backends else None, trusted_keys=trust)
        except EdgefleetError as err:
            raise EdgefleetError(f"--{which} {path}: {err}") from err
        self.bundle = self.predictor.bundle
        self.interface = self.bundle.manifest["interface"]
        self.task = self.interface.get("task") or "other"
        if self.task not in TASKS:
            raise EdgefleetError(f"--{which} {path}: offline evaluation reads {' and '.join(TASKS)} models; this "
                                 f"bundle's task is {self.task}")
        name = decision_output(self.interface) or self.bundle.outputs[0].name
        self.output = next(s for s in self.bundle.outputs if s.name == name)

    def scores(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """The decision output (regression: the first output), samples first, one row per sample."""
        specs = self.bundle.inputs
        count = sample_count(specs, inputs)
        parts = [self.predictor.predict(take_samples(specs, inputs, start, start + CHUNK))
                 for start in range(0, max(count, 1), CHUNK)]
        joined = join_samples(self.bundle.outputs, parts)
        values = rows(self.output, joined)
        return values.reshape(len(values), -1)

    def answers(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Top-1 classes, or the values (N, k): what the sanity checks compare."""
        values = self.scores(inputs)
        return values.argmax(axis=1) if self.task == "classification" else values.astype(np.float64)

    def describe(self) -> dict:
        return {"name": self.bundle.name, "version": self.bundle.version, "path": str(self.bundle.root),
                "key_id": self.predictor.verified.key_id, **self.predictor.describe()}

    def close(self) -> None:
        self.predictor.close()


def evaluate(candidate: Path, serving: Path, heldout: Path, recent: Path | None = None, *, trust: TrustStore,
             options: EvalOptions = EvalOptions()) -> dict:  # noqa: B008 - frozen
    """The report (module docstring); EdgefleetError with one message for bad bundles, files or options."""
    models = []
    try:
        for which, path in (("candidate", candidate), ("serving", serving)):
            models.append(ServedModel(which, Path(path), trust, options.backends))
        return _evaluate(*models, heldout, recent, options)
    finally:
        for model in models:
            model.close()


def _evaluate(cand: ServedModel, serv: ServedModel, heldout: Path, recent: Path | None, options: EvalOptions) -> dict:
    _check_compatible(cand, serv)
    policy = eval_checks.load_policy(options.checks, [("candidate", cand.bundle.manifest),
                                                      ("serving", serv.bundle.manifest)])
    specs = cand.bundle.inputs
    datasets = {"heldout": read_data(Path(heldout), "heldout", specs, options.slice_keys)}
    if recent is not None:
        datasets["recent"] = read_data(Path(recent), "recent", specs, options.slice_keys)
    known = slice_names(datasets)
    for name in options.critical_slices:
        if name != OVERALL and name not in known:
            raise EdgefleetError(f"--critical-slice {name!r} is not a slice of the data (slices: "
                                 f"{', '.join(sorted(known)) or 'none: pass --slices KEY'})")
    critical = (OVERALL, *(n for n in options.critical_slices if n != OVERALL))
    report = {
        "kind": "offline_evaluation", "schema": REPORT_SCHEMA, "created_at": format_time(utc_now()),
        "task": cand.task, "metric": "accuracy" if cand.task == "classification" else "mean_absolute_error",
        "candidate": cand.describe(), "serving": serv.describe(), "critical_slices": list(critical),
        "min_rows": options.min_rows, "max_drop": options.max_drop, "level": 0.95,
        "datasets": {name: _dataset(cand, serv, data, critical, options) for name, data in datasets.items()},
    }
    report["checks"] = _checks(cand, serv, datasets["heldout"], policy)
    report["decision"] = _decision(report, options.force)
    return report


def _check_compatible(cand: ServedModel, serv: ServedModel) -> None:
    if cand.task != serv.task:
        raise EdgefleetError(f"the candidate is a {cand.task} model, the serving one a {serv.task} model")
    mine, theirs = ([(s.name, s.dtype) for s in m.bundle.inputs] for m in (cand, serv))
    if mine != theirs:
        raise EdgefleetError(f"the candidate's inputs {mine} differ from the serving model's {theirs}: the same "
                             f"data cannot feed both")
    names = [m.interface.get("class_names") for m in (cand, serv)]
    if cand.task == "classification" and None not in names and names[0] != names[1]:
        raise EdgefleetError(f"the candidate's classes {names[0]} differ from the serving model's {names[1]}")


# measuring one file -----------------------------------------------------------------------------------------
def _dataset(cand: ServedModel, serv: ServedModel, data: EvalData, critical: Sequence[str],
             options: EvalOptions) -> dict:
    got = {m.which: m.scores(data.inputs) for m in (cand, serv)}
    widths = {which: values.shape[1] for which, values in got.items()}
    if widths["candidate"] != widths["serving"]:
        raise EdgefleetError(f"the candidate gives {widths['candidate']} values per sample, the serving model "
                             f"{widths['serving']}: they do not answer the same question")
    groups = {OVERALL: np.ones(data.count, bool), **data.slices}
    entry: dict = {"path": str(data.path), "rows": data.count, "labelled": data.labels is not None,
                   "slices": sorted(data.slices)}
    if data.labels is None:
        entry["agreement"] = [_agreement(cand, got, name, mask) for name, mask in groups.items()]
        return entry
    if cand.task == "classification":
        labels = class_labels(data, widths["candidate"])
        score = {w: (v.argmax(axis=1) == labels).astype(np.float64) for w, v in got.items()}
        majority = int(np.bincount(labels, minlength=widths["candidate"]).argmax())
        baseline = (labels == majority).astype(np.float64)
        names = cand.interface.get("class_names")
        entry["baseline"] = {"name": "majority class", "answer": names[majority] if names else majority}
    else:
        targets = regression_targets(data, widths["candidate"])
        score = {w: -np.abs(v - targets).mean(axis=1) for w, v in got.items()}
        baseline = -np.abs(targets.mean(axis=0) - targets).mean(axis=1)
        entry["baseline"] = {"name": "mean", "answer": [float(v) for v in targets.mean(axis=0)]}
    entry["groups"] = [_group(cand.task, name, mask, score, critical, options) for name, mask in groups.items()]
    entry["baseline"].update(_measure(cand.task, baseline))
    beat = paired_interval(score["candidate"], baseline)
    entry["baseline"]["candidate_improvement"] = {**beat, "verdict": verdict(beat, options.min_rows)}
    return entry


def _measure(task: str, score: np.ndarray) -> dict:
    """A model's figure on rows: accuracy (Wilson interval) or mean absolute error (bootstrap interval)."""
    if task == "classification":
        return proportion(int(score.sum()), score.size)
    return paired_interval(-score)


def _group(task: str, name: str, mask: np.ndarray, score: dict, critical: Sequence[str], options: EvalOptions) -> dict:
    difference = paired_interval(score["candidate"][mask], score["serving"][mask])
    return {"slice": name, "rows": int(mask.sum()), "critical": name in critical,
            "serving": _measure(task, score["serving"][mask]), "candidate": _measure(task, score["candidate"][mask]),
            "improvement": difference, "verdict": verdict(difference, options.min_rows, options.max_drop)}


def _agreement(cand: ServedModel, got: dict, name: str, mask: np.ndarray) -> dict:
    """Unlabelled rows: the share of same answers (classification) or the mean |difference| (regression)."""
    c, s = got["candidate"][mask], got["serving"][mask]
    if cand.task == "classification":
        same = c.argmax(axis=1) == s.argmax(axis=1)
        return {"slice": name, "rows": int(mask.sum()), "same_answer": proportion(int(same.sum()), same.size)}
    return {"slice": name, "rows": int(mask.sum()),
            "mean_abs_difference": paired_interval(np.abs(c - s).mean(axis=1))}


# sanity checks ----------------------------------------------------------------------------------------------
def _checks(cand: ServedModel, serv: ServedModel, data: EvalData, policy: eval_checks.CheckPolicy) -> dict:
    specs = cand.bundle.inputs
    tolerance = None
    if cand.task == "regression":
        sd = float(np.std(np.asarray(data.labels, np.float64)))
        tolerance = policy.regression_tolerance * (sd if sd > 0 else 1.0)
    checks: dict = {"declared_in": policy.declared_in}
    scores = {m.which: m.scores(data.inputs) for m in (cand, serv)}
    clean = {w: v.argmax(axis=1) if cand.task == "classification" else v.astype(np.float64)
             for w, v in scores.items()}
    figures = {m.which: eval_checks.perturbation(m.answers, data.inputs, specs, clean[m.which], policy, tolerance)
               for m in (cand, serv)}
    if figures["candidate"] is not None:
        checks["perturbation"] = {**figures, "limit": policy.max_changed_under_noise, "tolerance": tolerance,
                                  "passed": not eval_checks.beyond(figures["candidate"],
                                                                   policy.max_changed_under_noise)}
    checks["invariance"] = []
    for inv in policy.invariances:
        figures = {m.which: eval_checks.invariance_check(m.answers, data.inputs, specs, clean[m.which], inv,
                                                          tolerance) for m in (cand, serv)}
        checks["invariance"].append({"name": inv.name, "transform": inv.transform, "value": inv.value,
                                     "axis": inv.axis, "input": inv.input, **figures, "limit": inv.max_changed,
                                     "passed": not eval_checks.beyond(figures["candidate"], inv.max_changed)})
    if cand.task == "classification":
        labels = class_labels(data, scores["candidate"].shape[1])
        figures = {}
        for model in (cand, serv):
            probs = probabilities(scores[model.which], model.interface.get("postprocess"))
            figures[model.which] = calibration(probs.max(axis=1), probs.argmax(axis=1) == labels, policy.bins,
                                               seed=policy.seed)
        checks["calibration"] = {**figures, "limit": policy.max_ece,
                                 "passed": not eval_checks.beyond(figures["candidate"], policy.max_ece)}
    return checks


# the decision -----------------------------------------------------------------------------------------------
def _decision(report: dict, force: bool) -> dict:
    reasons = []
    metric = "accuracy" if report["task"] == "classification" else "mean absolute error"
    for dataset, entry in report["datasets"].items():
        for group in entry.get("groups", []):
            if group["critical"] and group["verdict"] == "worse":
                lo, hi = group["improvement"]["ci95"]
                where = "the whole data" if group["slice"] == OVERALL else f"critical slice {group['slice']!r}"
                reasons.append(f"the candidate is worse than the serving model on {where} of {dataset} "
                               f"({group['rows']} rows): {metric} {group['candidate']['value']:.3f} vs "
                               f"{group['serving']['value']:.3f}, {_improvement(report['task'])} "
                               f"{group['improvement']['value']:+.3f} (95% interval {lo:+.3f} to {hi:+.3f})")
        beat = entry.get("baseline", {}).get("candidate_improvement")
        if beat is not None and beat["verdict"] not in ("better", "too few rows"):
            baseline = entry["baseline"]
            reasons.append(f"the candidate does not beat the {baseline['name']} baseline on {dataset}: {metric} "
                           f"{_overall(entry)['candidate']['value']:.3f} vs {baseline['value']:.3f} "
                           f"(95% interval of the improvement {beat['ci95'][0]:+.3f} to {beat['ci95'][1]:+.3f})")
    checks = report["checks"]
    if not checks.get("perturbation", {}).get("passed", True):
        figure = checks["perturbation"]["candidate"]
        reasons.append(f"the candidate fails the perturbation check: {_share(figure)} of answers change under noise "
                       f"of {figure['noise']:g} sd, limit {checks['perturbation']['limit']:.1%}")
    for item in checks["invariance"]:
        if not item["passed"]:
            reasons.append(f"the candidate fails invariance {item['name']!r}: {_share(item['candidate'])} of answers "
                           f"change, limit {item['limit']:.1%}")
    if not checks.get("calibration", {}).get("passed", True):
        figure = checks["calibration"]["candidate"]
        reasons.append(f"the candidate fails the calibration check: expected calibration error {figure['ece']:.3f} "
                       f"(95% interval {figure['ci95'][0]:.3f} to {figure['ci95'][1]:.3f}), limit "
                       f"{checks['calibration']['limit']:.3f}")
    refused = bool(reasons)
    if refused:
        log.info("offline evaluation refuses the candidate%s: %s", " (forced past it)" if force else "",
                    "; ".join(reasons))
    return {"refused": refused, "reasons": reasons, "forced": refused and force, "passed": not refused or force}


def _overall(entry: dict) -> dict:
    return next(g for g in entry["groups"] if g["slice"] == OVERALL)


def _improvement(task: str) -> str:
    return "difference" if task == "classification" else "improvement (serving error - candidate error)"


def _share(figure: dict) -> str:
    low, high = figure["ci95"]
    return f"{figure['value']:.1%} (95% interval {low:.1%} to {high:.1%}, {figure['count']} rows)"
