"""The LiteRT backend on real `.tflite` files, in the main environment (ai-edge-litert, no converter).

The converter (litert-torch) lives in its own environment (scripts/check-litert), so the files here are
built in the test from LiteRT's own flatbuffer schema (`ai_edge_litert.schema_py_generated`): a fully
connected layer y = x W^T + b with a named signature, in three variants: a static batch of 1 (what
litert-torch writes), a dynamic batch, and int8 inputs and outputs around a float layer (what the
litert target's int8 files look like from outside). The interpreter runs them with its real kernels; a
numpy computation is the reference. tests/compilers/test_litert_target.py covers converted models.

Files from the converter itself are committed fixtures (tests/fixtures/tflite, made by its
make_fixtures.py): a tiny CNN in float, in full int8 with int8 inputs and outputs, and the float one with
its SignatureDef removed; a bare LiteRT interpreter run on the same rows is the reference for them.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

from ai_edge_litert import schema_py_generated as schema  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402
from ai_edge_litert.tools import flatbuffer_utils  # noqa: E402
from ai_edge_litert.tools.flatbuffer_utils import convert_object_to_bytearray  # noqa: E402

from edgefleet.core.errors import BackendError  # noqa: E402
from edgefleet.edge_runtime.backends import backend_class  # noqa: E402
from edgefleet.edge_runtime.backends.litert import LiteRtBackend  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tflite"
RNG = np.random.default_rng(0)
WEIGHTS = RNG.normal(size=(3, 4)).astype(np.float32)
BIAS = RNG.normal(size=3).astype(np.float32)
IN_SCALE, IN_ZERO = 1 / 64, 3  # int8 input: x = (q - 3) / 64
OUT_SCALE, OUT_ZERO = 1 / 16, -5


def reference(x: np.ndarray) -> np.ndarray:
    return x @ WEIGHTS.T + BIAS


def tiny_tflite(path: Path, *, batch: int = 1, dynamic: bool = False, int8_io: bool = False,
                input_name: str = "features", output_name: str = "scores") -> Path:
    """Writes a .tflite: [input ->] FULLY_CONNECTED [-> output], signature "serving_default"."""
    sig_shape = [-1 if dynamic else batch, 4]

    def tensor(name: str, width: int, buffer: int = 0, dtype: int = schema.TensorType.FLOAT32,
               quant: tuple[float, int] | None = None) -> schema.TensorT:
        """An activation tensor [batch, width]."""
        t = schema.TensorT()
        t.name, t.type, t.buffer = name, dtype, buffer
        t.shape, t.shapeSignature = [batch, width], [sig_shape[0], width]
        if quant is not None:
            q = schema.QuantizationParametersT()
            q.scale, q.zeroPoint = [quant[0]], [quant[1]]
            t.quantization = q
        return t

    def constant(name: str, shape: list[int], buffer: int) -> schema.TensorT:
        t = schema.TensorT()
        t.name, t.type, t.buffer, t.shape = name, schema.TensorType.FLOAT32, buffer, shape
        return t

    def buffer(data: np.ndarray | None = None) -> schema.BufferT:
        b = schema.BufferT()
        b.data = None if data is None else list(data.tobytes())
        return b

    def opcode(code: int) -> schema.OperatorCodeT:
        c = schema.OperatorCodeT()
        c.builtinCode, c.deprecatedBuiltinCode, c.version = code, min(code, 127), 1
        return c

    def op(index: int, inputs: list[int], outputs: list[int], options=None, options_type: int = 0):
        o = schema.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = index, inputs, outputs
        o.builtinOptionsType, o.builtinOptions = options_type, options
        return o

    weights, bias = constant("w", [3, 4], buffer=1), constant("b", [3], buffer=2)
    fc_options = schema.FullyConnectedOptionsT()
    codes = [opcode(schema.BuiltinOperator.FULLY_CONNECTED)]
    if int8_io:
        tensors = [tensor(input_name, 4, dtype=schema.TensorType.INT8, quant=(IN_SCALE, IN_ZERO)),
                   tensor("x_float", 4), weights, bias, tensor("y_float", 3),
                   tensor(output_name, 3, dtype=schema.TensorType.INT8, quant=(OUT_SCALE, OUT_ZERO))]
        codes += [opcode(schema.BuiltinOperator.DEQUANTIZE), opcode(schema.BuiltinOperator.QUANTIZE)]
        ops = [op(1, [0], [1]), op(0, [1, 2, 3], [4], fc_options, schema.BuiltinOptions.FullyConnectedOptions),
               op(2, [4], [5])]
        out_index = 5
    else:
        tensors = [tensor(input_name, 4), weights, bias, tensor(output_name, 3)]
        ops = [op(0, [0, 1, 2], [3], fc_options, schema.BuiltinOptions.FullyConnectedOptions)]
        out_index = 3
    subgraph = schema.SubGraphT()
    subgraph.tensors, subgraph.inputs, subgraph.outputs, subgraph.operators = tensors, [0], [out_index], ops
    subgraph.name = "main"

    def tensor_map(name: str, index: int) -> schema.TensorMapT:
        m = schema.TensorMapT()
        m.name, m.tensorIndex = name, index
        return m

    signature = schema.SignatureDefT()
    signature.signatureKey, signature.subgraphIndex = "serving_default", 0
    signature.inputs, signature.outputs = [tensor_map(input_name, 0)], [tensor_map(output_name, out_index)]
    model = schema.ModelT()
    model.version, model.description = 3, "edgefleet test model"
    model.operatorCodes, model.subgraphs, model.signatureDefs = codes, [subgraph], [signature]
    model.buffers = [buffer(), buffer(WEIGHTS), buffer(BIAS)]  # buffer 0: the empty sentinel
    path.write_bytes(convert_object_to_bytearray(model))
    return path


@pytest.fixture
def loaded(tmp_path: Path):
    backends: list[LiteRtBackend] = []

    def load(options: dict | None = None, **build) -> LiteRtBackend:
        backend = LiteRtBackend()
        backend.load(tiny_tflite(tmp_path / f"model{len(backends)}.tflite", **build), options or {"threads": None})
        backends.append(backend)
        return backend

    yield load
    for backend in backends:
        backend.close()


def test_registered_and_declares_tflite() -> None:
    assert backend_class("litert") is LiteRtBackend
    assert LiteRtBackend.formats == ("tflite",)


def test_static_batch_one_maps_names_and_matches_numpy(loaded) -> None:
    backend = loaded()
    assert backend.signature == "serving_default" and backend.batch == 1
    x = RNG.normal(size=(1, 4)).astype(np.float32)
    out = backend.run({"features": x})
    assert list(out) == ["scores"]
    np.testing.assert_allclose(out["scores"], reference(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [0, 2, 7])
def test_static_batch_runs_other_row_counts_in_chunks(loaded, rows: int) -> None:
    for batch in (1, 4):
        backend = loaded(batch=batch)
        assert backend.batch == batch
        x = RNG.normal(size=(rows, 4)).astype(np.float32)
        out = backend.run({"features": x})["scores"]
        assert out.shape == (rows, 3)
        np.testing.assert_allclose(out, reference(x), rtol=1e-5, atol=1e-5)


def test_dynamic_batch_is_resized_as_requests_change(loaded) -> None:
    backend = loaded(dynamic=True)
    assert backend.batch is None
    for rows in (1, 5, 5, 2, 1):
        x = RNG.normal(size=(rows, 4)).astype(np.float32)
        np.testing.assert_allclose(backend.run({"features": x})["scores"], reference(x), rtol=1e-5, atol=1e-5)


def test_int8_inputs_and_outputs_are_quantized_and_dequantized(loaded) -> None:
    backend = loaded(int8_io=True, batch=1)
    x = RNG.uniform(-1, 1, size=(6, 4)).astype(np.float32)
    out = backend.run({"features": x})["scores"]
    assert out.dtype == np.float32
    # the reference sees the input as the model does: rounded to the int8 grid
    x_seen = (np.clip(np.rint(x / IN_SCALE) + IN_ZERO, -128, 127) - IN_ZERO) * IN_SCALE
    np.testing.assert_allclose(out, reference(x_seen.astype(np.float32)), atol=OUT_SCALE / 2 + 1e-6)


def test_outputs_do_not_alias_the_interpreter(loaded) -> None:
    backend = loaded()
    x1, x2 = (RNG.normal(size=(1, 4)).astype(np.float32) for _ in range(2))
    first = backend.run({"features": x1})["scores"]
    backend.run({"features": x2})
    np.testing.assert_allclose(first, reference(x1), rtol=1e-5, atol=1e-5)


def test_concurrent_requests_get_their_own_answers(loaded) -> None:
    backend = loaded(options={"threads": 1})
    rows = [RNG.normal(size=(1, 4)).astype(np.float32) for _ in range(8)]
    errors: list[str] = []

    def worker(x: np.ndarray) -> None:
        for _ in range(300):
            if not np.allclose(backend.run({"features": x})["scores"], reference(x), rtol=1e-5, atol=1e-5):
                errors.append("mixed-up answer")
                return

    threads = [threading.Thread(target=worker, args=(x,)) for x in rows]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_renamed_tensors_map_to_bundle_names(loaded) -> None:
    backend = loaded(options={"inputs": {"pixels": "args_0"}, "outputs": {"logits": "output_0"}},
                     input_name="args_0", output_name="output_0")
    x = RNG.normal(size=(1, 4)).astype(np.float32)
    np.testing.assert_allclose(backend.run({"pixels": x})["logits"], reference(x), rtol=1e-5, atol=1e-5)


def test_unknown_signature_or_tensor_names_are_clear_errors(tmp_path: Path) -> None:
    path = tiny_tflite(tmp_path / "m.tflite")
    with pytest.raises(BackendError, match="no signature 'other'"):
        LiteRtBackend().load(path, {"signature": "other"})
    with pytest.raises(BackendError, match="lacks"):
        LiteRtBackend().load(path, {"inputs": {"pixels": "nope"}})


def test_a_file_that_is_not_tflite_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer at all")
    with pytest.raises(BackendError, match="cannot load"):
        LiteRtBackend().load(bad, {})


# --- converted files (tests/fixtures/tflite) and files without a SignatureDef ------------------------------


def bare_interpreter(path: Path, x: np.ndarray) -> np.ndarray:
    """The file's first output for each row of x, from a plain Interpreter fed the tensors it declares
    (int8 I/O quantized and dequantized by hand with the file's scale and zero point)."""
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    rows = []
    for row in x:
        value, (scale, zero) = row[None], inp["quantization"]
        if scale:
            value = np.clip(np.rint(value / np.float32(scale)) + zero, -128, 127).astype(np.int8)
        interpreter.set_tensor(inp["index"], value)
        interpreter.invoke()
        result, (scale, zero) = interpreter.get_tensor(out["index"]), out["quantization"]
        rows.append((result.astype(np.float32) - zero) * np.float32(scale) if scale else result)
    return np.concatenate(rows)


def strip_signatures(source: Path, target: Path, rename: dict[int, str] | None = None) -> Path:
    """`source` without its SignatureDef table (as tests/fixtures/tflite/make_fixtures.py makes
    cnn_nosig.tflite), with tensors renamed {tensor index: name} on the way."""
    model = flatbuffer_utils.read_model(str(source))
    model.signatureDefs = []
    for index, name in (rename or {}).items():
        model.subgraphs[0].tensors[index].name = name
    flatbuffer_utils.write_model(model, str(target))
    return target


@pytest.fixture(scope="module")
def recorded() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "reference.npz") as data:
        return dict(data)


