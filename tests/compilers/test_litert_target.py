"""The litert target: the digits CNN converted with litert-torch, checked, signed, served by the Predictor.

Most tests need litert-torch, which lives in its own environment (scripts/check-litert runs them there);
in the main environment they are skipped and only the "not installed" message is checked.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from edgefleet.compilers.compile import compile_bundle
from edgefleet.core.bundle import Bundle
from edgefleet.core.errors import CompileError
from edgefleet.core.signing import SigningKey

HAS_CONVERTER = importlib.util.find_spec("litert_torch") is not None
needs_converter = pytest.mark.skipif(not HAS_CONVERTER, reason="litert-torch is not installed here "
                                     "(scripts/check-litert runs these tests in its own environment)")


@pytest.mark.skipif(HAS_CONVERTER, reason="litert-torch is installed here")
def test_without_the_converter_the_error_says_what_to_install(digits_bundle, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    with pytest.raises(CompileError, match=r"pip install 'edgefleet\[litert-convert\]'"):
        compile_bundle(digits_bundle.root, ["litert"], tmp_path / "out", torch_model=torch.nn.Identity())


def test_without_a_torch_model_the_error_names_the_flag(digits_bundle, tmp_path: Path) -> None:
    with pytest.raises(CompileError, match="pass --torch-model module:function"):
        compile_bundle(digits_bundle.root, ["litert"], tmp_path / "out")


def test_bad_options_are_refused(digits_bundle, tmp_path: Path) -> None:
    with pytest.raises(CompileError, match="unknown option"):
        compile_bundle(digits_bundle.root, ["litert"], tmp_path / "a", options={"litert": {"bogus": 1}})
    with pytest.raises(CompileError, match="precision must be fp32 or int8"):
        compile_bundle(digits_bundle.root, ["litert"], tmp_path / "b", options={"litert": {"precision": "fp16"}})


# --- with litert-torch --------------------------------------------------------------------------------


@needs_converter
def test_int8_without_calibration_data_is_refused(digits_model, digits_bundle, tmp_path: Path) -> None:
    with pytest.raises(CompileError, match="int8 needs calibration=PATH"):
        compile_bundle(digits_bundle.root, ["litert"], tmp_path / "out", torch_model=digits_model,
                       options={"litert": {"precision": "int8"}})
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def digits_model(digits_bundle):
    """The bundle's torch model, trained again with the fixture's recipe (training is deterministic on CPU)."""
    pytest.importorskip("litert_torch")
    import torch

    from edgefleet.cloud.digits import load_splits, train_digits_cnn

    model = train_digits_cnn(load_splits(), epochs=10, seed=0).eval()
    golden_in, golden_out, _ = Bundle.open(digits_bundle.root).golden()
    with torch.no_grad():
        again = model(torch.from_numpy(golden_in["pixels"])).numpy()
    assert np.allclose(again, golden_out["logits"], atol=1e-4), "retraining did not reproduce the bundle's model"
    return model


@pytest.fixture(scope="module")
def compiled(digits_bundle, digits_model, digits_splits, tmp_path_factory):
    """The digits bundle compiled for litert fp32 and int8 (calibrated on 256 training rows), signed."""
    work = tmp_path_factory.mktemp("litert")
    key = SigningKey.load(digits_bundle.private_key)
    np.save(work / "calibration.npy", digits_splits.x_train[:256])
    fp32 = compile_bundle(digits_bundle.root, ["litert"], work / "fp32", torch_model=digits_model, signing_key=key,
                          options={"litert": {"threads": 1}})
    int8 = compile_bundle(digits_bundle.root, ["litert"], work / "int8", torch_model=digits_model, signing_key=key,
                          options={"litert": {"precision": "int8", "calibration": str(work / "calibration.npy")}})
    return {"fp32": fp32, "int8": int8}


def _predictions(bundle: Bundle, backend: str, key: Path, x: np.ndarray) -> tuple[np.ndarray, object]:
    from edgefleet.edge_runtime.predictor import Predictor

    with Predictor(bundle, backends=[backend], trusted_keys=[key]) as predictor:
        assert predictor.backend_name == backend and not predictor.fallbacks
        report = predictor.self_test()
        logits = predictor.predict({"pixels": x})["logits"]
    return logits, report


@needs_converter
def test_fp32_artifact_entry_is_checked_and_recorded(compiled, digits_bundle) -> None:
    result = compiled["fp32"]
    bundle = result.bundle
    bundle.verify(_trust(digits_bundle))
    entry = next(a for a in bundle.artifacts if a["target"] == "litert")
    assert entry["backend"] == "litert" and entry["format"] == "tflite" and entry["path"] == "litert/model.tflite"
    assert entry["precision"] == "fp32" and entry["device"] == "cpu" and entry["batch"] == 1
    assert entry["options"] == {"threads": 1}
    assert entry["compile"]["litert_torch"] and entry["compile"]["precision"] == "fp32"
    error = entry["numeric_error"]
    assert error["checked"] and error["checked_with"] == "litert" and error["samples"] == 8
    assert error["max_abs"] < 1e-4 and error["atol"] == 1e-4  # the bundle's own tolerance
    assert entry["sha256"] == bundle.manifest["files"]["litert/model.tflite"]["sha256"]
    step = [s for s in bundle.manifest["lineage"]["steps"] if s["stage"] == "compile"][-1]
    assert step["target"] == "litert" and step["numeric_error"] == error


@needs_converter
def test_fp32_serves_through_the_predictor_and_agrees_with_onnxruntime(compiled, digits_bundle, digits_splits) -> None:
    bundle, x = compiled["fp32"].bundle, digits_splits.x_test
    litert, report = _predictions(bundle, "litert", digits_bundle.public_key, x)
    assert report.passed, report.failures
    reference, _ = _predictions(bundle, "onnxruntime", digits_bundle.public_key, x)
    assert litert.shape == reference.shape == (len(x), 10)
    np.testing.assert_allclose(litert, reference, atol=1e-4, rtol=1e-3)
    assert (litert.argmax(1) == reference.argmax(1)).all()


@needs_converter
def test_int8_is_small_and_keeps_accuracy(compiled, digits_bundle, digits_splits) -> None:
    fp32_bundle, int8_bundle = compiled["fp32"].bundle, compiled["int8"].bundle
    entry = next(a for a in int8_bundle.artifacts if a["target"] == "litert")
    fp32_entry = next(a for a in fp32_bundle.artifacts if a["target"] == "litert")
    assert entry["precision"] == "int8" and entry["numeric_error"]["checked"]
    assert entry["compile"]["calibration"]["rows"] == 256
    assert entry["size"] < 0.5 * fp32_entry["size"]
    # measured on the digits CNN: max abs logit error ~0.2 at logits up to ~17; the check allows 5% of that
    assert entry["numeric_error"]["max_abs"] < entry["numeric_error"]["atol"] < 1.0
    x, y = digits_splits.x_test, digits_splits.y_test
    int8_logits, report = _predictions(int8_bundle, "litert", digits_bundle.public_key, x)
    fp32_logits, _ = _predictions(fp32_bundle, "onnxruntime", digits_bundle.public_key, x)
    accuracy_int8 = float((int8_logits.argmax(1) == y).mean())
    accuracy_fp32 = float((fp32_logits.argmax(1) == y).mean())
    # measured: 97.3% fp32 -> 97.3-97.6% int8, 99.3-99.8% of predictions unchanged
    assert accuracy_int8 >= accuracy_fp32 - 0.01
    assert float((int8_logits.argmax(1) == fp32_logits.argmax(1)).mean()) >= 0.98
    assert float(np.abs(int8_logits - fp32_logits).max()) < 0.5
    # the self-test allows the int8 artifact's own checked tolerance (numeric_error.atol), not the fp32 one
    assert report.passed, report.failures


def _trust(digits_bundle):
    from edgefleet.core.signing import TrustStore

    return TrustStore.from_paths([digits_bundle.public_key])


@needs_converter
def test_the_cli_compiles_from_a_torch_model_factory(digits_model, digits_bundle, tmp_path: Path) -> None:
    import torch

    from tests.cli.test_bundle_commands import edgefleet

    torch.save(digits_model.state_dict(), tmp_path / "model.pt")  # what examples.digits_model:load reads
    project = Path(__file__).resolve().parents[2]
    result = edgefleet("compile", str(digits_bundle.root), "--target", "litert", "--torch-model",
                       "examples.digits_model:load", "--key", str(digits_bundle.private_key), "--out",
                       str(tmp_path / "out"), env={"EDGEFLEET_DIGITS_WEIGHTS": str(tmp_path / "model.pt")},
                       cwd=project)
    assert result.returncode == 0, result.stderr
    assert "litert/model.tflite" in result.stdout and "compiled bundle:" in result.stdout
    entry = next(a for a in Bundle.open(tmp_path / "out").artifacts if a["target"] == "litert")
    assert entry["numeric_error"]["checked"] and entry["numeric_error"]["max_abs"] < 1e-4
