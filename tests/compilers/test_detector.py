"""A detector with a dynamic height and width end to end (issue 12): an FCOS-style model (import_kit.TinyDetector:
boxes [batch, D, 4] and scores [batch, D], D set by H and W), both exported from torch and imported as an ONNX
file; each is verified, predicts at two image sizes like onnxruntime on its file, self-tests, compiles for
onnxruntime-cpu, openvino-cpu and native (which refuses the decode ops by name), and is benchmarked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from edgefleet.compilers.compile import compile_bundle
from edgefleet.compilers.export import export_torch
from edgefleet.compilers.import_model import import_model
from edgefleet.core.bundle import Bundle
from edgefleet.core.signing import SigningKey, TrustStore
from edgefleet.edge_runtime.predictor import Predictor
from tests.cli.test_bundle_commands import edgefleet
from tests.compilers.import_kit import TinyDetector, detector_onnx

SIZES = [(64, 96), (70, 50)]  # H != W, neither a multiple of the other; 70x50 is not a multiple of the stride
TARGETS = ["onnxruntime-cpu", "openvino-cpu", "native"]


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((8, 3, 64, 96)).astype(np.float32)


@pytest.fixture(scope="module", params=["export", "import"])
def detector(request, tmp_path_factory, key, images) -> tuple[Bundle, Path]:
    """(bundle, its ONNX file): export_torch with dynamic height and width, or import_model of the ONNX file."""
    work = tmp_path_factory.mktemp(request.param)
    if request.param == "export":
        torch.manual_seed(0)
        bundle = export_torch(TinyDetector().eval(), torch.from_numpy(images[:2]), work / "b", name="detector",
                              version=1, input_names=["image"], output_names=["boxes", "scores"],
                              dynamic_axes={"image": {2: "height", 3: "width"}}, reference_data=images,
                              task="detection", signing_key=key)
    else:
        bundle = import_model(detector_onnx(work / "detector.onnx"), work / "b", name="detector", version=1,
                              reference_data={"image": images}, task="detection", signing_key=key)
    return bundle, bundle.path(bundle.artifacts[0]["path"])


def _file(path: Path, image: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip(["boxes", "scores"], session.run(["boxes", "scores"], {"image": image}), strict=True))


def _sized(height: int, width: int, rows: int = 3) -> np.ndarray:
    return np.random.default_rng(height * width).standard_normal((rows, 3, height, width)).astype(np.float32)


def test_schema_has_distinct_height_and_width_and_the_task_is_detection(detector, key):
    bundle, _ = detector
    Bundle.open(bundle.root).verify(TrustStore([key.public_key]))
    assert [s.shape for s in bundle.inputs] == [("batch", 3, "height", "width")]
    boxes, scores = bundle.outputs
    assert (boxes.name, scores.name) == ("boxes", "scores") and boxes.shape[0] == scores.shape[0] == "batch"
    assert boxes.shape[2] == 4 and isinstance(boxes.shape[1], str) and boxes.shape[1] == scores.shape[1]
    assert bundle.manifest["interface"]["task"] == "detection" and bundle.manifest["golden"]["count"] == 8


def test_predicts_at_two_sizes_like_onnxruntime_on_the_file_and_self_tests(detector, key):
    bundle, path = detector
    with Predictor(bundle.root, trusted_keys=TrustStore([key.public_key])) as predictor:
        for height, width in SIZES:
            image = _sized(height, width)
            got, want = predictor.predict(image), _file(path, image)
            cells = -(-height // 8) * -(-width // 8)
            assert got["boxes"].shape == (3, cells, 4) and got["scores"].shape == (3, cells)
            for name in ("boxes", "scores"):
                assert np.array_equal(got[name], want[name]), name  # the same runtime on the same file
        assert predictor.self_test().passed


def test_compiles_for_onnxruntime_and_openvino_and_native_refuses_by_name(detector, key, tmp_path):
    bundle, path = detector
    result = compile_bundle(bundle.root, TARGETS, tmp_path / "c", signing_key=key)
    assert [c.target for c in result.compiled] == ["onnxruntime-cpu", "openvino-cpu"]
    assert all(c.checked and c.artifact["numeric_error"]["samples"] == 8 for c in result.compiled)
    for compiled in result.compiled:  # the detector's own measure beside the numeric error
        quality = compiled.artifact["numeric_error"]["quality"]
        assert quality["task"] == "detection" and quality["count_agreement"] == 1.0, quality
    (refusal,) = result.refused
    assert refusal.target == "native" and "the model uses what the native backend does not run" in refusal.reason
    assert "Range" in refusal.reason  # the grid (ReduceMax, the best class, runs natively since issue 13)
    assert "Sigmoid" not in refusal.reason  # the score's op runs natively
    trust = TrustStore([key.public_key])
    for target in ("onnxruntime-cpu", "openvino-cpu"):
        with Predictor(result.bundle.root, backends=[target], trusted_keys=trust) as predictor:
            for height, width in SIZES:
                image = _sized(height, width)
                got, want = predictor.predict(image), _file(path, image)
                assert np.allclose(got["boxes"], want["boxes"], atol=1e-3, rtol=1e-5), (target, height, width)
                assert np.allclose(got["scores"], want["scores"], atol=1e-5), (target, height, width)
            assert predictor.self_test().passed, target


def test_cli_bench_runs_the_detector_on_each_backend(detector, key, tmp_path):
    bundle, _ = detector
    _, public = key.save(tmp_path, "signer")
    compiled = compile_bundle(bundle.root, ["openvino-cpu"], tmp_path / "c", signing_key=key).bundle
    result = edgefleet("bench", str(compiled.root), "--trust", str(public), "--backend", "onnxruntime,openvino",
                       "--batch", "1,2", "--runs", "20", "--json", str(tmp_path / "bench.json"))
    assert result.returncode == 0, result.stderr
    reports = json.loads((tmp_path / "bench.json").read_text())
    assert [(r["entry"], r["status"]) for r in reports] == [("onnxruntime", "measured"), ("openvino", "measured")]
    for report in reports:
        assert [r["batch"] for r in report["results"]] == [1, 2] and all(r["runs"] == 20 for r in report["results"])


def test_cli_verify_and_predict_at_another_size_and_a_wrong_image_is_one_error(detector, key, tmp_path):
    bundle, path = detector
    _, public = key.save(tmp_path, "signer")
    trust = ["--trust", str(public)]
    verified = edgefleet("verify", str(bundle.root), *trust)
    assert verified.returncode == 0 and "self-test passed on 8 golden examples" in verified.stdout, verified.stderr
    image = _sized(70, 50, rows=2)
    np.save(tmp_path / "image.npy", image)
    predicted = edgefleet("predict", str(bundle.root), "--input", str(tmp_path / "image.npy"), "--output",
                          str(tmp_path / "out.npz"), *trust)
    assert predicted.returncode == 0, predicted.stderr
    with np.load(tmp_path / "out.npz") as got:
        want = _file(path, image)
        assert got["boxes"].shape == (2, 63, 4) and np.array_equal(got["scores"], want["scores"])
    np.save(tmp_path / "gray.npy", image[:, :1])
    refused = edgefleet("predict", str(bundle.root), "--input", str(tmp_path / "gray.npy"), *trust)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "image" in refused.stderr and "axis 1 must be 3" in refused.stderr, refused.stderr
