"""Offline evaluation of a regression model: scikit-learn's diabetes data (real, bundled), an MLP, and a
candidate trained on targets shifted by +25 (a biased model) that must be refused on mean absolute error;
figures held against the edge Predictor's outputs."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.cloud.loop.offline_eval import EvalOptions, evaluate
from edgefleet.core.signing import SigningKey, TrustStore
from edgefleet.edge_runtime.predictor import Predictor
from tests.cloud.loop.diabetes_kit import diabetes_split, export_diabetes

SHIFT = 25.0


@pytest.fixture(scope="module")
def diabetes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("diabetes")
    x_train, x_test, y_train, y_test = diabetes_split()
    key = SigningKey.generate()
    _, public = key.save(folder / "keys", "release")
    roots = {which: export_diabetes(x_train, targets, folder / which, version, key)
             for version, (which, targets) in enumerate((("serving", y_train), ("biased", y_train + SHIFT)), start=1)}
    sex = np.where(x_test[:, 1] > 0, "m", "f")  # the data's second column: two values
    np.savez(folder / "heldout.npz", features=x_test, y=y_test, slice=sex)
    return roots, public, folder / "heldout.npz"


def test_a_biased_regression_candidate_is_refused_on_mean_absolute_error(diabetes):
    roots, public, heldout = diabetes
    report = evaluate(roots["biased"], roots["serving"], heldout, None, trust=TrustStore.from_paths([public]),
                      options=EvalOptions(critical_slices=("m",)))
    assert report["metric"] == "mean_absolute_error" and "calibration" not in report["checks"]
    with np.load(heldout) as data:
        x, y, sex = data["features"], data["y"], data["slice"]
    errors = {}
    for which in ("biased", "serving"):
        with Predictor(roots[which], trusted_keys=[public]) as predictor:
            errors[which] = np.abs(predictor.predict(x)["progression"][:, 0].astype(np.float64) - y)
    overall = report["datasets"]["heldout"]["groups"][0]
    assert overall["slice"] == "overall"
    assert overall["candidate"]["value"] == pytest.approx(errors["biased"].mean(), rel=1e-12)
    assert overall["serving"]["value"] == pytest.approx(errors["serving"].mean(), rel=1e-12)
    assert overall["improvement"]["value"] == pytest.approx(errors["serving"].mean() - errors["biased"].mean())
    assert overall["verdict"] == "worse"
    male = next(g for g in report["datasets"]["heldout"]["groups"] if g["slice"] == "m")
    assert male["rows"] == (sex == "m").sum()
    baseline = report["datasets"]["heldout"]["baseline"]
    assert baseline["name"] == "mean" and baseline["value"] == pytest.approx(np.abs(y.mean() - y).mean())
    assert report["checks"]["perturbation"]["tolerance"] == pytest.approx(0.1 * y.std(), rel=1e-6)
    reasons = report["decision"]["reasons"]
    assert report["decision"]["refused"]
    assert (f"worse than the serving model on the whole data of heldout ({len(y)} rows): mean absolute error "
            f"{overall['candidate']['value']:.3f} vs {overall['serving']['value']:.3f}") in reasons[0]


def test_the_serving_model_against_itself_is_within_noise_and_passes(diabetes):
    roots, public, heldout = diabetes
    report = evaluate(roots["serving"], roots["serving"], heldout, None, trust=TrustStore.from_paths([public]))
    overall = report["datasets"]["heldout"]["groups"][0]
    assert overall["improvement"]["value"] == 0.0 and overall["verdict"] == "within noise"
    assert report["datasets"]["heldout"]["baseline"]["candidate_improvement"]["verdict"] == "better"
    assert report["decision"]["passed"] and not report["decision"]["refused"]
