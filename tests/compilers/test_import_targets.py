"""Compile targets for a bundle whose model is an imported .tflite (no ONNX artifact): openvino-cpu reads
the file directly (float, full int8 with int8 inputs and outputs, no SignatureDef), litert has nothing to
do, and the targets that need ONNX refuse naming why; on the converter's own fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")
pytest.importorskip("openvino")

from edgefleet.compilers.compile import compile_bundle  # noqa: E402
from edgefleet.compilers.import_model import import_model  # noqa: E402
from edgefleet.core.bundle import Bundle  # noqa: E402
from edgefleet.core.errors import CompileError  # noqa: E402
from edgefleet.core.signing import SigningKey, TrustStore  # noqa: E402
from edgefleet.edge_runtime.predictor import Predictor  # noqa: E402
from tests.cli.test_bundle_commands import edgefleet  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tflite"
ALL = ["openvino-cpu", "litert", "onnxruntime-cpu", "native", "tensorrt"]
NEEDS_ONNX = "compiles from an ONNX model, and this bundle's model is a tflite file (model.tflite); edgefleet " \
             "has no TFLite-to-ONNX converter"


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture(scope="module")
def recorded() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "reference.npz") as data:
        return dict(data)


@pytest.fixture(scope="module")
def imported(tmp_path_factory, key, recorded) -> dict[str, Bundle]:
    """The three fixtures imported with 8 reference rows each (their static batch is 1)."""
    rows = np.concatenate([recorded["pixels"], recorded["pixels"][:3] * 0.5])
    work = tmp_path_factory.mktemp("tflite")
    return {name: import_model(FIXTURES / f"{name}.tflite", work / name, name=name.replace("_", "-"), version=1,
                               reference_data={"pixels" if name != "cnn_nosig" else "serving_default_pixels": rows},
                               signing_key=key)
            for name in ("cnn_float", "cnn_int8", "cnn_nosig")}


@pytest.mark.parametrize(("fixture", "logits"), [("cnn_float", "float_logits"), ("cnn_int8", "int8_logits"),
                                                 ("cnn_nosig", "float_logits")])
def test_openvino_cpu_reads_the_tflite_and_the_others_say_what_they_do(imported, key, recorded, tmp_path, fixture,
                                                                       logits):
    bundle = imported[fixture]
    assert bundle.manifest["golden"]["count"] == 8 and [a["format"] for a in bundle.artifacts] == ["tflite"]
    result = compile_bundle(bundle.root, ALL, tmp_path / "c", signing_key=key)
    assert [c.target for c in result.compiled] == ["openvino-cpu"]
    reasons = {r.target: r.reason for r in result.refused}
    assert "litert: this bundle's model is a TFLite file already (model.tflite)" in reasons["litert"]
    for target in ("onnxruntime-cpu", "native", "tensorrt"):
        assert reasons[target].startswith(f"{target}: {NEEDS_ONNX}"), reasons[target]
    assert sorted(p.name for p in Path(result.bundle.root).iterdir() if p.is_dir()) == ["openvino-cpu"]

    entry = result.compiled[0].artifact
    error = entry["numeric_error"]
    assert error["checked"] and error["samples"] == 8 and error["max_abs"] < 1e-4, error
    assert entry["format"] == "openvino-ir" and entry["batch"] == 1  # the file's static batch, kept
    quantized = entry["compile"]["from_tflite"]["quantized_io"]
    assert sorted(quantized) == (["logits", "pixels"] if fixture == "cnn_int8" else [])
    name_in = bundle.inputs[0].name
    trust = TrustStore([key.public_key])
    with Predictor(result.bundle.root, backends=["openvino-cpu"], trusted_keys=trust) as predictor:
        got = predictor.predict({name_in: recorded["pixels"]})[bundle.outputs[0].name]  # 5 rows, batch-1 IR
        assert predictor.self_test().passed
    # the converter environment's LiteRT on the same rows; int8: on the same quantization grid
    assert np.allclose(got, recorded[logits], atol=1e-5), np.abs(got - recorded[logits]).max()


def test_cli_compile_of_a_tflite_bundle_lists_each_target(imported, key, tmp_path):
    bundle = imported["cnn_int8"]
    result = edgefleet("compile", str(bundle.root), *[a for t in ALL for a in ("-T", t)], "--out",
                       str(tmp_path / "c"), "--json", str(tmp_path / "c.json"), env={"COLUMNS": "100000"})
    assert result.returncode == 1, result.stderr  # some targets refused: partial result
    assert "Traceback" not in result.stderr
    report = {r["target"]: r for r in json.loads((tmp_path / "c.json").read_text())}
    assert {t: r["status"] for t, r in report.items()} == {"openvino-cpu": "compiled", "litert": "refused",
                                                          "onnxruntime-cpu": "refused", "native": "refused",
                                                          "tensorrt": "refused"}
    assert "onnxruntime-cpu refused: onnxruntime-cpu: compiles from an ONNX model" in result.stdout
    assert "tf2onnx needs TensorFlow" in result.stdout
    with pytest.raises(CompileError, match="native: compiles from an ONNX model"):
        compile_bundle(bundle.root, ["native"], tmp_path / "n")
    assert not (tmp_path / "n").exists()
