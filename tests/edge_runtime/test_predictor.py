"""The Predictor on a real exported bundle with real onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from edgefleet.core.bundle import Bundle, sign, write_manifest
from edgefleet.core.decision import margins
from edgefleet.core.errors import BackendError, SchemaError, VerificationError
from edgefleet.core.signing import SigningKey
from edgefleet.edge_runtime import Predictor


@pytest.fixture
def predictor(digits_bundle):
    with Predictor(digits_bundle.root, trusted_keys=[digits_bundle.public_key]) as p:
        yield p


def test_predict_matches_bare_onnxruntime(predictor, digits_splits):
    session = ort.InferenceSession(str(predictor.artifact_path), providers=["CPUExecutionProvider"])
    for batch in (1, 7, 64):
        x = digits_splits.x_test[:batch]
        np.testing.assert_array_equal(predictor.predict(x)["logits"], session.run(None, {"pixels": x})[0])
    assert predictor.backend_name == "onnxruntime" and predictor.fallbacks == []


def test_accuracy_on_held_out_digits(predictor, digits_splits):
    predicted = predictor.predict(digits_splits.x_test)["logits"].argmax(axis=1)
    assert (predicted == digits_splits.y_test).mean() > 0.9


def test_self_test_passes(predictor):
    report = predictor.self_test()
    assert report.passed and report.examples == 8 and report.failures == []
    assert report.max_abs_error < 1e-4


def test_self_test_catches_wrong_golden_outputs(bundle_copy, digits_bundle):
    with np.load(bundle_copy / "golden.npz") as data:
        arrays = dict(data)
    arrays["outputs/logits"] = arrays["outputs/logits"] + 0.5
    np.savez(bundle_copy / "golden.npz", **arrays)
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    write_manifest(bundle_copy, manifest)
    sign(bundle_copy, SigningKey.load(digits_bundle.private_key))
    report = Predictor(bundle_copy, trusted_keys=[digits_bundle.public_key]).self_test()
    assert not report.passed
    assert report.failures[0].startswith("logits (batch): max abs error 0.5")


def test_bad_requests_are_refused_and_serving_goes_on(predictor, digits_splits):
    with pytest.raises(SchemaError, match=r"input 'pixels': expected float32\[batch, 1, 8, 8\], got float64"):
        predictor.predict(digits_splits.x_test[:2].astype(np.float64))
    with pytest.raises(SchemaError, match="axis 2 must be 8"):
        predictor.predict(np.zeros((2, 1, 7, 8), np.float32))
    unknown = r"input 'pixels'.*\(missing\), got nothing \(the request has unknown inputs \['image'\]\)"
    with pytest.raises(SchemaError, match=unknown):
        predictor.predict({"image": digits_splits.x_test[:2]})
    assert predictor.predict(digits_splits.x_test[:2])["logits"].shape == (2, 10)


def test_refuses_without_trusted_keys(digits_bundle):
    with pytest.raises(VerificationError, match="no trusted keys given") as caught:
        Predictor(digits_bundle.root)
    assert caught.value.reason == "no_trusted_keys"


def test_refuses_tampered_bundle(bundle_copy, digits_bundle):
    (bundle_copy / "model.onnx").write_bytes(b"\0" + (bundle_copy / "model.onnx").read_bytes()[1:])
    with pytest.raises(VerificationError, match="model.onnx has sha256"):
        Predictor(bundle_copy, trusted_keys=[digits_bundle.public_key])


def test_loads_from_archive(digits_bundle, tmp_path):
    archive = Bundle.open(digits_bundle.root).pack(tmp_path / "digits.tar.gz")
    with Predictor(archive, trusted_keys=[digits_bundle.public_key], threads=1) as p:
        assert p.self_test().passed


def test_unknown_backend_fails_up_front(digits_bundle):
    with pytest.raises(BackendError, match="unknown backend 'tensorflow': not a backend .*onnxruntime.* nor a target"):
        Predictor(digits_bundle.root, backends=["onnxruntime", "tensorflow"], trusted_keys=[digits_bundle.public_key])


def test_no_runnable_artifact_names_every_reason(bundle_copy, digits_bundle):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["artifacts"][0]["format"] = "tflite"
    write_manifest(bundle_copy, manifest)
    sign(bundle_copy, SigningKey.load(digits_bundle.private_key))
    with pytest.raises(BackendError, match=r"onnxruntime: bundle has no artifact in a format it runs \(onnx, ort\)"):
        Predictor(bundle_copy, trusted_keys=[digits_bundle.public_key])


def test_self_test_reports_the_golden_decisions(predictor):
    report = predictor.self_test()
    # a float bundle: the tie margin is twice its atol, every golden digit is decisive
    assert report.decisions == {"compared": 8, "agreed": 8, "near_ties": 0, "tie_margin": 2e-4}


def test_self_test_refuses_an_int8_model_that_flips_a_golden_top1_inside_the_tolerance(digits_bundle, digits_splits,
                                                                                       tmp_path):
    from tests.cloud.compress import decision_kit

    key = SigningKey.load(digits_bundle.private_key)
    int8 = decision_kit.quantize(digits_bundle.root, tmp_path / "int8", digits_splits.x_train, key)
    with Predictor(int8.root, trusted_keys=[digits_bundle.public_key]) as predictor:
        assert predictor.self_test().passed  # the real int8 model keeps every golden decision
    flipped = decision_kit.flip_one_golden(int8, tmp_path / "flipped", key)
    with Predictor(flipped["root"], trusted_keys=[digits_bundle.public_key]) as predictor:
        report = predictor.self_test()
    assert not report.passed and report.max_abs_error < report.tolerance["atol"]  # numerically it would pass
    assert report.decisions["compared"] == 8 and report.decisions["agreed"] == 7
    assert report.failures == [
        f"logits: top-1 changed on 1 of 8 decisive golden examples (example {flipped['example']}: "
        f"'{flipped['source_class']}' became '{flipped['new_class']}', source margin "
        f"{margins(int8.golden()[1]['logits'])[flipped['example']]:.3g})"]