@pytest.mark.parametrize("rows", [1, 3])
def test_file_without_signature_maps_tensors_by_name_and_matches_the_bare_interpreter(recorded, rows: int) -> None:
    path = FIXTURES / "cnn_nosig.tflite"
    assert Interpreter(model_path=str(path)).get_signature_list() == {}
    backend = LiteRtBackend()
    backend.load(path, {})
    assert backend.signature == "" and backend.batch == 1
    x = recorded["pixels"][:rows]
    out = backend.run({"serving_default_pixels": x})
    assert list(out) == ["serving_default_logits_output"]
    np.testing.assert_array_equal(out["serving_default_logits_output"], bare_interpreter(path, x))
    np.testing.assert_array_equal(out["serving_default_logits_output"], recorded["float_logits"][:rows])
    backend.close()


def test_file_without_signature_takes_bundle_names_through_options(recorded) -> None:
    backend = LiteRtBackend()
    backend.load(FIXTURES / "cnn_nosig.tflite", {"inputs": {"pixels": "serving_default_pixels"},
                                                 "outputs": {"logits": "serving_default_logits_output"}})
    out = backend.run({"pixels": recorded["pixels"]})
    np.testing.assert_array_equal(out["logits"], recorded["float_logits"])


def test_file_without_signature_or_distinct_names_maps_by_order(tmp_path: Path) -> None:
    """Empty or repeated tensor names: every tensor is named by its position instead."""
    source = tiny_tflite(tmp_path / "named.tflite", batch=2)
    path = strip_signatures(source, tmp_path / "unnamed.tflite", rename={0: "", 3: ""})
    backend = LiteRtBackend()
    backend.load(path, {})
    assert backend.signature == "" and backend.batch == 2
    x = RNG.normal(size=(5, 4)).astype(np.float32)
    out = backend.run({"input_0": x})
    assert list(out) == ["output_0"]
    np.testing.assert_allclose(out["output_0"], reference(x), rtol=1e-5, atol=1e-5)


