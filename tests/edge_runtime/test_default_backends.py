"""Which backend runs a bundle when nobody names one (edge_runtime/backends, default_backends): the
bundle's own artifacts decide, so a device given a TFLite-only bundle serves it with litert and an ONNX
bundle still runs on onnxruntime first."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgefleet.core.bundle import Bundle
from edgefleet.core.errors import BackendError, EdgefleetError
from edgefleet.edge_runtime.backends import default_backends
from edgefleet.edge_runtime.device_config import DeviceConfig
from tests.edge_runtime.test_agent import http
from tests.mosquitto import free_port

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tflite"


def manifest_with(*artifacts: dict) -> Bundle:
    return Bundle(Path("."), {"name": "m", "version": 3, "artifacts": list(artifacts)})


def test_onnx_first_then_each_cpu_artifact_backend_in_manifest_order():
    bundle = manifest_with(
        {"target": "litert", "backend": "litert", "format": "tflite", "device": "cpu"},
        {"target": "openvino-npu", "backend": "openvino", "format": "openvino-ir", "device": "npu"},
        {"target": "onnx", "backend": "onnxruntime", "format": "onnx"},
        {"target": "native", "backend": "native", "format": "edgefleet-graph", "device": "cpu"},
        {"target": "litert-int8", "backend": "litert", "format": "tflite", "device": "cpu"},
        {"target": "tensorrt", "backend": "tensorrt", "format": "onnx+tensorrt-build", "device": "gpu"},
    )
    # onnxruntime for the ONNX artifact first; the NPU and GPU artifacts run only when their target is named
    assert default_backends(bundle) == ["onnxruntime", "litert", "native"]


def test_digits_bundle_defaults_to_onnxruntime(digits_bundle):
    assert default_backends(Bundle.open(digits_bundle.root))[0] == "onnxruntime"


@pytest.mark.parametrize("artifacts", [
    [], "not a list", [7, {"backend": "tensorrt", "device": "gpu", "target": "tensorrt"}],
    [{"backend": "onnxruntime", "format": "onnx", "device": "gpu", "target": "onnxruntime-gpu"}],
])
def test_a_bundle_without_a_cpu_artifact_of_a_known_backend_is_one_clear_error(artifacts):
    bundle = Bundle(Path("."), {"name": "m", "version": 3, "artifacts": artifacts})
    with pytest.raises(BackendError, match=r"bundle m v3 has no CPU artifact that a backend of this runtime runs"):
        default_backends(bundle)


def test_device_config_backends_must_be_a_list_of_names(tmp_path):
    base = {"device": {"id": "pi-01"}, "model": {"bundle": "b", "trusted_keys": ["k.pub"]}}
    assert DeviceConfig.from_dict(base, base=tmp_path).backends == ()  # none named: the bundle's own order
    named = DeviceConfig.from_dict({**base, "model": {**base["model"], "backends": ["litert", "onnxruntime"]}})
    assert named.backends == ("litert", "onnxruntime")
    with pytest.raises(EdgefleetError, match="model.backends must be a list of backend or target names"):
        DeviceConfig.from_dict({**base, "model": {**base["model"], "backends": "onnxruntime"}})


@pytest.fixture(scope="module")
def tflite_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Bundle, Path]:
    """cnn_float.tflite imported with reference data (the agent's telemetry needs its drift profile) and
    signed: its only artifact is LiteRT's."""
    pytest.importorskip("ai_edge_litert")
    from edgefleet.compilers.import_model import import_model
    from edgefleet.core.signing import SigningKey

    folder = tmp_path_factory.mktemp("tflite-default")
    key = SigningKey.generate()
    _, public = key.save(folder / "keys", "test")
    with np.load(FIXTURES / "reference.npz") as reference:
        np.savez(folder / "data.npz", pixels=reference["pixels"])
    bundle = import_model(FIXTURES / "cnn_float.tflite", folder / "bundle", name="cnn", version=1, signing_key=key,
                          reference_data=folder / "data.npz")
    return bundle, public


def test_a_device_serves_a_tflite_only_bundle_with_litert_without_configuration(tflite_bundle, tmp_path):
    from edgefleet.edge_runtime.agent import DeviceAgent

    bundle, public = tflite_bundle
    assert default_backends(bundle) == ["litert"]
    path = tmp_path / "device.toml"
    path.write_text(f"""
[device]
id = "pi-02"
data_dir = "{tmp_path / 'device'}"
[model]
bundle = "{bundle.root}"
trusted_keys = ["{public}"]
threads = 1
[http]
port = {free_port()}
""")
    with np.load(FIXTURES / "reference.npz") as reference:
        pixels, want = reference["pixels"], reference["float_logits"]
    with DeviceAgent(DeviceConfig.load(path)) as agent:  # no backends in device.toml
        assert agent.predictor.backend_name == "litert" and agent.predictor.fallbacks == []
        np.testing.assert_allclose(agent.predict(pixels)["logits"], want, rtol=1e-5, atol=1e-5)
        status, body = http("POST", agent.http_url + "/v1/predict", json.dumps({"inputs": pixels.tolist()}).encode())
        assert status == 200, body


def test_a_predictor_without_backends_runs_the_bundles_own_artifact(tflite_bundle, digits_bundle):
    """Predictor(bundle) with no backends follows the same order: litert for a TFLite-only bundle,
    onnxruntime for the digits bundle, and the answer equals the reference interpreter's."""
    from edgefleet.edge_runtime.predictor import Predictor

    bundle, public = tflite_bundle
    with np.load(FIXTURES / "reference.npz") as reference:
        pixels, want = reference["pixels"], reference["float_logits"]
    with Predictor(bundle.root, trusted_keys=[public]) as predictor:
        assert predictor.backend_name == "litert"
        got = predictor.predict({bundle.inputs[0].name: pixels})
        np.testing.assert_allclose(next(iter(got.values())), want, atol=1e-5)
        assert predictor.self_test().passed
    with Predictor(digits_bundle.root, trusted_keys=[digits_bundle.public_key]) as predictor:
        assert predictor.backend_name == "onnxruntime"
