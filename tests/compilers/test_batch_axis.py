"""Inputs whose batch axis is not axis 0 (a recurrent state [layers, batch, hidden]) and inputs with no
batch axis (a scalar sample rate) through export or import, verify, predict, self-test and the compile
check on onnxruntime-cpu and openvino-cpu (core/schema.py batch_axis)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from edgefleet.compilers.compile import compile_bundle
from edgefleet.compilers.export import export_torch
from edgefleet.compilers.import_model import import_model
from edgefleet.core.bundle import Bundle
from edgefleet.core.schema import TensorSpec, batch_axis, join_samples, take_samples
from edgefleet.core.signing import SigningKey, TrustStore
from edgefleet.edge_runtime.predictor import Predictor
from tests.compilers.import_kit import RecurrentStep

TARGETS = ["onnxruntime-cpu", "openvino-cpu"]


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture(scope="module")
def gru(tmp_path_factory, key) -> tuple[RecurrentStep, Bundle]:
    torch.manual_seed(0)
    model = RecurrentStep().eval()
    examples = (torch.randn(5, 3, 8), torch.randn(2, 3, 16))
    axes = {"x": {0: None, 1: "batch"}, "state": {0: None, 1: "batch"}}
    bundle = export_torch(model, examples, tmp_path_factory.mktemp("gru") / "b", name="gru", version=1,
                          input_names=["x", "state"], output_names=["y", "next_state"], dynamic_axes=axes,
                          signing_key=key)
    return model, bundle


def _scaled_onnx(path: Path) -> Path:
    """y = (x * rate) @ W: x [batch, 4], rate a float32 scalar used for every sample."""
    weight = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "rate"], ["scaled"]), helper.make_node("MatMul", ["scaled", "W"], ["y"])],
        "scaled",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("rate", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor("W", TensorProto.FLOAT, [4, 3], weight.ravel().tolist())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def scaled(tmp_path_factory, key) -> Bundle:
    work = tmp_path_factory.mktemp("scaled")
    rng = np.random.default_rng(0)
    reference = {"x": rng.standard_normal((20, 4)).astype(np.float32), "rate": np.array(0.5, np.float32)}
    return import_model(_scaled_onnx(work / "scaled.onnx"), work / "b", name="scaled", version=1,
                        reference_data=reference, task="regression", signing_key=key)


def test_the_batch_axis_is_the_axis_named_batch_else_a_symbolic_axis_0_else_none():
    state, rate = TensorSpec("state", "float32", (2, "batch", 16)), TensorSpec("rate", "float32", ())
    assert [batch_axis(s) for s in (state, rate, TensorSpec("x", "float32", ("N", 4)))] == [1, None, 0]
    data = {"state": np.arange(2 * 5 * 16).reshape(2, 5, 16), "rate": np.array(3.0)}
    first = take_samples([state, rate], data, 0, 1)
    assert first["state"].shape == (2, 1, 16) and first["rate"].shape == ()
    rest = take_samples([state, rate], data, 1, 5)
    joined = join_samples([state, rate], [first, rest])
    assert np.array_equal(joined["state"], data["state"]) and joined["rate"] == 3.0


def test_a_state_input_on_axis_1_verifies_predicts_like_torch_and_self_tests(gru, key):
    model, bundle = gru
    Bundle.open(bundle.root).verify(TrustStore([key.public_key]))
    assert bundle.manifest["golden"]["count"] == 3  # the examples' batch axis is axis 1
    x, state = torch.randn(5, 4, 8), torch.randn(2, 4, 16)
    with torch.no_grad():
        want_y, want_state = model(x, state)
    with Predictor(bundle.root, trusted_keys=TrustStore([key.public_key])) as predictor:
        got = predictor.predict({"x": x.numpy(), "state": state.numpy()})
        report = predictor.self_test()
    assert np.allclose(got["y"], want_y.numpy(), atol=1e-5) and np.allclose(got["next_state"], want_state.numpy(),
                                                                            atol=1e-5)
    assert report.passed, report.failures


def test_a_state_input_on_axis_1_compiles_and_passes_the_check(gru, key, tmp_path):
    _, bundle = gru
    result = compile_bundle(bundle.root, TARGETS, tmp_path / "c", signing_key=key)
    assert not result.refused, result.refused
    by_target = {a["target"]: a for a in result.bundle.artifacts}
    for target in TARGETS:
        error = by_target[target]["numeric_error"]
        assert error["checked"] and error["samples"] == 3, (target, error)
    for backend in TARGETS:
        with Predictor(result.bundle.root, backends=[backend], trusted_keys=TrustStore([key.public_key])) as predictor:
            report = predictor.self_test()
        assert report.passed, (backend, report.failures)


def test_a_scalar_input_holds_one_value_for_every_sample(scaled, key, tmp_path):
    Bundle.open(scaled.root).verify(TrustStore([key.public_key]))
    assert scaled.manifest["golden"]["count"] == 8
    x = np.random.default_rng(1).standard_normal((6, 4)).astype(np.float32)
    weight = torch.arange(12, dtype=torch.float32).reshape(4, 3) / 10
    want = (torch.from_numpy(x) * 2.0) @ weight
    with Predictor(scaled.root, trusted_keys=TrustStore([key.public_key])) as predictor:
        got = predictor.predict({"x": x, "rate": np.array(2.0, np.float32)})
        report = predictor.self_test()
    assert np.allclose(got["y"], want.numpy(), atol=1e-5)
    assert report.passed, report.failures
    result = compile_bundle(scaled.root, TARGETS, tmp_path / "c", signing_key=key)
    assert not result.refused, result.refused
    checked = {a["target"]: a["numeric_error"] for a in result.bundle.artifacts if a["target"] in TARGETS}
    assert all(e["checked"] and e["samples"] == 8 for e in checked.values()), checked
    for backend in TARGETS:
        with Predictor(result.bundle.root, backends=[backend], trusted_keys=TrustStore([key.public_key])) as predictor:
            assert np.allclose(predictor.predict({"x": x, "rate": np.array(2.0, np.float32)})["y"], want.numpy(),
                               atol=1e-4), backend
            report = predictor.self_test()
        assert report.passed, (backend, report.failures)
