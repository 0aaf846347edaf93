"""The TFLite reader import_model uses (compilers/formats/tflite_file.py), on files from the converter.

The fixtures (tests/fixtures/tflite, made by its make_fixtures.py in the converter environment) are a tiny
CNN as litert-torch writes it in float and in full int8 with int8 inputs and outputs, and the float file
with its SignatureDef removed; reference.npz holds rows and the outputs the converter environment's LiteRT
gave for them. Files with -1 dims and unnamed tensors are written here with LiteRT's own flatbuffer schema.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

from ai_edge_litert import schema_py_generated as schema  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402
from ai_edge_litert.tools import flatbuffer_utils  # noqa: E402
from ai_edge_litert.tools.flatbuffer_utils import convert_object_to_bytearray  # noqa: E402

from edgefleet.compilers.formats import format_for, tflite_file  # noqa: E402
from edgefleet.core.errors import ExportError  # noqa: E402
from edgefleet.core.schema import TensorSpec  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tflite"
IMAGE = ("batch", 1, 8, 8)


@pytest.fixture(scope="module")
def recorded() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "reference.npz") as data:
        return dict(data)


def add_model(path: Path, names: tuple[str, str, str], shape_signature: list[int]) -> Path:
    """A .tflite without a SignatureDef: out = a + b, both inputs and the output of `shape_signature`
    (-1 where unknown; allocated with 2 in place of each -1)."""
    tensors = []
    for name in names:
        t = schema.TensorT()
        t.name, t.type, t.buffer = name, schema.TensorType.FLOAT32, 0
        t.shape, t.shapeSignature = [2 if d < 0 else d for d in shape_signature], list(shape_signature)
        tensors.append(t)
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.ADD
    code.version = 1
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 1], [2]
    op.builtinOptionsType, op.builtinOptions = schema.BuiltinOptions.AddOptions, schema.AddOptionsT()
    subgraph = schema.SubGraphT()
    subgraph.tensors, subgraph.inputs, subgraph.outputs, subgraph.operators = tensors, [0, 1], [2], [op]
    model = schema.ModelT()
    model.version, model.operatorCodes, model.subgraphs = 3, [code], [subgraph]
    model.buffers = [schema.BufferT()]
    path.write_bytes(convert_object_to_bytearray(model))
    return path


def test_the_suffix_picks_this_reader() -> None:
    assert format_for(Path("model.tflite")) is tflite_file
    assert format_for(Path("MODEL.TFLITE")) is tflite_file


@pytest.mark.parametrize(("name", "inputs", "outputs", "precision", "signature"), [
    ("cnn_float", "pixels", "logits", "fp32", "serving_default"),
    ("cnn_int8", "pixels", "logits", "int8", "serving_default"),
    ("cnn_nosig", "serving_default_pixels", "serving_default_logits_output", "fp32", None),
])
def test_each_fixture_schema_and_artifact(name: str, inputs: str, outputs: str, precision: str,
                                          signature: str | None) -> None:
    """Names from the SignatureDef, else the tensors; the static batch 1 becomes the "batch" symbol and
    artifact["batch"]; int8 I/O is float32 in the interface (the backend (de)quantizes)."""
    path = FIXTURES / f"{name}.tflite"
    assert tflite_file.read(path) == ([TensorSpec(inputs, "float32", IMAGE)],
                                      [TensorSpec(outputs, "float32", ("batch", 10))])
    entry = tflite_file.artifact(path)
    assert {k: entry[k] for k in ("target", "backend", "format", "precision", "device", "batch")} == {
        "target": "litert", "backend": "litert", "format": "tflite", "precision": precision, "device": "cpu",
        "batch": 1}
    assert entry["options"] == ({"signature": signature} if signature else {})
    assert entry["compile"]["tensors_by"] == ("signature" if signature else "tensor names")
    assert tflite_file.files(path) == [path]


@pytest.mark.parametrize(("name", "expected"), [("cnn_float", "float_logits"), ("cnn_int8", "int8_logits"),
                                                ("cnn_nosig", "float_logits")])
@pytest.mark.parametrize("rows", [1, 3, 5])
def test_run_gives_what_the_converter_environments_interpreter_gave(recorded, name: str, expected: str,
                                                                    rows: int) -> None:
    path = FIXTURES / f"{name}.tflite"
    (spec,), (out,) = tflite_file.read(path)
    result = tflite_file.run(path, {spec.name: recorded["pixels"][:rows]})
    assert list(result) == [out.name] and result[out.name].dtype == np.float32
    np.testing.assert_array_equal(result[out.name], recorded[expected][:rows])


def test_unknown_dims_are_distinct_symbols_and_a_dynamic_batch_is_batch(tmp_path: Path) -> None:
    path = add_model(tmp_path / "add.tflite", ("a", "b", "sum"), [-1, -1, -1, 3])
    inputs, outputs = tflite_file.read(path)
    assert inputs == [TensorSpec("a", "float32", ("batch", "a_d1", "a_d2", 3)),
                      TensorSpec("b", "float32", ("batch", "b_d1", "b_d2", 3))]
    assert outputs == [TensorSpec("sum", "float32", ("batch", "sum_d1", "sum_d2", 3))]
    assert "batch" not in tflite_file.artifact(path)
    a, b = (np.random.default_rng(i).normal(size=(4, 5, 7, 3)).astype(np.float32) for i in (1, 2))
    np.testing.assert_array_equal(tflite_file.run(path, {"a": a, "b": b})["sum"], a + b)


def test_dims_fix_symbols_and_unknown_names_are_refused(tmp_path: Path) -> None:
    path = add_model(tmp_path / "add.tflite", ("a", "b", "sum"), [-1, -1, -1, 3])
    inputs, _ = tflite_file.read(path, {"a_d1": 16, "batch": 2})
    assert inputs[0].shape == (2, 16, "a_d2", 3)
    with pytest.raises(ExportError, match="no dimension named 'height'.*a_d1"):
        tflite_file.read(path, {"height": 4})
    with pytest.raises(ExportError, match="integer >= 1"):
        tflite_file.read(path, {"a_d1": 0})


def test_tensors_without_distinct_names_are_named_by_order(tmp_path: Path) -> None:
    path = add_model(tmp_path / "add.tflite", ("x", "x", ""), [1, 4])
    inputs, outputs = tflite_file.read(path)
    assert [s.name for s in inputs] == ["input_0", "input_1"] and [s.name for s in outputs] == ["output_0"]
    assert inputs[0].shape == ("batch", 4)
    assert tflite_file.artifact(path)["compile"]["tensors_by"] == "order"
    ones = np.ones((3, 4), np.float32)
    np.testing.assert_array_equal(tflite_file.run(path, {"input_0": ones, "input_1": ones})["output_0"], 2 * ones)


def test_a_rank_one_input_has_no_batch_axis(tmp_path: Path) -> None:
    """[4] is four values, not four samples: no static batch, the shape stays as the file has it."""
    path = add_model(tmp_path / "add.tflite", ("a", "b", "sum"), [4])
    inputs, outputs = tflite_file.read(path)
    assert inputs[0].shape == (4,) and outputs[0].shape == (4,)
    assert "batch" not in tflite_file.artifact(path)


def quantize_first_input(path: Path, scales: list[float], dtype: int) -> Path:
    model = flatbuffer_utils.read_model(str(path))
    tensor = model.subgraphs[0].tensors[0]
    tensor.type, tensor.quantization = dtype, schema.QuantizationParametersT()
    tensor.quantization.scale, tensor.quantization.zeroPoint = scales, [0] * len(scales)
    tensor.quantization.quantizedDimension = 1 if len(scales) > 1 else 0
    flatbuffer_utils.write_model(model, str(path))
    return path


def test_quantized_inputs_are_float32_unquantized_integers_keep_their_dtype(tmp_path: Path) -> None:
    quantized = quantize_first_input(add_model(tmp_path / "q.tflite", ("a", "b", "s"), [1, 4]), [0.5],
                                     schema.TensorType.UINT8)
    assert [s.dtype for s in tflite_file.read(quantized)[0]] == ["float32", "float32"]
    ids = quantize_first_input(add_model(tmp_path / "ids.tflite", ("a", "b", "s"), [1, 4]), [],
                               schema.TensorType.INT32)
    assert [s.dtype for s in tflite_file.read(ids)[0]] == ["int32", "float32"]


def test_per_channel_quantized_io_is_refused(tmp_path: Path) -> None:
    path = quantize_first_input(add_model(tmp_path / "pc.tflite", ("a", "b", "s"), [1, 4]), [0.5] * 4,
                                schema.TensorType.INT8)
    with pytest.raises(ExportError, match="'a' is quantized per channel"):
        tflite_file.read(path)


def test_refusals_are_export_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"TFL3 but not really a flatbuffer")
    with pytest.raises(ExportError, match="not a TFLite model"):
        tflite_file.read(bad)
    with pytest.raises(ExportError, match="no such file"):
        tflite_file.read(tmp_path / "missing.tflite")
    with pytest.raises(ExportError, match="no value for input"):
        tflite_file.run(FIXTURES / "cnn_float.tflite", {"wrong": np.zeros((1, 1, 8, 8), np.float32)})


def test_openvino_reads_every_fixture_directly(recorded) -> None:
    """What decides whether the openvino targets can take an imported .tflite: OpenVINO's own TFLite
    frontend reads all three files (signature or not). Float matches LiteRT to float rounding; the int8
    file keeps int8 inputs and outputs in OpenVINO, so it needs the same (de)quantization as the litert
    backend, and then agrees with LiteRT exactly."""
    ov = pytest.importorskip("openvino")
    from edgefleet.edge_runtime.backends.litert import dequantize, quantize

    core = ov.Core()
    for name, expected in (("cnn_float", "float_logits"), ("cnn_nosig", "float_logits"),
                           ("cnn_int8", "int8_logits")):
        model = core.read_model(str(FIXTURES / f"{name}.tflite"))
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        rows = recorded["pixels"]
        if name == "cnn_int8":
            assert model.inputs[0].get_element_type() == ov.Type.i8
            interpreter = Interpreter(model_path=str(FIXTURES / f"{name}.tflite"))
            (spec,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
            rows = quantize(rows, np.dtype(np.int8), *spec["quantization"])
        got = np.concatenate([compiled(rows[i:i + 1])[0] for i in range(len(rows))])
        if name == "cnn_int8":
            got = dequantize(got, *out["quantization"])
        np.testing.assert_allclose(got, recorded[expected], rtol=0, atol=1e-6)


# --- through import_model: an ordinary bundle the litert backend serves ---------------------------------
@pytest.mark.parametrize(("name", "expected", "with_data"), [
    ("cnn_float", "float_logits", True), ("cnn_int8", "int8_logits", True), ("cnn_nosig", "float_logits", False)])
def test_imported_fixture_verifies_self_tests_and_predicts_like_the_interpreter(
        recorded, tmp_path: Path, name: str, expected: str, with_data: bool) -> None:
    import_model = pytest.importorskip("edgefleet.compilers.import_model").import_model
    from edgefleet.core.bundle import Bundle
    from edgefleet.core.signing import SigningKey, TrustStore
    from edgefleet.edge_runtime.predictor import Predictor

    key = SigningKey.generate()
    _, public = key.save(tmp_path / "keys", "test")
    (spec,), (out,) = tflite_file.read(FIXTURES / f"{name}.tflite")
    options = {}
    if with_data:
        np.savez(tmp_path / "data.npz", **{spec.name: recorded["pixels"]})
        options["reference_data"] = tmp_path / "data.npz"
    bundle = import_model(FIXTURES / f"{name}.tflite", tmp_path / "bundle", name=name.replace("_", "-"), version=1,
                          class_names=[f"digit{i}" for i in range(10)], signing_key=key, **options)
    assert Bundle.open(bundle.root).verify(TrustStore.from_paths([public])).name == name.replace("_", "-")
    (artifact,) = bundle.manifest["artifacts"]
    assert (artifact["target"], artifact["backend"], artifact["batch"]) == ("litert", "litert", 1)
    assert bool(bundle.manifest["golden"].get("generated")) is not with_data
    step = bundle.manifest["lineage"]["steps"][0]
    assert step["source"]["file"] == f"{name}.tflite" and "ai_edge_litert" in step["versions"]
    with Predictor(bundle.root, backends=["litert"], trusted_keys=[public], threads=1) as predictor:
        report = predictor.self_test()
        assert report.passed, report.failures
        for rows in (1, 5):
            got = predictor.predict({spec.name: recorded["pixels"][:rows]})[out.name]
            np.testing.assert_array_equal(got, recorded[expected][:rows])


@pytest.mark.parametrize("keep", [8, 0.5, -16])
def test_a_truncated_file_is_refused_by_the_flatbuffer_check(tmp_path: Path, keep: float) -> None:
    """A download cut short: LiteRT's flatbuffer verifier refuses it before anything is built."""
    data = (FIXTURES / "cnn_float.tflite").read_bytes()
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(data[:int(keep * len(data)) if isinstance(keep, float) else keep])
    with pytest.raises(ExportError, match="not a TFLite model the LiteRT interpreter can load"):
        tflite_file.read(cut)
