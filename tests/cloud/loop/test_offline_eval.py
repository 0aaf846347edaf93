"""Offline evaluation on real models (tests/cloud/loop/eval_kit.py): figures held against the edge
Predictor's own outputs, refusals that name the slice or the check, labels-free recent data."""

from __future__ import annotations

import json

import numpy as np

from edgefleet.cloud.loop.offline_eval import EvalOptions, evaluate
from edgefleet.core import bundle as bundle_io
from edgefleet.core.signing import SigningKey, TrustStore
from edgefleet.edge_runtime.predictor import Predictor


def _trust(kit) -> TrustStore:
    return TrustStore.from_paths([kit.public_key])


def _logits(kit, which: str, x: np.ndarray) -> np.ndarray:
    with Predictor(kit.bundles[which], trusted_keys=[kit.public_key]) as predictor:
        return predictor.predict({"pixels": x})["logits"]


def _group(report: dict, dataset: str, name: str) -> dict:
    return next(g for g in report["datasets"][dataset]["groups"] if g["slice"] == name)


def _ece_by_loop(confidence: np.ndarray, correct: np.ndarray, bins: int) -> float:
    """ECE written out bin by bin, as the textbook states it (Guo et al. 2017)."""
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = [(c, k) for c, k in zip(confidence, correct, strict=True) if (lo < c <= hi) or (b == 0 and c == 0)]
        if inside:
            mean_conf = sum(c for c, _ in inside) / len(inside)
            accuracy = sum(k for _, k in inside) / len(inside)
            total += len(inside) / len(confidence) * abs(accuracy - mean_conf)
    return total


