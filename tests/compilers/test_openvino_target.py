"""The openvino-cpu/gpu/npu targets on the real digits bundle, compiled and checked with real OpenVINO."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.cloud.compress.quantize import quantize_static_int8
from edgefleet.compilers.compile import compile_bundle
from edgefleet.core.bundle import Bundle
from edgefleet.core.errors import CompileError
from edgefleet.core.precision import EPSILON
from edgefleet.core.signing import SigningKey

ov = pytest.importorskip("openvino")

from tests.openvino_cpu import cpu_executes  # noqa: E402 - needs openvino


@pytest.fixture(scope="module")
def key(digits_bundle) -> SigningKey:
    return SigningKey.load(digits_bundle.private_key)


@pytest.fixture(scope="module")
def fp32(digits_bundle, key, tmp_path_factory) -> Bundle:
    out = tmp_path_factory.mktemp("ov") / "fp32"
    return compile_bundle(digits_bundle.root, ["openvino-cpu", "openvino-gpu", "openvino-npu"], out,
                          signing_key=key).bundle


@pytest.fixture(scope="module")
def fp16(digits_bundle, key, tmp_path_factory) -> Bundle:
    out = tmp_path_factory.mktemp("ov") / "fp16"
    return compile_bundle(digits_bundle.root, ["openvino-cpu"], out, options={"openvino-cpu": {"precision": "fp16"}},
                          signing_key=key).bundle


@pytest.fixture(scope="module")
def bf16(digits_bundle, key, tmp_path_factory) -> Bundle:
    out = tmp_path_factory.mktemp("ov") / "bf16"
    return compile_bundle(digits_bundle.root, ["openvino-cpu"], out, options={"openvino-cpu": {"precision": "bf16"}},
                          signing_key=key).bundle


@pytest.fixture(scope="module")
def int8(digits_bundle, digits_splits, key, tmp_path_factory) -> Bundle:
    tmp = tmp_path_factory.mktemp("ov")
    source = quantize_static_int8(digits_bundle.root, tmp / "int8-source", digits_splits.x_train[:256],
                                  signing_key=key).bundle
    return compile_bundle(source, ["openvino-cpu"], tmp / "int8", signing_key=key).bundle


def entry(bundle: Bundle, target: str) -> dict:
    return next(a for a in bundle.artifacts if a["target"] == target)


def ir_input_shape(bundle: Bundle, target: str) -> str:
    return str(ov.Core().read_model(bundle.path(entry(bundle, target)["path"])).inputs[0].get_partial_shape())


def test_cpu_fp32_ir_is_checked_and_pinned_to_f32(fp32):
    art = entry(fp32, "openvino-cpu")
    assert (art["backend"], art["format"], art["path"], art["precision"], art["device"]) == (
        "openvino", "openvino-ir", "openvino-cpu/model.xml", "fp32", "cpu")
    assert {"openvino-cpu/model.xml", "openvino-cpu/model.bin"} <= set(fp32.manifest["files"])
    # a device runs f32, not OpenVINO's bf16 default on AMX CPUs
    assert art["options"] == {"device": "CPU", "precision_hint": "f32", "cache_dir": None,
                              "performance_hint": "LATENCY"}
    error = art["numeric_error"]
    assert error["checked"] and error["checked_with"] == "openvino" and error["samples"] == 8
    assert error["max_abs"] <= 1e-5 and error["atol"] == fp32.golden()[2]["atol"]
    layers = art["compile"]["runtime_precision"]["layers"]
    assert "Convolution" in layers and {p for counts in layers.values() for p in counts} == {"f32"}
    assert art["executed_precision"] == art["compile"]["runtime_precision"]["executed"] == "f32"
    assert art["compile"]["openvino"] == ov.__version__ and "batch" not in art
    assert ir_input_shape(fp32, "openvino-cpu") == "[?,1,8,8]"  # dynamic batch
    step = next(s for s in fp32.manifest["lineage"]["steps"] if s.get("target") == "openvino-cpu")
    assert step["precision"] == "fp32" and step["numeric_error"] == error


def assert_checked_with_what_ran(bundle: Bundle, executed: str) -> None:
    """The artifact records the format this CPU executed and was checked with two epsilons of it."""
    art = entry(bundle, "openvino-cpu")
    assert art["executed_precision"] == art["compile"]["runtime_precision"]["executed"] == executed
    _, golden_out, tolerance = bundle.golden()
    error = art["numeric_error"]
    derived = 2 * EPSILON[executed] * np.abs(golden_out["logits"]).max()
    assert error["atol"] == pytest.approx(max(derived, tolerance["atol"]))
    assert 0 < error["max_abs"] < error["atol"]


def test_fp16_halves_the_weights_and_is_checked_with_what_this_cpu_executes(fp16, fp32):
    # An f16 hint runs in f16 on Intel AVX512-FP16 and in bf16 on AMD Zen 4: compiling used to fail there
    # ("max abs error 0.0562 ... tolerance atol=0.0271205", an f16 tolerance for bf16 arithmetic).
    art = entry(fp16, "openvino-cpu")
    assert art["precision"] == "fp16" and art["options"]["precision_hint"] == "f16"
    weights = {b: b.manifest["files"]["openvino-cpu/model.bin"]["size"] for b in (fp16, fp32)}
    assert weights[fp16] < 0.55 * weights[fp32]
    executed = cpu_executes("f16")
    assert_checked_with_what_ran(fp16, executed)
    assert art["numeric_error"]["atol"] > fp16.golden()[2]["atol"]  # wider than the fp32 bundle's own
    layers = art["compile"]["runtime_precision"]["layers"]
    assert executed in layers["Convolution"]


def test_bf16_runs_bf16_on_intel_amx_and_amd_zen4_alike(bf16, fp32):
    art = entry(bf16, "openvino-cpu")
    assert art["precision"] == "bf16" and art["options"]["precision_hint"] == "bf16"
    assert bf16.manifest["files"]["openvino-cpu/model.bin"]["size"] == fp32.manifest["files"][
        "openvino-cpu/model.bin"]["size"]  # float32 weights, bf16 compute
    executed = cpu_executes("bf16")
    assert_checked_with_what_ran(bf16, executed)
    if executed == "bf16":  # really bf16 arithmetic: far outside the fp32 bundle's tolerance, yet accepted
        assert art["numeric_error"]["max_abs"] > 10 * bf16.golden()[2]["atol"]
        assert {"bf16"} == set(art["compile"]["runtime_precision"]["layers"]["Convolution"])


def test_int8_qdq_source_runs_int8_kernels(int8):
    art = entry(int8, "openvino-cpu")
    assert art["precision"] == "int8" and art["options"]["precision_hint"] == "f32"
    compiled = art["compile"]
    assert compiled["fake_quantize_ops"] > 0
    layers = compiled["runtime_precision"]["layers"]  # the two convolutions and the linear layer run in u8/i8
    assert compiled["runtime_precision"]["int8_layers"] == 3 == sum(n for c in layers.values() for n in c.values())
    error = art["numeric_error"]
    assert error["checked"] and 0 < error["max_abs"] <= error["atol"] == int8.golden()[2]["atol"]


def test_gpu_and_npu_record_their_device_and_are_checked_on_cpu(fp32):
    gpu, npu = entry(fp32, "openvino-gpu"), entry(fp32, "openvino-npu")
    assert gpu["device"] == "gpu" and gpu["options"]["device"] == "GPU" and gpu["precision"] == "fp32"
    assert npu["device"] == "npu" and npu["options"]["device"] == "NPU" and npu["precision"] == "fp16"
    for art in (gpu, npu):
        assert art["checked_on"] == "CPU" and art["numeric_error"]["check_options"]["device"] == "CPU"
        assert art["options"]["cache_dir"] == "openvino-cache"
    assert gpu["executed_precision"] == "f32" and npu["executed_precision"] == cpu_executes("f16")  # on this CPU
    assert npu["batch"] == 1 and npu["compile"]["batch"] == 1
    assert ir_input_shape(fp32, "openvino-npu") == "[1,1,8,8]"
    assert ir_input_shape(fp32, "openvino-gpu") == "[?,1,8,8]"


def test_static_batch_option_for_cpu(digits_bundle, tmp_path):
    options = {"openvino-cpu": {"batch": 4, "cache_dir": "ov", "performance_hint": "throughput"}}
    bundle = compile_bundle(digits_bundle.root, ["openvino-cpu"], tmp_path / "out", options=options).bundle
    art = entry(bundle, "openvino-cpu")
    assert art["batch"] == 4 and ir_input_shape(bundle, "openvino-cpu") == "[4,1,8,8]"
    assert art["options"]["cache_dir"] == "ov" and art["options"]["performance_hint"] == "THROUGHPUT"
    assert art["numeric_error"]["checked"] and art["numeric_error"]["max_abs"] <= 1e-5


@pytest.mark.parametrize(("target", "options", "message"), [
    ("openvino-cpu", {"fp16": True}, "openvino-cpu: unknown option(s) fp16; known: batch, cache_dir, "
                                     "performance_hint, precision"),
    ("openvino-cpu", {"precision": "fp64"}, "openvino-cpu: precision must be fp32, fp16 or bf16, got 'fp64'"),
    ("openvino-gpu", {"precision": "bf16"}, "openvino-gpu: precision must be fp32 or fp16, got 'bf16'"),
    ("openvino-npu", {"precision": "fp32"}, "openvino-npu: precision must be fp16 (the NPU computes in fp16)"),
    ("openvino-npu", {"batch": None}, "openvino-npu: the NPU needs static shapes"),
    ("openvino-gpu", {"batch": 0}, "openvino-gpu: batch must be an integer >= 1 or null (dynamic), got 0"),
    ("openvino-cpu", {"cache_dir": "../escape"}, "openvino-cpu: cache_dir must be a relative name without '..'"),
    ("openvino-cpu", {"performance_hint": "FAST"}, "performance_hint must be one of LATENCY, THROUGHPUT"),
    ("openvino-cpu", {"precision": "int8"}, "int8 needs an int8 (QDQ) source bundle"),
])
def test_bad_options_are_refused(digits_bundle, tmp_path, target, options, message):
    with pytest.raises(CompileError) as err:
        compile_bundle(digits_bundle.root, [target], tmp_path / "out", options={target: options})
    assert message in str(err.value)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_int8_source_refuses_a_float_precision(int8, tmp_path):
    with pytest.raises(CompileError, match="the source is an int8 \\(QDQ\\) model; precision must be int8"):
        compile_bundle(int8, ["openvino-gpu"], tmp_path / "out", options={"openvino-gpu": {"precision": "fp16"}})
