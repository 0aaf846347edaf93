"""Issue 13's done-when on real edge CNN architectures (tests/compilers/edge_cnns.py, random weights, non-trivial
BatchNorm statistics): an EfficientNet-Lite-class CNN (depthwise convs, squeeze-excite, HardSwish, ReLU6,
AdaptiveAvgPool2d(1)) and a ResNet-class CNN (BasicBlocks, residual adds), exported with export_torch and its
static int8 QDQ version, compile for the native target and match onnxruntime on the same file within the
tolerance the compile step recorded, one sample at a time and as a batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgefleet.cloud.compress.quantize import quantize_static_int8
from edgefleet.compilers import export_torch
from edgefleet.compilers.compile import compile_bundle
from edgefleet.core.bundle import Bundle
from edgefleet.core.signing import SigningKey
from edgefleet.edge_runtime.backends.native import NativeBackend
from tests.compilers import edge_cnns

MODELS = ["efficient-lite", "resnet"]


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((48, 3, edge_cnns.SIZE, edge_cnns.SIZE)).astype(np.float32)


@pytest.fixture(scope="module")
def bundles(key: SigningKey, images: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """fp32 and int8 bundles of each model."""
    out: dict[str, Path] = {}
    for name in MODELS:
        folder = tmp_path_factory.mktemp(name)
        bundle = export_torch(edge_cnns.build(name), images[:4], folder / "fp32", name=name, version=1,
                              reference_data=images[:32], input_names=["image"], output_names=["logits"],
                              task="classification", signing_key=key)
        out[name] = bundle.root
        out[f"{name}-int8"] = quantize_static_int8(bundle.root, folder / "int8", images[:32],
                                                   signing_key=key).bundle.root
    return out


def compile_and_compare(source: Path, out: Path, key: SigningKey, x: np.ndarray) -> tuple[dict, float]:
    """The native artifact; asserts native within its recorded tolerance of onnxruntime on the source ONNX."""
    compiled = compile_bundle(source, ["native"], out, signing_key=key)
    (result,) = compiled.compiled
    artifact = result.artifact
    assert result.checked and artifact["numeric_error"]["decisions"]["agreed"] == artifact["numeric_error"][
        "decisions"]["compared"]
    bundle = Bundle.open(source)
    onnx_file = bundle.path(next(a for a in bundle.artifacts if a["format"] == "onnx")["path"])
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    want = session.run(None, {"image": x})[0]
    backend = NativeBackend()
    backend.load(compiled.bundle.path(artifact["path"]), {})
    one_by_one = np.concatenate([backend.run({"image": x[i:i + 1]})["logits"] for i in range(len(x))])
    batch = backend.run({"image": x})["logits"]
    atol, rtol = artifact["numeric_error"]["atol"], artifact["numeric_error"]["rtol"]
    for got in (one_by_one, batch):
        np.testing.assert_allclose(got, want, atol=atol, rtol=rtol)
    backend.close()
    return artifact, float(np.abs(one_by_one - want).max())


@pytest.mark.parametrize("name", MODELS)
def test_fp32_compiles_and_matches_onnxruntime(name: str, bundles: dict, key: SigningKey, images: np.ndarray,
                                               tmp_path: Path) -> None:
    artifact, error = compile_and_compare(bundles[name], tmp_path / "native", key, images[32:])
    ops, fused = artifact["compile"]["ops"], artifact["compile"]["fused"]
    assert "ReduceMean" not in ops and "BatchNormalization" not in ops and ops["GlobalAveragePool"] >= 1
    assert fused["ReduceMean as GlobalAveragePool"] == ops["GlobalAveragePool"]
    assert fused["Conv+Add"] == {"efficient-lite": 4, "resnet": 5}[name] and "Add" not in ops  # residuals
    if name == "efficient-lite":  # squeeze-excite and hard-swish blocks run as native ops
        assert ops["Sigmoid"] == 7 and ops["Mul"] == 7 and "HardSwish" not in ops
        assert fused["Conv+HardSwish"] == 10 and fused["Conv+Clip"] == 5  # ReLU6 is Clip(0, 6)
    assert error <= 1e-4


@pytest.mark.parametrize("name", MODELS)
def test_int8_qdq_compiles_to_integer_convs(name: str, bundles: dict, key: SigningKey, images: np.ndarray,
                                            tmp_path: Path) -> None:
    artifact, _ = compile_and_compare(bundles[f"{name}-int8"], tmp_path / "native", key, images[32:])
    ops = artifact["compile"]["ops"]
    assert artifact["precision"] == "int8" and "Conv" not in ops and "Gemm" not in ops
    assert ops["QConv"] == {"efficient-lite": 36, "resnet": 14}[name] and ops["QGemm"] == 1
    # residual adds (and efficient-lite's x * HardSigmoid(x)) run on the bytes, not as float islands
    assert "Add" not in ops and ops["QAdd"] == {"efficient-lite": 4, "resnet": 5}[name]
    assert ops.get("QMul", 0) == {"efficient-lite": 10, "resnet": 0}[name]
