"""Export from torch into a bundle, checked against the torch model, on the real digits data."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from edgefleet.compilers import export_torch
from edgefleet.core.bundle import Bundle
from edgefleet.core.errors import ExportError
from edgefleet.core.profile import extract_features
from edgefleet.core.signing import SigningKey, TrustStore
from edgefleet.cpp_ext.reference import histogram_update_reference
from tests.compilers.import_kit import RecurrentStep


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


# the export front: any dynamic axis, one ExportError per failure, nothing left behind -------------------
class Attention(torch.nn.Module):
    """timm's ViT Attention block (qkv in one Linear, scaled dot product), with a key padding mask."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.qkv, self.proj = heads, torch.nn.Linear(dim, dim * 3), torch.nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        mask = keep[:, None, None, :].to(torch.bool)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class TinyTextEncoder(torch.nn.Module):
    """A one-block pre-norm transformer encoder (timm's Block) over token ids, mean-pooled under the mask:
    ~25k parameters."""

    def __init__(self, vocab: int = 100, dim: int = 32, max_tokens: int = 64) -> None:
        super().__init__()
        self.tokens, self.positions = torch.nn.Embedding(vocab, dim), torch.nn.Embedding(max_tokens, dim)
        self.norm1, self.attn = torch.nn.LayerNorm(dim), Attention(dim, heads=4)
        self.norm2 = torch.nn.LayerNorm(dim)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, 2 * dim), torch.nn.GELU(), torch.nn.Linear(2 * dim, dim))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.tokens(input_ids) + self.positions(positions)[None]
        x = x + self.attn(self.norm1(x), attention_mask)
        x = x + self.mlp(self.norm2(x))
        keep = attention_mask[..., None].to(x.dtype)
        return (x * keep).sum(1) / keep.sum(1).clamp(min=1.0)


def _text_examples(batch: int, tokens: int, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (batch, tokens), generator=generator)
    mask = torch.ones(batch, tokens, dtype=torch.int64)
    mask[0, tokens // 2:] = 0  # one padded sequence
    return {"input_ids": ids, "attention_mask": mask}


def test_a_text_encoder_exported_with_32_tokens_takes_16(tmp_path):
    from edgefleet.edge_runtime.predictor import Predictor

    torch.manual_seed(0)
    model, key = TinyTextEncoder().eval(), SigningKey.generate()
    tokens = {"input_ids": {1: "tokens"}, "attention_mask": {1: "tokens"}}
    bundle = export_torch(model, _text_examples(2, 32), tmp_path / "b", name="text", version=1, signing_key=key,
                          input_names=["input_ids", "attention_mask"], output_names=["sentence"],
                          dynamic_axes=tokens, task="embedding")
    assert [(s.name, s.dtype, s.shape) for s in bundle.inputs] == [
        ("input_ids", "int64", ("batch", "tokens")), ("attention_mask", "int64", ("batch", "tokens"))]
    assert bundle.manifest["interface"]["task"] == "embedding"
    assert bundle.manifest["interface"]["postprocess"] == "none"
    short = _text_examples(3, 16, seed=1)
    with torch.no_grad():
        want = model(**short).numpy()
    with Predictor(bundle.root, trusted_keys=TrustStore([key.public_key])) as predictor:
        got = predictor.predict({k: v.numpy() for k, v in short.items()})["sentence"]
        assert predictor.self_test().passed
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)


def test_an_output_named_like_an_exporter_value_is_one_error_and_a_rerun_works(tmp_path):
    torch.manual_seed(0)
    model, examples = TinyTextEncoder().eval(), _text_examples(2, 8)
    with pytest.raises(ExportError, match=r"Duplicate definition of name \(embedding\).*output name\(s\) "
                                          r"'embedding' are also names the exporter gave its own values"):
        export_torch(model, examples, tmp_path / "b", name="text", version=1, output_names=["embedding"])
    assert list(tmp_path.iterdir()) == []  # no partial bundle, no staging directory
    bundle = export_torch(model, examples, tmp_path / "b", name="text", version=1, output_names=["sentence"])
    assert [s.name for s in bundle.outputs] == ["sentence"] and sorted(p.name for p in tmp_path.iterdir()) == ["b"]


@pytest.mark.parametrize(
    ("examples", "message"),
    [
        ("hello", "example inputs must be a tensor, a sequence of tensors or a mapping name -> tensor; got a str"),
        ([1, 2, 3], "example input #0 is an int, not a tensor"),
        ((torch.randn(2, 4), [1, 2]), "example input #1 is a list of int, not a tensor"),
        ({"x": torch.randn(2, 4), "y": {"a": 1}}, "example input 'y' is a dict, not a tensor"),
        ({"x": np.array([["a", "b"]]), "y": torch.randn(2, 2)}, "example input 'x' is a numpy array of dtype <U1"),
    ],
)
def test_a_non_tensor_example_input_is_one_error_naming_it(tmp_path, examples, message):
    with pytest.raises(ExportError, match=re.escape(message)):
        export_torch(TwoInputs(), examples, tmp_path / "b", name="t", version=1)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("dynamic_axes", "task", "message"),
    [
        ({"z": {1: "n"}}, None, "dynamic_axes names 'z', not an input of the model (inputs: 'x', 'y')"),
        ({"x": {2: "n"}}, None, "dynamic_axes['x']: axis 2 is not an axis of its 2-dimensional example"),
        ({"x": {1: "two words"}}, None, "a dimension name is an identifier such as 'tokens'"),
        (None, "ranking", "task must be one of classification, regression, embedding, detection, other"),
    ],
)
def test_bad_dynamic_axes_and_task_are_refused_before_export(tmp_path, dynamic_axes, task, message):
    with pytest.raises(ExportError, match=re.escape(message)):
        export_torch(TwoInputs(), (torch.randn(2, 4), torch.randn(2, 2)), tmp_path / "b", name="t", version=1,
                     input_names=["x", "y"], dynamic_axes=dynamic_axes, task=task)
    assert list(tmp_path.iterdir()) == []


def test_a_state_input_keeps_batch_off_axis_0_and_an_axis_the_exporter_fixes_is_named(tmp_path):
    torch.manual_seed(0)
    examples = (torch.randn(5, 3, 8), torch.randn(2, 3, 16))
    state_axes = {"x": {0: None, 1: "batch"}, "state": {0: None, 1: "batch"}}
    bundle = export_torch(RecurrentStep(), examples, tmp_path / "b", name="gru", version=1,
                          input_names=["x", "state"], output_names=["y", "next_state"], dynamic_axes=state_axes)
    assert [s.shape for s in bundle.inputs] == [(5, "batch", 8), (2, "batch", 16)]
    assert [s.shape for s in bundle.outputs] == [(5, "batch", 16), (2, "batch", 16)]
    # torch's GRU is unrolled over its steps: asking for a dynamic steps axis must not give a schema that lies
    steps_axes = {"x": {0: "steps", 1: "batch"}, "state": {0: None, 1: "batch"}}
    with pytest.raises(ExportError, match=r"does not take another size on the dynamic axis 'steps' \(x\[0\]\): the "
                                          r"exporter fixed it"):
        export_torch(RecurrentStep(), examples, tmp_path / "c", name="gru", version=1, input_names=["x", "state"],
                     dynamic_axes=steps_axes)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