def test_file_without_signature_and_dynamic_batch_is_resized(tmp_path: Path) -> None:
    path = strip_signatures(tiny_tflite(tmp_path / "d.tflite", dynamic=True), tmp_path / "nosig.tflite")
    backend = LiteRtBackend()
    backend.load(path, {})
    assert backend.batch is None
    for rows in (3, 1, 6):
        x = RNG.normal(size=(rows, 4)).astype(np.float32)
        np.testing.assert_allclose(backend.run({"features": x})["scores"], reference(x), rtol=1e-5, atol=1e-5)


def test_a_signature_asked_of_a_file_without_one_is_a_clear_error() -> None:
    with pytest.raises(BackendError, match="no signature 'serving_default' .it has none"):
        LiteRtBackend().load(FIXTURES / "cnn_nosig.tflite", {"signature": "serving_default"})


@pytest.mark.parametrize("name", ["cnn_float", "cnn_int8"])
def test_converted_fixture_matches_the_bare_interpreter_and_the_converter_environment(recorded, name: str) -> None:
    path = FIXTURES / f"{name}.tflite"
    backend = LiteRtBackend()
    backend.load(path, {})
    assert backend.signature == "serving_default" and backend.batch == 1
    out = backend.run({"pixels": recorded["pixels"]})["logits"]
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, bare_interpreter(path, recorded["pixels"]))
    np.testing.assert_array_equal(out, recorded[name.replace("cnn_", "") + "_logits"])