def test_a_better_candidate_passes_with_the_predictors_own_figures(kit):
    report = evaluate(kit.bundles["better"], kit.bundles["serving"], kit.heldout, kit.recent, trust=_trust(kit),
                      options=EvalOptions(critical_slices=("clean",)))
    assert report["decision"] == {"refused": False, "reasons": [], "forced": False, "passed": True}
    assert report["candidate"]["backend"] == "onnxruntime" and report["candidate"]["version"] == 2
    with np.load(kit.heldout) as data:
        x, y, condition = data["pixels"], data["y"], data["slice"]
    logits = {w: _logits(kit, w, x) for w in ("better", "serving")}
    right = {w: v.argmax(axis=1) == y for w, v in logits.items()}
    for name, mask in (("overall", np.ones(len(y), bool)), ("clean", condition == "clean"),
                       ("inverted", condition == "inverted")):
        group = _group(report, "heldout", name)
        assert group["rows"] == mask.sum()
        assert group["candidate"]["value"] == right["better"][mask].mean()
        assert group["serving"]["value"] == right["serving"][mask].mean()
        low, high = group["improvement"]["ci95"]
        assert low <= group["improvement"]["value"] <= high
    assert _group(report, "heldout", "inverted")["verdict"] == "better"  # the serving model never saw negatives
    assert _group(report, "recent", "overall")["verdict"] == "better"
    baseline = report["datasets"]["heldout"]["baseline"]
    assert baseline["value"] == np.bincount(y).max() / len(y)
    assert baseline["candidate_improvement"]["verdict"] == "better"
    scores = logits["better"].astype(np.float64)
    probs = np.exp(scores - scores.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    ece = report["checks"]["calibration"]["candidate"]["ece"]
    assert abs(ece - _ece_by_loop(probs.max(axis=1), right["better"], 10)) < 1e-9
    noise = report["checks"]["perturbation"]
    assert noise["passed"] and noise["candidate"]["count"] == len(y) and 0 <= noise["candidate"]["value"] <= 1
    json.dumps(report, allow_nan=False)


def test_a_candidate_worse_on_a_critical_slice_is_refused_naming_it_and_its_figures(kit):
    report = evaluate(kit.bundles["shifted"], kit.bundles["serving"], kit.heldout, None, trust=_trust(kit),
                      options=EvalOptions(critical_slices=("clean",)))
    clean = _group(report, "heldout", "clean")
    assert clean["critical"] and clean["verdict"] == "worse"
    assert _group(report, "heldout", "inverted")["verdict"] == "better"  # not critical: better does not save it
    decision = report["decision"]
    assert decision["refused"] and not decision["passed"] and not decision["forced"]
    low, high = clean["improvement"]["ci95"]
    assert (f"worse than the serving model on critical slice 'clean' of heldout (450 rows): accuracy "
            f"{clean['candidate']['value']:.3f} vs {clean['serving']['value']:.3f}, difference "
            f"{clean['improvement']['value']:+.3f} (95% interval {low:+.3f} to {high:+.3f})") in decision["reasons"][0]
    forced = evaluate(kit.bundles["shifted"], kit.bundles["serving"], kit.heldout, None, trust=_trust(kit),
                      options=EvalOptions(critical_slices=("clean",), force=True))["decision"]
    assert forced["refused"] and forced["forced"] and forced["passed"] and forced["reasons"] == decision["reasons"]


def test_an_accepted_drop_passes_a_small_loss_and_still_refuses_a_large_one(kit):
    strict = evaluate(kit.bundles["shifted"], kit.bundles["serving"], kit.heldout, None, trust=_trust(kit),
                      options=EvalOptions(critical_slices=("clean",)))
    low, high = _group(strict, "heldout", "clean")["improvement"]["ci95"]
    assert high < 0
    loose = evaluate(kit.bundles["shifted"], kit.bundles["serving"], kit.heldout, None, trust=_trust(kit),
                     options=EvalOptions(critical_slices=("clean",), max_drop=-low + 0.01))
    assert loose["max_drop"] == -low + 0.01 and _group(loose, "heldout", "clean")["verdict"] == "within noise"
    assert not any("critical slice 'clean'" in r for r in loose["decision"]["reasons"])
    tight = evaluate(kit.bundles["shifted"], kit.bundles["serving"], kit.heldout, None, trust=_trust(kit),
                     options=EvalOptions(critical_slices=("clean",), max_drop=-high / 2))
    assert _group(tight, "heldout", "clean")["verdict"] == "worse" and tight["decision"]["refused"]


def test_a_candidate_without_a_class_is_refused_on_that_class_as_a_user_named_slice(kit):
    report = evaluate(kit.bundles["no_three"], kit.bundles["serving"], kit.heldout, kit.recent, trust=_trust(kit),
                      options=EvalOptions(critical_slices=("3",), slice_keys=("digit",)))
    three = _group(report, "heldout", "3")
    assert three["candidate"]["value"] == 0.0 and three["verdict"] == "worse"
    assert sorted(report["datasets"]["heldout"]["slices"]) == [str(d) for d in range(10)]
    assert report["datasets"]["recent"]["slices"] == []  # the recent file has no digit column: whole file only
    assert report["decision"]["refused"]
    assert any("critical slice '3' of heldout" in r for r in report["decision"]["reasons"])


def test_recent_data_without_labels_is_compared_by_agreement(kit):
    report = evaluate(kit.bundles["better"], kit.bundles["serving"], kit.heldout, kit.recent_unlabelled,
                      trust=_trust(kit))
    recent = report["datasets"]["recent"]
    assert not recent["labelled"] and "groups" not in recent
    with np.load(kit.recent_unlabelled) as data:
        x = data["pixels"]
    same = (_logits(kit, "better", x).argmax(axis=1) == _logits(kit, "serving", x).argmax(axis=1)).mean()
    assert recent["agreement"][0]["same_answer"]["value"] == same


def test_an_invariance_declared_in_the_candidates_model_card_is_checked(kit, tmp_path):
    """Digits are not mirror images: a declared horizontal-flip invariance fails, named, with its figure."""
    root = kit.candidate("better", tmp_path)
    manifest = bundle_io.read_manifest(root)
    manifest["model_card"]["invariances"] = [{"name": "hflip", "transform": "flip", "axis": -1, "max_changed": 0.05}]
    bundle_io.write_manifest(root, manifest)
    bundle_io.sign(root, SigningKey.load(kit.private_key))
    report = evaluate(root, kit.bundles["serving"], kit.heldout, None, trust=_trust(kit))
    check = report["checks"]["invariance"][0]
    assert report["checks"]["declared_in"] == "the candidate bundle's model_card.invariances"
    with np.load(kit.heldout) as data:
        x = data["pixels"]
    with Predictor(root, trusted_keys=[kit.public_key]) as predictor:
        moved = (predictor.predict(x)["logits"].argmax(1) != predictor.predict(x[..., ::-1].copy())["logits"].argmax(1))
    assert check["candidate"]["value"] == moved.mean() and not check["passed"]
    assert report["decision"]["refused"]
    assert any(r.startswith("the candidate fails invariance 'hflip'") for r in report["decision"]["reasons"])
