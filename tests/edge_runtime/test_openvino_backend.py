"""The openvino edge backend on real OpenVINO IR compiled from the digits bundle, against onnxruntime."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgefleet.cloud.compress.quantize import quantize_static_int8
from edgefleet.compilers.compile import compile_bundle
from edgefleet.core.bundle import Bundle, sign, write_manifest
from edgefleet.core.errors import BackendError, VerificationError
from edgefleet.core.precision import EPSILON, precision_atol
from edgefleet.core.signing import SigningKey
from edgefleet.edge_runtime.predictor import Predictor

pytest.importorskip("openvino")

from edgefleet.edge_runtime.backends.openvino import OpenVinoBackend  # noqa: E402 - needs openvino
from tests.openvino_cpu import cpu_executes  # noqa: E402 - needs openvino


@pytest.fixture(scope="module")
def key(digits_bundle) -> SigningKey:
    return SigningKey.load(digits_bundle.private_key)


@pytest.fixture(scope="module")
def compiled(digits_bundle, digits_splits, key, tmp_path_factory) -> dict[str, Bundle]:
    """fp32 (cpu + npu), fp16 and int8 openvino-cpu bundles, and one with only an openvino-gpu artifact."""
    tmp = tmp_path_factory.mktemp("ov-backend")
    int8_source = quantize_static_int8(digits_bundle.root, tmp / "int8-source", digits_splits.x_train[:256],
                                       signing_key=key).bundle
    jobs = {"fp32": (digits_bundle.root, ["openvino-cpu", "openvino-npu"], None),
            "fp16": (digits_bundle.root, ["openvino-cpu"], {"openvino-cpu": {"precision": "fp16"}}),
            "int8": (int8_source.root, ["openvino-cpu"], None),
            "gpu": (digits_bundle.root, ["openvino-gpu"], None)}
    return {name: compile_bundle(src, targets, tmp / name, options=opts, signing_key=key).bundle
            for name, (src, targets, opts) in jobs.items()}


def onnx_reference(bundle: Bundle, x: np.ndarray) -> np.ndarray:
    source = next(a for a in bundle.artifacts if a["target"] == "onnx")
    session = ort.InferenceSession(str(bundle.path(source["path"])), providers=["CPUExecutionProvider"])
    return session.run(None, {"pixels": x})[0]


def load(path: Path, **options) -> OpenVinoBackend:
    backend = OpenVinoBackend()
    backend.load(path, options)
    return backend


@pytest.mark.parametrize(("precision", "atol"), [("fp32", 1e-5), ("fp16", None), ("int8", 0.15)])
def test_predictions_agree_with_onnxruntime(compiled, digits_bundle, digits_splits, precision, atol):
    bundle = compiled[precision]
    with Predictor(bundle.root, backends=["openvino"], trusted_keys=[digits_bundle.public_key]) as predictor:
        assert predictor.backend_name == "openvino" and predictor.fallbacks == []
        assert predictor.artifact["target"] == "openvino-cpu" and predictor.artifact["precision"] == precision
        for batch in (1, 7, 64):  # a dynamic batch
            x = digits_splits.x_test[:batch]
            got, want = predictor.predict(x)["logits"], onnx_reference(bundle, x)
            # fp16: two epsilons of what this CPU runs for an f16 hint (f16 on Intel AVX512-FP16, bf16 on Zen 4)
            limit = atol if atol is not None else precision_atol(cpu_executes("f16"), [want])
            np.testing.assert_allclose(got, want, atol=limit, rtol=0)
        x = digits_splits.x_test
        agree = (predictor.predict(x)["logits"].argmax(1) == onnx_reference(bundle, x).argmax(1)).mean()
        assert agree >= 0.99
        assert predictor.self_test().passed


def test_backend_reads_back_what_the_cpu_executes(compiled):
    fp32_ir, fp16_ir = (compiled[name].root / "openvino-cpu" / "model.xml" for name in ("fp32", "fp16"))
    assert load(fp32_ir, precision_hint="f32").executed_precision == "f32"
    assert load(fp16_ir, precision_hint="f16").executed_precision == cpu_executes("f16")
    # bf16 on Intel AMX and on AMD Zen 4 alike (f32 on a CPU without avx512_bf16)
    assert load(fp32_ir, precision_hint="bf16").executed_precision == cpu_executes("bf16")
    # float32 compute over float16 weights: their rounding is in every result, so f16 at least
    assert load(fp16_ir, precision_hint="f32").executed_precision in ("f16", "bf16")


def as_if_compiled_on(bundle: Bundle, executed: str, key: SigningKey, out: Path) -> Bundle:
    """A copy of `bundle` whose openvino-cpu artifact says it ran `executed` at compile time and was checked
    with two epsilons of it: what a build machine of another CPU kind writes, signed by the same key."""
    root = Path(shutil.copytree(bundle.root, out))
    manifest = json.loads((root / "manifest.json").read_text())
    manifest.pop("files", None)
    art = next(a for a in manifest["artifacts"] if a["target"] == "openvino-cpu")
    _, golden_out, tolerance = bundle.golden()
    art["executed_precision"] = executed
    art["numeric_error"]["atol"] = max(tolerance["atol"], precision_atol(executed, golden_out.values()))
    art["numeric_error"]["max_abs"] = art["numeric_error"]["atol"] / 4
    write_manifest(root, manifest)
    sign(root, key)
    return Bundle.open(root)


@pytest.mark.parametrize("built_on", ["f16", "bf16"])
def test_self_test_allows_for_what_this_device_executes(compiled, digits_bundle, key, tmp_path, built_on):
    # A bundle compiled on an Intel AVX512-FP16 machine (f16 executed, f16 tolerance) reaches a device whose
    # CPU runs the same f16 hint in bf16 (AMD Zen 4), or the other way round: the device's own self-test
    # widens to what it executes, so an artifact that is right is not refused on one CPU kind.
    bundle = as_if_compiled_on(compiled["fp16"], built_on, key, tmp_path / "bundle")
    with Predictor(bundle.root, backends=["openvino"], trusted_keys=[digits_bundle.public_key]) as predictor:
        report = predictor.self_test()
        device_runs = predictor._backend.executed_precision
        assert device_runs == cpu_executes("f16")
        assert report.passed, report.failures
        _, golden_out, _ = bundle.golden()
        scale = max(float(np.abs(v).max()) for v in golden_out.values())
        wanted = max(2 * EPSILON[p] * scale for p in (built_on, device_runs))
        assert report.tolerance["atol"] == pytest.approx(wanted)


def test_static_npu_artifact_takes_any_batch(compiled, digits_splits):
    bundle = compiled["fp32"]
    art = next(a for a in bundle.artifacts if a["target"] == "openvino-npu")
    backend = load(bundle.path(art["path"]), **{**art["options"], "device": "CPU", "cache_dir": None})
    assert backend.batch == 1
    x = digits_splits.x_test[:5]
    batched = backend.run({"pixels": x})["logits"]
    singles = np.concatenate([backend.run({"pixels": x[i:i + 1]})["logits"] for i in range(5)])
    np.testing.assert_array_equal(batched, singles)
    want = onnx_reference(bundle, x)  # the NPU's f16 hint, run by this CPU (bf16 on AMD Zen 4)
    assert backend.executed_precision == cpu_executes("f16")
    np.testing.assert_allclose(batched, want, atol=precision_atol(backend.executed_precision, [want]))
    backend.close()


def test_gpu_artifact_falls_back_with_a_logged_recorded_reason(compiled, digits_bundle, caplog):
    bundle, trusted = compiled["gpu"], [digits_bundle.public_key]
    with caplog.at_level(logging.WARNING):
        predictor = Predictor(bundle.root, backends=["openvino-gpu", "onnxruntime"], trusted_keys=trusted)
    assert predictor.backend_name == "onnxruntime"
    [(name, reason)] = predictor.fallbacks
    assert name == "openvino-gpu"
    assert reason.startswith("failed to load openvino-gpu/model.xml: openvino: device GPU is not available on this "
                             "machine (OpenVINO lists: CPU")
    assert "backend openvino-gpu skipped" in caplog.text
    with pytest.raises(BackendError, match="device GPU is not available"):
        Predictor(bundle.root, backends=["openvino-gpu"], trusted_keys=trusted)
    # the backend's name alone takes a CPU artifact: here the bundle's ONNX model, which OpenVINO reads too
    with Predictor(bundle.root, backends=["openvino"], trusted_keys=trusted) as predictor:
        assert (predictor.backend_name, predictor.artifact["format"]) == ("openvino", "onnx")
        assert predictor.self_test().passed


def test_corrupt_ir_is_refused(compiled, digits_bundle, tmp_path):
    import shutil

    root = Path(shutil.copytree(compiled["fp32"].root, tmp_path / "bundle"))
    ir = root / "openvino-cpu"
    weights = bytearray((ir / "model.bin").read_bytes())
    weights[100] ^= 0xFF  # same size: only the signed hash can tell
    (ir / "model.bin").write_bytes(bytes(weights))
    with pytest.raises(VerificationError, match="openvino-cpu/model.bin"):
        Predictor(root, backends=["openvino"], trusted_keys=[digits_bundle.public_key])

    # the backend on its own (the Predictor has not verified these files)
    (ir / "model.bin").write_bytes(bytes(weights[:500]))
    with pytest.raises(BackendError, match=r"cannot load model.xml on CPU: Incorrect weights in bin file"):
        load(ir / "model.xml")
    xml = (ir / "model.xml").read_text()
    (ir / "model.xml").write_text(xml.replace("<layers>", "<layers", 1))
    with pytest.raises(BackendError, match=r"cannot load model.xml on CPU: Error parsing"):
        load(ir / "model.xml")
    (ir / "model.bin").unlink()
    with pytest.raises(BackendError, match="the weights file model.bin next to model.xml is missing"):
        load(ir / "model.xml")


def test_missing_device_is_a_clear_load_error(compiled):
    path = compiled["fp32"].root / "openvino-cpu" / "model.xml"
    with pytest.raises(BackendError, match=r"openvino: device NPU is not available on this machine"):
        load(path, device="NPU")


def test_options_reach_openvino(compiled, tmp_path):
    path = compiled["fp32"].root / "openvino-cpu" / "model.xml"
    options = {"threads": 1, "precision_hint": "f32", "performance_hint": "THROUGHPUT",
               "cache_dir": "ov-cache", "cache_root": str(tmp_path)}
    first = load(path, **options)
    assert first.compiled.get_property("INFERENCE_NUM_THREADS") == 1
    assert first.compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == "f32"
    assert str(first.compiled.get_property("PERFORMANCE_HINT")) == "THROUGHPUT"
    assert any((tmp_path / "ov-cache").iterdir())  # the compiled model was cached
    second = load(path, **options)
    assert second.compiled.get_property("LOADED_FROM_CACHE") is True
    with pytest.raises(BackendError, match="cache_dir must be a relative name"):
        load(path, cache_dir="/etc/x")


def test_onnx_runs_directly_in_f32_unless_told(digits_bundle, digits_splits):
    bundle = Bundle.open(digits_bundle.root)
    backend = load(bundle.path("model.onnx"))  # no precision hint: f32, whatever OpenVINO's default here
    assert backend.compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == "f32"
    x = digits_splits.x_test[:16]
    np.testing.assert_allclose(backend.run({"pixels": x})["logits"], onnx_reference(bundle, x), atol=1e-5)


def test_concurrent_calls_each_get_their_own_answer(compiled, digits_splits):
    backend = load(compiled["fp32"].root / "openvino-cpu" / "model.xml", precision_hint="f32")
    x = digits_splits.x_test[:64]
    want = backend.run({"pixels": x})["logits"]

    def one(i: int) -> bool:
        rows = slice(i % 60, i % 60 + 1 + i % 4)
        return np.allclose(backend.run({"pixels": x[rows]})["logits"], want[rows], atol=1e-5)

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(one, range(400)))


def test_backend_module_imports_no_torch_onnx_or_cloud():
    code = ("import sys, edgefleet.edge_runtime.backends.openvino; "
            "print(sorted(m for m in ('torch', 'onnx', 'edgefleet.compilers', 'edgefleet.cloud') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
