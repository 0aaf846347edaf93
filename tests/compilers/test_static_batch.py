"""The batch-axis loose ends: an export whose example holds a 0-d scalar (a sample rate), and model files
with a static batch imported with more reference rows than that batch (core/schema.py batch_axis)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from edgefleet.compilers.compile import compile_bundle
from edgefleet.compilers.export import export_torch
from edgefleet.compilers.import_model import import_model
from edgefleet.core.bundle import Bundle
from edgefleet.core.errors import CompileError
from edgefleet.core.signing import SigningKey, TrustStore
from edgefleet.edge_runtime.backends.onnxruntime import OnnxRuntimeBackend
from edgefleet.edge_runtime.predictor import Predictor
from tests.compilers.import_kit import PooledMobileNet, RecurrentStep, export

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tflite"


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


class RateScaled(torch.nn.Module):
    """Features scaled by a sample rate given as a 0-d tensor (one value for every sample of a request)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))

    def forward(self, x: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
        return self.net(x * (rate / 16000.0))


def test_export_with_a_0d_example_input_has_no_batch_axis_for_it_and_verifies_predicts_self_tests(tmp_path, key):
    torch.manual_seed(0)
    model = RateScaled().eval()
    bundle = export_torch(model, (torch.randn(6, 4), torch.tensor(16000.0)), tmp_path / "b", name="rate", version=1,
                          input_names=["x", "rate"], output_names=["y"], task="regression", signing_key=key)
    assert [s.shape for s in bundle.inputs] == [("batch", 4), ()]
    Bundle.open(bundle.root).verify(TrustStore([key.public_key]))
    assert bundle.manifest["golden"]["count"] == 6
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x), torch.tensor(8000.0)).numpy()
    with Predictor(bundle.root, trusted_keys=TrustStore([key.public_key])) as predictor:
        got = predictor.predict({"x": x, "rate": np.array(8000.0, np.float32)})["y"]
        report = predictor.self_test()
    assert np.allclose(got, want, atol=1e-5), np.abs(got - want).max()
    assert not np.allclose(got, model(torch.from_numpy(x), torch.tensor(16000.0)).detach().numpy(), atol=1e-3)
    assert report.passed, report.failures


# --- static-batch files imported with more reference rows than their batch -------------------------------
@pytest.fixture(scope="module")
def static_cnn(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A MobileNetV2-style CNN (the pooled form native runs) exported with a fixed batch of 1 (no dynamic
    axis), and 8 reference rows."""
    work = tmp_path_factory.mktemp("static")
    torch.manual_seed(0)
    path = export(PooledMobileNet(), (torch.randn(1, 3, 32, 32),), work / "cnn-b1.onnx", ["image"], ["logits"], None)
    rows = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    return path, rows


def _file_rows(path: Path, rows: np.ndarray) -> np.ndarray:
    """The file run one row at a time by a bare onnxruntime session (all it takes)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"image": rows[i:i + 1]})[0] for i in range(len(rows))])


def test_a_batch_1_onnx_file_imports_with_8_rows_and_serves_any_count(static_cnn, key, tmp_path):
    path, rows = static_cnn
    bundle = import_model(path, tmp_path / "b", name="cnn-b1", version=1, reference_data={"image": rows},
                          signing_key=key)
    assert [s.shape for s in bundle.inputs] == [("batch", 3, 32, 32)] and bundle.artifacts[0]["batch"] == 1
    Bundle.open(bundle.root).verify(TrustStore([key.public_key]))
    golden_in, golden_out, _ = bundle.golden()
    assert golden_in["image"].shape == (8, 3, 32, 32)
    assert np.allclose(golden_out["logits"], _file_rows(path, rows), atol=1e-6)  # computed one row at a time
    trust = TrustStore([key.public_key])
    fresh = np.random.default_rng(1).standard_normal((5, 3, 32, 32)).astype(np.float32)
    with Predictor(bundle.root, trusted_keys=trust) as predictor:
        assert predictor.backend_name == "onnxruntime" and predictor._backend.batch == 1
        assert np.allclose(predictor.predict(fresh)["logits"], _file_rows(path, fresh), atol=1e-5)
        assert predictor.self_test().passed

    targets = ["onnxruntime-cpu", "openvino-cpu", "native"]
    result = compile_bundle(bundle.root, targets, tmp_path / "c", signing_key=key)
    assert not result.refused, result.refused
    for item in result.compiled:
        assert item.artifact["batch"] == 1 and item.artifact["numeric_error"]["samples"] == 8, item.artifact
        with Predictor(result.bundle.root, backends=[item.target], trusted_keys=trust) as predictor:
            got = predictor.predict(fresh)["logits"]
            assert predictor.self_test().passed, item.target
        assert np.allclose(got, _file_rows(path, fresh), atol=1e-4), (item.target, np.abs(got).max())


@pytest.mark.parametrize("fixture", ["cnn_float", "cnn_nosig"])
def test_a_batch_1_tflite_imports_with_8_rows(key, tmp_path, fixture):
    with np.load(FIXTURES / "reference.npz") as data:
        pixels, want = data["pixels"], data["float_logits"]
    rows = np.concatenate([pixels, pixels[:3]])
    name = "pixels" if fixture == "cnn_float" else "serving_default_pixels"
    bundle = import_model(FIXTURES / f"{fixture}.tflite", tmp_path / "b", name="cnn", version=1,
                          reference_data={name: rows}, signing_key=key)
    _, golden_out, _ = bundle.golden()
    assert golden_out[bundle.outputs[0].name].shape == (8, 10)
    assert np.allclose(golden_out[bundle.outputs[0].name][:5], want, atol=1e-5)
    with Predictor(bundle.root, trusted_keys=TrustStore([key.public_key])) as predictor:
        assert predictor.backend_name == "litert"
        assert np.allclose(predictor.predict({name: rows})[bundle.outputs[0].name][5:], want[:3], atol=1e-5)
        assert predictor.self_test().passed


