"""Compression of a bundle imported from a user's ONNX file (compilers.import_model): static int8 (with
the calibration method chosen without labels), dynamic int8 and fp16 give the same kind of bundle and
the same report as for a bundle exported from torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgefleet.cloud.compress.evaluate import AGREEMENT, onnx_outputs
from edgefleet.cloud.compress.quantize import convert_fp16, quantize_dynamic_int8, quantize_static_int8
from edgefleet.cloud.compress.report import build_report, measure, to_json
from edgefleet.cloud.training import FitOptions, fit_classifier
from edgefleet.compilers import export_torch
from edgefleet.compilers.import_model import import_model
from edgefleet.core.signing import SigningKey
from edgefleet.edge_runtime.predictor import Predictor
from tests.compilers.import_kit import TinyMobileNet, export
from tests.natural_images import CALIBRATION_PHOTOS, VALIDATION_PHOTOS, crops

pytestmark = pytest.mark.slow
PHOTOS = (*CALIBRATION_PHOTOS, *VALIDATION_PHOTOS[:2])  # ten photos, ten classes


def images(photos: tuple[str, ...], count: int, seed: int) -> np.ndarray:
    return ((crops(photos, count, seed=seed, size=32).astype(np.float32) - 127.0) / 128.0).transpose(0, 3, 1, 2)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """(imported bundle, exported bundle) of one trained MobileNetV2-style CNN, and natural-image data.
    The task: which of ten photos a 32x32 crop comes from (crops() takes the photos in turn)."""
    work = tmp_path_factory.mktemp("imported")
    x_train = images(PHOTOS, 1000, seed=0)
    torch.manual_seed(0)
    model = TinyMobileNet()
    fit_classifier(model, x_train, np.arange(len(x_train)) % len(PHOTOS), FitOptions(epochs=8, lr=3e-3))
    model.eval()
    onnx_file = export(model, (torch.from_numpy(x_train[:2]),), work / "mobilenet.onnx", ["image"], ["logits"],
                       ({0: torch.export.Dim("batch", min=1)},))
    calibration = images(PHOTOS, 128, seed=1)
    imported = import_model(onnx_file, work / "imported", name="mobilenet", version=1,
                            reference_data={"image": calibration}, task="classification")
    exported = export_torch(model, calibration[:2], work / "exported", name="mobilenet", version=1,
                            reference_data=calibration, input_names=["image"], output_names=["logits"],
                            task="classification")
    _, public_key = KEY.save(work, "release")
    data = {"public_key": public_key, "calibration": calibration, "validation": images(PHOTOS, 200, seed=2),
            "test": images(PHOTOS, 200, seed=3)}
    return imported, exported, data


KEY = SigningKey.generate()
STAGES = {
    "static": lambda b, out, d: quantize_static_int8(b, out, d["calibration"], method="auto",
                                                     eval_data=(d["validation"], None), signing_key=KEY),
    "dynamic": lambda b, out, d: quantize_dynamic_int8(b, out, eval_data=(d["validation"], None), signing_key=KEY),
    "fp16": lambda b, out, d: convert_fp16(b, out, eval_data=(d["validation"], None), signing_key=KEY),
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_an_imported_bundle_compresses_like_an_exported_one(bundles, tmp_path, stage):
    imported, exported, data = bundles
    float_top1 = onnx_outputs(imported.path(imported.artifacts[0]["path"]), data["validation"]).argmax(1)
    assert len(set(float_top1)) >= 3  # the float model's decisions vary: agreement is not trivially 1
    results = {kind: STAGES[stage](bundle, tmp_path / kind, data)
               for kind, bundle in (("imported", imported), ("exported", exported))}
    steps = {kind: r.bundle.manifest["lineage"]["steps"][-1] for kind, r in results.items()}
    artifacts = {kind: r.bundle.artifacts[0] for kind, r in results.items()}
    assert set(steps["imported"]) == set(steps["exported"])  # the same record, field for field
    assert set(artifacts["imported"]) == set(artifacts["exported"])
    for result in results.values():
        assert result.metric == AGREEMENT and 0.8 <= result.quantized_accuracy <= 1.0
        assert result.float_accuracy == 1.0 and result.size_ratio > 1.2  # ~10k weights: Q/DQ overhead shows
        step = result.bundle.manifest["lineage"]["steps"][-1]
        assert step["accuracy"]["metric"] == AGREEMENT and "top-1 agreement" in step["accuracy"]["note"]
    if stage == "static":  # each calibration method scored without labels, the best one kept
        for result in results.values():
            scores = result.calibration["scores"]
            assert set(scores) == {"MinMax", "Entropy", "Percentile"}
            best = max(s[AGREEMENT] for s in scores.values())
            assert scores[result.calibration["chosen"]][AGREEMENT] == best
            assert result.bundle.artifacts[0]["quantization"]["method"] == result.calibration["chosen"]

    # The imported bundle's new version loads and passes its self-test on the device runtime.
    with Predictor(results["imported"].bundle.root, trusted_keys=[data["public_key"]]) as predictor:
        assert predictor.self_test().passed

    # The compression report, without labels: agreement with the float model, named as such.
    float_path = imported.path(imported.artifacts[0]["path"])
    reference = onnx_outputs(float_path, data["test"])
    report = build_report([
        measure("float", imported, data["test"], None, reference_outputs=reference, latency_runs=5,
                throughput_runs=2),
        measure(stage, results["imported"].bundle, data["test"], None, reference_outputs=reference, latency_runs=5,
                throughput_runs=2),
    ])
    document = to_json(report)
    assert document["metric"] == AGREEMENT and "top-1 agreement" in document["note"]
    assert document["steps"][0]["measurement"]["metrics"]["accuracy"] == 1.0
    agreement = document["steps"][1]["measurement"]["metrics"]["accuracy"]
    assert agreement == document["steps"][1]["measurement"]["numeric_error"]["argmax_agreement"]
