"""Issue 13's done-when on edge models beyond CNNs (tests/compilers/edge_models.py): a DS-CNN keyword
spotter on MFCC-like features, a dense autoencoder trained on scikit-learn's digits, a small transformer
encoder on token ids and an attention mask, the M5 Conv1d audio model on raw waveforms, and CRNN keyword
spotters (Conv2d front end, a bidirectional GRU or an LSTM, Linear) on MFCC-like features. Each is
exported with export_torch, quantized with the project's static int8 QDQ path, compiled for the native
target (the compile step checks its golden examples), and must match onnxruntime on the same ONNX within
the tolerance the compile step recorded, one row at a time and as a batch; int8 classifiers must give
onnxruntime's top-1 on every golden example."""

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
from tests.compilers import edge_models

MODELS = ["ds-cnn", "autoencoder", "transformer", "m5", "crnn", "crnn-lstm"]
CELLS = {"crnn": "GRU", "crnn-lstm": "LSTM"}


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture(scope="module")
def data() -> dict[str, dict[str, np.ndarray]]:
    return {name: edge_models.inputs(name, 48) for name in MODELS}


def export(name: str, rows: dict[str, np.ndarray], folder: Path, key: SigningKey) -> Bundle:
    first = {k: v[:4] for k, v in rows.items()}
    task = edge_models.TASKS.get(name, "classification")
    return export_torch(edge_models.build(name), first, folder, name=name, version=1,
                        reference_data={k: v[:32] for k, v in rows.items()}, input_names=list(rows),
                        output_names=[edge_models.OUTPUTS.get(name, "logits")], task=task, signing_key=key,
                        dynamic_axes={k: {} for k in rows}, golden_count=16)


@pytest.fixture(scope="module")
def bundles(key: SigningKey, data: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for name in MODELS:
        folder = tmp_path_factory.mktemp(name)
        out[name] = export(name, data[name], folder / "fp32", key).root
        calibration = {k: v[:32] for k, v in data[name].items()}
        if len(calibration) == 1:
            calibration = next(iter(calibration.values()))
        out[f"{name}-int8"] = quantize_static_int8(out[name], folder / "int8", calibration,
                                                   signing_key=key).bundle.root
    return out


def compile_and_compare(source: Path, out: Path, key: SigningKey, rows: dict[str, np.ndarray]) -> tuple[dict, float]:
    """The native artifact; asserts native within its recorded tolerance of onnxruntime on the source ONNX."""
    compiled = compile_bundle(source, ["native"], out, signing_key=key)
    (result,) = compiled.compiled
    artifact = result.artifact
    assert result.checked
    if Bundle.open(source).manifest["interface"].get("task") == "classification":  # same top-1, every golden row
        decisions = artifact["numeric_error"]["decisions"]
        assert decisions["agreed"] == decisions["compared"] > 0
    bundle = Bundle.open(source)
    onnx_file = bundle.path(next(a for a in bundle.artifacts if a["format"] == "onnx")["path"])
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    output = session.get_outputs()[0].name
    want = session.run(None, rows)[0]
    backend = NativeBackend()
    backend.load(compiled.bundle.path(artifact["path"]), {})
    count = len(next(iter(rows.values())))
    one_by_one = np.concatenate([backend.run({k: v[i:i + 1] for k, v in rows.items()})[output] for i in range(count)])
    batch = backend.run(rows)[output]
    backend.close()
    atol, rtol = artifact["numeric_error"]["atol"], artifact["numeric_error"]["rtol"]
    for got in (one_by_one, batch):
        np.testing.assert_allclose(got, want, atol=atol, rtol=rtol)
    return artifact, float(np.abs(one_by_one - want).max())


@pytest.mark.parametrize("name", MODELS)
def test_fp32_compiles_and_matches_onnxruntime(name: str, bundles: dict, key: SigningKey, data: dict,
                                               tmp_path: Path) -> None:
    rows = {k: v[32:] for k, v in data[name].items()}
    artifact, error = compile_and_compare(bundles[name], tmp_path / "native", key, rows)
    ops = artifact["compile"]["ops"]
    if name == "transformer":  # the encoder's own ops run natively, none left to onnxruntime
        assert {"Gather", "LayerNormalization", "Gelu", "MatMul", "Softmax", "Where", "Equal", "ReduceSum"} <= set(ops)
    if name == "m5":  # Conv1d and MaxPool1d as their 2-D forms, BatchNorm1d folded
        fused = artifact["compile"]["fused"]
        assert fused["Conv1d as 2-D"] == 4 and fused["MaxPool1d as 2-D"] == 4 and "BatchNormalization" not in ops
    if name in CELLS:  # the recurrent cell runs natively, the batch-sized zero state and reshape folded away
        assert ops[CELLS[name]] == 1 and "Shape" not in ops and "Expand" not in ops
    assert error <= 1e-4


@pytest.mark.parametrize("name", MODELS)
def test_int8_qdq_compiles_and_matches_onnxruntime(name: str, bundles: dict, key: SigningKey, data: dict,
                                                   tmp_path: Path) -> None:
    rows = {k: v[32:] for k, v in data[name].items()}
    artifact, _ = compile_and_compare(bundles[f"{name}-int8"], tmp_path / "native", key, rows)
    ops = artifact["compile"]["ops"]
    assert artifact["precision"] == "int8"
    if name in ("ds-cnn", "m5"):  # every conv runs in integer arithmetic
        assert "Conv" not in ops and ops["QConv"] >= 4
    if name == "autoencoder":
        assert "Gemm" not in ops and ops["QGemm"] == 4
    if name in CELLS:  # onnxruntime's quantizer leaves the cell in float: DequantizeLinear before, Quantize after
        assert ops[CELLS[name]] == 1 and ops["QConv"] == 2 and ops["QGemm"] == 1 and "Conv" not in ops
        assert ops["DequantizeLinear"] >= 1 and ops["QuantizeLinear"] >= 1