# --- a static batch on axis 1 (a recurrent layout [steps, batch, features]) ---------------------------------
def test_openvino_batch_option_fixes_the_schema_batch_axis_and_chunks_on_it(key, tmp_path):
    pytest.importorskip("openvino")
    torch.manual_seed(0)
    model = RecurrentStep().eval()
    axes = {"x": {0: None, 1: "batch"}, "state": {0: None, 1: "batch"}}
    bundle = export_torch(model, (torch.randn(5, 3, 8), torch.randn(2, 3, 16)), tmp_path / "b", name="gru",
                          version=1, input_names=["x", "state"], output_names=["y", "next_state"], dynamic_axes=axes,
                          signing_key=key)
    result = compile_bundle(bundle.root, ["openvino-cpu"], tmp_path / "c", options={"openvino-cpu": {"batch": 1}},
                            signing_key=key)
    entry = result.compiled[0].artifact
    assert entry["batch"] == 1 and entry["options"]["batch_axes"] == {"x": 1, "state": 1, "y": 1, "next_state": 1}
    import openvino as ov

    ir = ov.Core().read_model(str(result.bundle.path(entry["path"])))
    assert sorted(str(p.get_partial_shape()) for p in ir.inputs) == ["[2,1,16]", "[5,1,8]"]  # steps kept, batch 1
    x, state = torch.randn(5, 4, 8), torch.randn(2, 4, 16)
    with torch.no_grad():
        want_y, want_state = model(x, state)
    with Predictor(result.bundle.root, backends=["openvino-cpu"], trusted_keys=TrustStore([key.public_key])) as p:
        got = p.predict({"x": x.numpy(), "state": state.numpy()})  # 4 samples through a batch-1 IR, on axis 1
        assert p.self_test().passed
    assert np.allclose(got["y"], want_y.numpy(), atol=1e-4) and np.allclose(got["next_state"], want_state.numpy(),
                                                                            atol=1e-4)


def test_onnxruntime_backend_chunks_a_static_file_on_the_batch_axes_it_is_given(tmp_path):
    torch.manual_seed(0)
    model = RecurrentStep().eval()
    path = export(model, (torch.randn(5, 1, 8), torch.randn(2, 1, 16)), tmp_path / "gru-b1.onnx", ["x", "state"],
                  ["y", "next_state"], None)
    x, state = torch.randn(5, 3, 8), torch.randn(2, 3, 16)
    with torch.no_grad():
        want_y, want_state = model(x, state)
    backend = OnnxRuntimeBackend()
    backend.load(path, {"batch_axes": {"x": 1, "state": 1, "y": 1, "next_state": 1}})
    got = backend.run({"x": x.numpy(), "state": state.numpy()})
    assert backend.batch == 1
    assert np.allclose(got["y"], want_y.numpy(), atol=1e-5) and np.allclose(got["next_state"], want_state.numpy(),
                                                                            atol=1e-5)
    plain = OnnxRuntimeBackend()
    plain.load(path, {})  # axis 0 would be the steps and the layers: no common static batch, nothing chunked
    assert plain.batch is None


def test_litert_backend_chunks_a_static_file_on_the_batch_axes_it_is_given(tmp_path):
    pytest.importorskip("ai_edge_litert")
    from edgefleet.edge_runtime.backends.litert import LiteRtBackend
    from tests.compilers.test_import_tflite import add_model

    path = add_model(tmp_path / "add.tflite", ("a", "b", "sum"), [3, 1, 4])  # [steps, batch 1, features]
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((3, 5, 4)).astype(np.float32) for _ in range(2))
    backend = LiteRtBackend()
    backend.load(path, {"batch_axes": {"a": 1, "b": 1, "sum": 1}})
    assert backend.batch == 1
    assert np.array_equal(backend.run({"a": a, "b": b})["sum"], a + b)  # 5 samples on axis 1, one at a time
    plain = LiteRtBackend()
    plain.load(path, {})
    assert plain.batch == 3  # without the axes, axis 0 (the steps) would be taken for the batch


def test_litert_target_refuses_a_model_whose_batch_is_not_on_axis_0_by_name(key, tmp_path):
    torch.manual_seed(0)
    model = RecurrentStep().eval()
    axes = {"x": {0: None, 1: "batch"}, "state": {0: None, 1: "batch"}}
    bundle = export_torch(model, (torch.randn(5, 3, 8), torch.randn(2, 3, 16)), tmp_path / "b", name="gru",
                          version=1, input_names=["x", "state"], output_names=["y", "next_state"], dynamic_axes=axes)
    with pytest.raises(CompileError, match=r"litert: the converter fixes the batch on axis 0 of every tensor, and "
                                           r"this model has x \(batch on axis 1\), state \(batch on axis 1\)"):
        compile_bundle(bundle.root, ["litert"], tmp_path / "c", torch_model=model)
    assert not (tmp_path / "c").exists()
