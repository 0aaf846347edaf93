"""Export from torch into a bundle, checked against the torch model, on the real digits data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgefleet.compilers import export_torch
from edgefleet.core.bundle import Bundle
from edgefleet.core.errors import ExportError
from edgefleet.core.profile import extract_features
from edgefleet.core.signing import SigningKey, TrustStore
from edgefleet.cpp_ext.reference import histogram_update_reference


def test_manifest_describes_the_model(digits_bundle):
    bundle = Bundle.open(digits_bundle.root)
    manifest = bundle.manifest
    assert (manifest["name"], manifest["version"]) == ("digits-cnn", 1)
    assert [s.to_dict() for s in bundle.inputs] == [{"name": "pixels", "dtype": "float32", "shape": ["batch", 1, 8, 8]}]
    assert [s.to_dict() for s in bundle.outputs] == [{"name": "logits", "dtype": "float32", "shape": ["batch", 10]}]
    artifact = manifest["artifacts"][0]
    assert artifact["sha256"] == manifest["files"]["model.onnx"]["sha256"]
    assert artifact["numeric_error"]["max_abs"] < 1e-4  # the figure
    assert artifact["numeric_error"]["samples"] == 512
    assert artifact["flops_per_sample"] > 100_000
    assert manifest["lineage"]["steps"][0]["stage"] == "export"
    assert manifest["lineage"]["dataset_fingerprint"].startswith("sha256:")
    assert manifest["metrics"]["eval"]["accuracy"] > 0.9  # real held-out digits
    assert set(manifest["metrics"]["eval"]["per_class"]) == {str(d) for d in range(10)}
    assert manifest["model_card"]["evaluation"]["eval"]["count"] == 450


def test_golden_examples_are_torch_outputs(digits_bundle, digits_splits):
    from edgefleet.cloud.digits import DigitsCNN  # noqa: F401 - the model class the fixture trained

    inputs, outputs, tolerance = Bundle.open(digits_bundle.root).golden()
    assert inputs["pixels"].shape == (8, 1, 8, 8)
    np.testing.assert_array_equal(inputs["pixels"], digits_splits.x_train[:8])
    assert outputs["logits"].shape == (8, 10)
    assert tolerance == {"atol": 1e-4, "rtol": 1e-3}


def test_reference_profile_matches_the_training_data(digits_bundle, digits_splits):
    profile = Bundle.open(digits_bundle.root).reference_profile()
    assert profile["count"] == len(digits_splits.x_train)
    feature = profile["features"][0]
    assert feature["kind"] == "channel_stats"
    assert feature["names"] == ["pixels.c0.mean", "pixels.c0.std"]
    edges = np.array(feature["edges"])
    expected = np.zeros((2, edges.shape[1] + 2), np.int64)
    histogram_update_reference(expected, extract_features(digits_splits.x_train, "channel_stats"), edges)
    np.testing.assert_array_equal(np.array(feature["counts"]), expected)
    assert sum(profile["predictions"]["counts"]) == len(digits_splits.x_train)
    assert sum(profile["confidence"]["counts"]) == len(digits_splits.x_train)


class TwoInputs(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(4, 3)
        self.b = torch.nn.Linear(2, 3)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.a(x) + self.b(y)


def test_two_inputs_batch_of_one_and_later_signing(tmp_path):
    model = TwoInputs()
    x, y = torch.randn(1, 4), torch.randn(1, 2)  # a batch of 1 must still give a symbolic batch axis
    bundle = export_torch(model, (x, y), tmp_path / "b", name="two", version=3, input_names=["x", "y"])
    assert [s.shape for s in bundle.inputs] == [("batch", 4), ("batch", 2)]
    assert not (bundle.root / "signature.json").exists()
    key = SigningKey.generate()
    from edgefleet.core.bundle import sign

    sign(bundle.root, key)
    assert Bundle.open(bundle.root).verify(TrustStore([key.public_key])).version == 3


def test_disagreement_over_tolerance_fails_with_numbers(tmp_path, digits_splits):
    from edgefleet.cloud.digits import DigitsCNN

    torch.manual_seed(0)
    with pytest.raises(ExportError, match=r"max abs error [0-9.e-]+, max rel error .*atol=0, rtol=0"):
        export_torch(DigitsCNN(), digits_splits.x_train[:4], tmp_path / "b", name="d", version=1,
                     reference_data=digits_splits.x_train[:64], atol=0.0, rtol=0.0)


def test_refuses_non_empty_output_dir(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "old.txt").write_text("x")
    with pytest.raises(ExportError, match="not empty"):
        export_torch(TwoInputs(), (torch.randn(2, 4), torch.randn(2, 2)), tmp_path / "b", name="t", version=1)


def test_manifest_is_json_with_sorted_files(digits_bundle):
    manifest = json.loads((digits_bundle.root / "manifest.json").read_text())
    assert list(manifest["files"]) == sorted(manifest["files"])
