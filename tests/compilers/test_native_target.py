"""The native target end to end: real exported models (digits CNN, a small MLP) and their static int8
QDQ versions, compiled to .efg, served by the Predictor with the native backend, compared with
onnxruntime and the torch golden outputs; refusals at compile time and at load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgefleet.cloud.compress.quantize import quantize_static_int8
from edgefleet.compilers import export_torch
from edgefleet.compilers.compile import compile_bundle
from edgefleet.compilers.targets.native import onnx_to_graph
from edgefleet.core.bundle import Bundle
from edgefleet.core.errors import BackendError, CompileError
from edgefleet.core.signing import SigningKey
from edgefleet.edge_runtime.backends.native import NativeBackend
from edgefleet.edge_runtime.predictor import Predictor


def onnx_outputs(bundle: Bundle, x: np.ndarray) -> np.ndarray:
    artifact = next(a for a in bundle.artifacts if a["format"] == "onnx")
    session = ort.InferenceSession(str(bundle.path(artifact["path"])), providers=["CPUExecutionProvider"])
    return session.run(None, {bundle.inputs[0].name: x})[0]


def compile_and_predict(source: Path, out: Path, public_key: Path, key: SigningKey, x: np.ndarray):
    result = compile_bundle(source, ["native"], out, signing_key=key)
    (compiled,) = result.compiled
    assert compiled.checked and compiled.artifact["format"] == "edgefleet-graph"
    with Predictor(out, backends=["native"], trusted_keys=[public_key]) as predictor:
        assert predictor.backend_name == "native" and predictor.self_test().passed
        got = np.concatenate([predictor.predict(x[i:i + 1])["logits"] for i in range(len(x))])
        batch = predictor.predict(x)["logits"]
    return compiled.artifact, got, batch


@pytest.fixture(scope="module")
def digits_int8(digits_bundle, digits_splits, tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = SigningKey.load(digits_bundle.private_key)
    out = tmp_path_factory.mktemp("digits-int8") / "bundle"
    return quantize_static_int8(digits_bundle.root, out, digits_splits.x_train[:256], signing_key=key).bundle.root


def test_digits_fp32_matches_onnxruntime(digits_bundle, digits_splits, tmp_path: Path) -> None:
    key = SigningKey.load(digits_bundle.private_key)
    x = digits_splits.x_test[:64]
    artifact, got, batch = compile_and_predict(digits_bundle.root, tmp_path / "out", digits_bundle.public_key, key, x)
    assert artifact["precision"] == "fp32" and artifact["compile"]["fused"] == {"Conv+Relu": 2}
    want = onnx_outputs(Bundle.open(digits_bundle.root), x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(batch, want, rtol=1e-5, atol=1e-5)


def test_digits_int8_runs_integer_kernels(digits_bundle, digits_splits, digits_int8: Path, tmp_path: Path) -> None:
    key = SigningKey.load(digits_bundle.private_key)
    x = digits_splits.x_test[:64]
    artifact, got, _ = compile_and_predict(digits_int8, tmp_path / "out", digits_bundle.public_key, key, x)
    assert artifact["precision"] == "int8"
    assert artifact["compile"]["ops"] == {"DequantizeLinear": 1, "MaxPool": 2, "QConv": 2, "QGemm": 1,
                                          "QuantizeLinear": 1, "Reshape": 1}  # no float Conv or Gemm left
    want = onnx_outputs(Bundle.open(digits_int8), x)
    scale = float(np.abs(want).max()) / 127
    assert np.abs(got - want).max() <= scale  # ONNX Runtime's integer kernels: within one step (equal here)
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.98


def test_mlp_fp32_and_int8(digits_bundle, tmp_path: Path) -> None:
    key = SigningKey.load(digits_bundle.private_key)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(30, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, 2)).eval()
    x = np.random.default_rng(0).standard_normal((128, 30)).astype(np.float32)
    bundle = export_torch(model, x[:4], tmp_path / "mlp", name="mlp", version=1, reference_data=x,
                          input_names=["features"], output_names=["logits"], signing_key=key)
    artifact, got, _ = compile_and_predict(bundle.root, tmp_path / "mlp-native", digits_bundle.public_key, key, x)
    assert artifact["compile"]["fused"] == {"Gemm+Relu": 2}
    with torch.no_grad():
        np.testing.assert_allclose(got, model(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-5)
    int8 = quantize_static_int8(bundle.root, tmp_path / "mlp-int8", x, signing_key=key).bundle
    artifact, got, _ = compile_and_predict(int8.root, tmp_path / "mlp-int8-native", digits_bundle.public_key, key, x)
    assert artifact["compile"]["ops"]["QGemm"] == 3 and "Gemm" not in artifact["compile"]["ops"]
    want = onnx_outputs(int8, x)
    assert np.abs(got - want).max() <= float(np.abs(want).max()) / 127


def test_unsupported_ops_refused_at_compile_time_with_names() -> None:
    helper = onnx.helper
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="ok"), helper.make_node("Sin", ["a"], ["b"], name="sine"),
             helper.make_node("LpNormalization", ["b"], ["y"], name="norm")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, ["n", 4])],
                              [helper.make_tensor_value_info("y", 1, ["n", 4])])
    with pytest.raises(CompileError, match=r"Sin \(node 'sine'\).*LpNormalization \(node 'norm'\)"):
        onnx_to_graph(helper.make_model(graph))
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="conv3d")
    graph = helper.make_graph([conv], "g", [helper.make_tensor_value_info("x", 1, [1, 2, 8, 8, 8])],
                              [helper.make_tensor_value_info("y", 1, [1, 3, 6, 6, 6])],
                              [onnx.numpy_helper.from_array(np.ones((3, 2, 3, 3, 3), np.float32), "w")])
    with pytest.raises(CompileError, match=r"Conv \(node 'conv3d'\): only 1-D \(NCW\) and 2-D"):
        onnx_to_graph(helper.make_model(graph))


def test_damaged_artifact_refused_at_load(digits_bundle, tmp_path: Path) -> None:
    compiled = compile_bundle(digits_bundle.root, ["native"], tmp_path / "out").bundle
    path = compiled.path(next(a for a in compiled.artifacts if a["backend"] == "native")["path"])
    data = path.read_bytes()
    for name, damaged in (("truncated", data[: len(data) // 2]), ("magic", b"XXXXXXXX" + data[8:]),
                          ("header", data[:20] + b"\xff\xfe" + data[22:]), ("empty", b"")):
        broken = tmp_path / f"{name}.efg"
        broken.write_bytes(damaged)
        with pytest.raises(BackendError, match="native: cannot load"):
            NativeBackend().load(broken, {})