def test_int8_io_round_trip_on_the_converters_full_int8_file(recorded) -> None:
    """float32 in, the file's int8 grid inside, float32 out: the output is on the output's grid, and
    feeding the values the input was rounded to gives the same answer (quantizing is idempotent)."""
    path = FIXTURES / "cnn_int8.tflite"
    details = Interpreter(model_path=str(path)).get_signature_runner().get_input_details()["pixels"]
    in_scale, in_zero = details["quantization"]
    assert details["dtype"] == np.int8 and in_scale > 0
    out_details = Interpreter(model_path=str(path)).get_signature_runner().get_output_details()["logits"]
    out_scale, out_zero = out_details["quantization"]
    assert out_details["dtype"] == np.int8
    backend = LiteRtBackend()
    backend.load(path, {})
    x = recorded["pixels"]
    out = backend.run({"pixels": x})["logits"]
    grid = out / np.float32(out_scale) + out_zero
    np.testing.assert_allclose(grid, np.rint(grid), atol=1e-3)
    assert grid.min() >= -128 and grid.max() <= 127
    x_seen = ((np.clip(np.rint(x / np.float32(in_scale)) + in_zero, -128, 127) - in_zero)
              * np.float32(in_scale)).astype(np.float32)
    np.testing.assert_array_equal(backend.run({"pixels": x_seen})["logits"], out)
    # one row at a time (the direct path) gives what chunks of the general path gave
    np.testing.assert_array_equal(np.concatenate([backend.run({"pixels": row[None]})["logits"] for row in x]), out)
    # and the int8 model stays close to the float one: within a few steps of its output grid
    np.testing.assert_allclose(out, recorded["float_logits"], atol=4 * out_scale)


