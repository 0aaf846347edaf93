"""`edgefleet import` as a user runs it: a real subprocess on ONNX files built in the test; the bundle it
writes verifies and predicts, and every refusal is one line and exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.cli.test_bundle_commands import assert_user_error, edgefleet
from tests.compilers import import_kit as kit


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mlp.onnx (features float32 [batch, 8] -> value [batch, 1]), softmax.onnx, keys/test.key|pub."""
    from onnx import TensorProto, helper

    folder = tmp_path_factory.mktemp("cli-import")
    kit.mlp_onnx(folder / "mlp.onnx")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    y = helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 3])
    kit._save(helper.make_graph([helper.make_node("Softmax", ["x"], ["probs"], axis=1)], "softmax", [x], [y]),
              folder / "softmax.onnx")
    assert edgefleet("keys", "generate", "--out", str(folder / "keys"), "--name", "test").returncode == 0
    np.savez(folder / "data.npz", features=np.random.default_rng(0).standard_normal((20, 8)).astype(np.float32))
    return folder


def test_import_prints_the_interface_and_the_bundle_verifies_and_predicts(files, tmp_path):
    result = edgefleet("import", str(files / "mlp.onnx"), "--out", str(tmp_path / "b"), "--name", "mlp",
                       "--version", "4", "--key", str(files / "keys" / "test.key"), "--task", "regression",
                       "--reference-data", str(files / "data.npz"))
    assert result.returncode == 0, result.stderr
    assert "mlp v4" in result.stdout and "features" in result.stdout and "[batch, 8]" in result.stdout
    assert "task regression; 8 golden examples from" in result.stdout and "signed with key" in result.stdout
    trust = ["--trust", str(files / "keys" / "test.pub")]
    verified = edgefleet("verify", str(tmp_path / "b"), *trust)
    assert verified.returncode == 0, verified.stderr
    features = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    np.save(tmp_path / "request.npy", features)
    predicted = edgefleet("predict", str(tmp_path / "b"), "--input", str(tmp_path / "request.npy"), "--output",
                          str(tmp_path / "answer.npz"), *trust)
    assert predicted.returncode == 0, predicted.stderr
    assert "3 predictions" in predicted.stdout and "class" not in predicted.stdout  # a regression: no classes
    import onnxruntime as ort

    want = ort.InferenceSession(str(files / "mlp.onnx")).run(None, {"features": features})[0]
    np.testing.assert_array_equal(np.load(tmp_path / "answer.npz")["value"], want)


def test_class_names_file_makes_a_classifier(files, tmp_path):
    (tmp_path / "classes.txt").write_text("cat\ndog\n\nbird\n")
    result = edgefleet("import", str(files / "softmax.onnx"), "--out", str(tmp_path / "b"), "--name", "s",
                       "--version", "1", "--class-names", str(tmp_path / "classes.txt"))
    assert result.returncode == 0, result.stderr
    assert "generated from the schema" in result.stdout and "not signed: edgefleet sign" in result.stdout
    interface = json.loads((tmp_path / "b" / "manifest.json").read_text())["interface"]
    assert interface["task"] == "classification" and interface["class_names"] == ["cat", "dog", "bird"]
    assert interface["postprocess"] == "none"


def test_refusals_are_one_line_and_exit_2(files, tmp_path):
    (tmp_path / "not-a-model.onnx").write_bytes(b"\x00\x01 garbage, not protobuf \xff\xfe")
    np.savez(tmp_path / "keys.npz", x=np.zeros((2, 8), np.float32))
    np.savez(tmp_path / "shape.npz", features=np.zeros((2, 9), np.float32))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.txt").write_text("x")
    (tmp_path / "classes.json").write_text('{"not": "a list"}')
    base = ["--name", "m", "--version", "1"]
    mlp = str(files / "mlp.onnx")
    cases = [
        ([str(tmp_path / "missing.onnx"), "--out", str(tmp_path / "o"), *base], "no model file at"),
        ([str(tmp_path / "not-a-model.onnx"), "--out", str(tmp_path / "o"), *base], "is not an ONNX model file"),
        ([mlp, "--out", str(tmp_path / "o"), *base, "--dim", "batch"], "--dim 'batch': expected NAME=SIZE"),
        ([mlp, "--out", str(tmp_path / "o"), *base, "--dim", "tokens=8"], "no dimension named 'tokens'"),
        ([mlp, "--out", str(tmp_path / "o"), *base, "--reference-data", str(tmp_path / "keys.npz")],
         "reference data has no array for input(s) 'features' and arrays for unknown input(s) 'x'"),
        ([mlp, "--out", str(tmp_path / "o"), *base, "--reference-data", str(tmp_path / "shape.npz")],
         "input 'features': expected float32[batch, 8] (axis 1 must be 8), got float32[2, 9]"),
        ([mlp, "--out", str(tmp_path / "full"), *base], "is not empty"),
        ([mlp, "--out", str(tmp_path / "o"), *base, "--class-names", str(tmp_path / "classes.json")],
         "expected a JSON list of strings"),
        ([mlp, "--out", str(tmp_path / "o"), "--name", "m", "--version", "0"],
         "version must be an integer from 1 to 2**63-1, got 0"),
    ]
    for args, message in cases:
        assert_user_error(edgefleet("import", *args), message)
    assert not (tmp_path / "o").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes.json", "full", "keys.npz", "not-a-model.onnx",
                                                           "shape.npz"]