def test_requests_off_the_direct_path_are_cast_resized_or_chunked(loaded) -> None:
    """The direct path takes only the input's current shape and dtype (SetTensor refuses the rest, but
    takes big-endian float32 bytes as they are); float64 or big-endian rows, other row counts and a
    dynamic file's new shapes go through the general path and still answer right, in any order."""
    static, dynamic = loaded(), loaded(dynamic=True)
    for rows, dtype in ((1, np.float64), (3, np.float32), (1, np.float32), (2, np.float64), (2, np.float32),
                        (1, ">f4"), (1, np.float32), (2, ">f4")):
        x = RNG.normal(size=(rows, 4)).astype(dtype)
        for backend in (static, dynamic):
            out = backend.run({"features": x})["scores"]
            assert out.dtype == np.float32 and out.shape == (rows, 3)
            np.testing.assert_allclose(out, reference(x.astype(np.float32)), rtol=1e-5, atol=1e-5)


def test_per_channel_quantized_input_is_refused_by_name(tmp_path: Path) -> None:
    """One float32 interface value cannot say which channel's scale applies: refused at load, naming it."""
    path = tiny_tflite(tmp_path / "int8.tflite", int8_io=True)
    model = flatbuffer_utils.read_model(str(path))
    quant = model.subgraphs[0].tensors[0].quantization
    quant.scale, quant.zeroPoint, quant.quantizedDimension = [IN_SCALE] * 4, [0] * 4, 1
    flatbuffer_utils.write_model(model, str(path))
    with pytest.raises(BackendError, match="'features' is quantized per channel"):
        LiteRtBackend().load(path, {})


def test_uint8_inputs_and_outputs_use_the_same_float32_convention(tmp_path: Path) -> None:
    """Many published quantized files have uint8 I/O (zero point near 128): the same quantize/dequantize."""
    path = tiny_tflite(tmp_path / "int8.tflite", int8_io=True)
    model = flatbuffer_utils.read_model(str(path))
    tensors = model.subgraphs[0].tensors
    for index, zero in ((0, IN_ZERO + 128), (5, OUT_ZERO + 128)):
        tensors[index].type, tensors[index].quantization.zeroPoint = schema.TensorType.UINT8, [zero]
    flatbuffer_utils.write_model(model, str(path))
    backend = LiteRtBackend()
    backend.load(path, {})
    x = RNG.uniform(-1, 1, size=(4, 4)).astype(np.float32)
    out = backend.run({"features": x})["scores"]
    x_seen = (np.clip(np.rint(x / IN_SCALE) + IN_ZERO + 128, 0, 255) - IN_ZERO - 128) * IN_SCALE
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, reference(x_seen.astype(np.float32)), atol=OUT_SCALE / 2 + 1e-6)


def test_a_truncated_converted_file_is_refused_at_load(tmp_path: Path) -> None:
    data = (FIXTURES / "cnn_nosig.tflite").read_bytes()
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(BackendError, match="litert: cannot load"):
        LiteRtBackend().load(cut, {})
