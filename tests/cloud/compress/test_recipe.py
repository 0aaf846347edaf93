"""Recipes: validation of TOML files, and real runs on the digits CNN and its signed bundle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgefleet.cloud.compress.recipe import RecipeError, load_recipe, make_recipe, run_recipe
from edgefleet.core.bundle import Bundle
from edgefleet.core.signing import SigningKey, TrustStore


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    return path


def test_a_valid_recipe(tmp_path):
    recipe = load_recipe(write(tmp_path, """
name = "digits-small"
[[step]]
method = "prune_channels"
amount = 0.5
fine_tune_epochs = 5
[[step]]
method = "quantize_static"
calibration_samples = 256
"""))
    assert recipe.name == "digits-small" and recipe.needs_torch
    assert [(s.method, dict(s.options)) for s in recipe.steps] == [
        ("prune_channels", {"amount": 0.5, "fine_tune_epochs": 5}),
        ("quantize_static", {"calibration_samples": 256}),
    ]



def test_a_recipe_asks_for_the_mixed_precision_gate(tmp_path):
    recipe = load_recipe(write(tmp_path, """
[[step]]
method = "quantize_static"
max_accuracy_drop = 0.03
gate_strategy = "prefix16"
"""))
    assert dict(recipe.steps[0].options) == {"max_accuracy_drop": 0.03, "gate_strategy": "prefix16"}

@pytest.mark.parametrize(("body", "message"), [
    ('[[step]]\nmethod = "prune_channels"\namount = 1.5', "step 1 (prune_channels) field 'amount': expected a number "
                                                          "between 0 and 1 (exclusive), got 1.5"),
    ('[[step]]\nmethod = "fp16"\n[[step]]\nmethod = "prune_unstructured"\namont = 0.3',
     "step 2 (prune_unstructured) field 'amont': unknown field"),
    ('[[step]]\nmethod = "prune_channels"', "step 1 (prune_channels) field 'amount': required"),
    ('[[step]]\nmethod = "quantise_static"', "step 1 field 'method': expected one of"),
    ('[[step]]\nmethod = "quantize_static"\ncalibration_samples = "many"',
     "step 1 (quantize_static) field 'calibration_samples': expected an integer >= 1, got 'many'"),
    ('[[step]]\nmethod = "quantize_static"\nrounding = "up"',
     "step 1 (quantize_static) field 'rounding': expected one of 'nearest', 'adaround', got 'up'"),
    ('[[step]]\nmethod = "quantize_static"\ngate_strategy = "best"',
     "step 1 (quantize_static) field 'gate_strategy': expected one of 'auto', 'rank', 'prefix', 'sensitivity'"),
    ('[[step]]\nmethod = "lowrank"\nenergy = 0.9\nrank = 4', "step 1 (lowrank) field 'rank': give only one of"),
    ('[[step]]\nmethod = "fp16"\n[[step]]\nmethod = "prune_channels"\namount = 0.5',
     "step 2 (prune_channels): torch steps must come before the ONNX steps (step 1 is fp16)"),
    ('[[step]]\nmethod = "distill"\nstudent = "nocolon"', "step 1 (distill) field 'student': expected 'module:"),
    ("", "at least one [[step]]"),
    ('[[steps]]\nmethod = "fp16"', "unknown top-level field 'steps'"),
    ("[[step]\n", "not valid TOML"),
])
def test_bad_recipes_name_the_step_and_field(tmp_path, body, message):
    with pytest.raises(RecipeError) as caught:
        load_recipe(write(tmp_path, body))
    assert message in str(caught.value)


def test_a_missing_step_implementation_is_named(digits_bundle, digits_splits, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "edgefleet.cloud.compress.quantize", None)  # import fails
    s = digits_splits
    recipe = make_recipe([{"method": "quantize_dynamic"}])
    with pytest.raises(RecipeError, match=r"step 1 \(quantize_dynamic\) not available"):
        run_recipe(recipe, bundle=digits_bundle.root, out_dir=tmp_path / "out",
                   data={"x_train": s.x_train, "y_train": s.y_train, "x_test": s.x_test, "y_test": s.y_test})


def test_torch_steps_need_a_model(digits_bundle, digits_splits, tmp_path):
    s = digits_splits
    with pytest.raises(RecipeError, match=r"step 1 \(prune_channels\) works on a torch model"):
        run_recipe(make_recipe([{"method": "prune_channels", "amount": 0.5}]), bundle=digits_bundle.root,
                   out_dir=tmp_path, data={"x_train": s.x_train, "y_train": s.y_train, "x_test": s.x_test,
                                           "y_test": s.y_test})


@pytest.fixture(scope="module")
def cnn(digits_splits):
    from edgefleet.cloud.digits import train_digits_cnn

    return train_digits_cnn(digits_splits, epochs=10)  # the model of the digits_bundle fixture (same seed)


@pytest.mark.slow
def test_prune_then_export_end_to_end(cnn, digits_bundle, digits_splits, tmp_path):
    s = digits_splits
    key = SigningKey.load(digits_bundle.private_key)
    before = {k: v.clone() for k, v in cnn.state_dict().items()}
    slices = {"low_digits": s.y_test < 5}
    recipe = make_recipe([{"method": "prune_channels", "amount": 0.5, "fine_tune_epochs": 5}])
    result = run_recipe(recipe, model=cnn, bundle=digits_bundle.root, out_dir=tmp_path / "out", signing_key=key,
                        data={"x_train": s.x_train, "y_train": s.y_train, "x_test": s.x_test, "y_test": s.y_test,
                              "slices": slices})
    assert all(torch.equal(v, before[k]) for k, v in cnn.state_dict().items())
    assert [step.method for step in result.steps] == ["prune_channels", "export"]
    prune_step = result.steps[0]
    assert prune_step.params_after < 0.6 * prune_step.params_before
    assert prune_step.flops_after < 0.6 * prune_step.flops_before
    assert prune_step.accuracy_after >= prune_step.accuracy_before - 0.03
    assert "low_digits" in prune_step.metrics_after["per_slice"]

    final = result.bundle
    assert final.name == "digits-cnn" and final.version == 2
    final.verify(TrustStore.from_paths([digits_bundle.public_key]))
    lineage = final.manifest["lineage"]
    assert lineage["parent"]["name"] == "digits-cnn" and lineage["parent"]["version"] == 1
    assert [step["stage"] for step in lineage["steps"]] == ["prune_channels", "export"]
    assert lineage["steps"][0]["options"]["amount"] == 0.5
    assert lineage["steps"][0]["options"]["fine_tune"]["epochs"] == 5
    assert final.artifacts[0]["flops_per_sample"] == prune_step.flops_after  # the same counter, the same number
    source = Bundle.open(digits_bundle.root)
    assert final.manifest["interface"]["inputs"] == source.manifest["interface"]["inputs"]
    assert final.manifest["metrics"]["eval"]["accuracy"] == pytest.approx(result.steps[1].accuracy_after)


@pytest.mark.slow
def test_prune_then_quantize(cnn, digits_bundle, digits_splits, tmp_path):
    pytest.importorskip("edgefleet.cloud.compress.quantize")
    s = digits_splits
    recipe = make_recipe([{"method": "prune_channels", "amount": 0.5, "fine_tune_epochs": 5},
                          {"method": "quantize_static", "calibration_samples": 256}])
    result = run_recipe(recipe, model=cnn, bundle=digits_bundle.root, out_dir=tmp_path / "out",
                        data={"x_train": s.x_train, "y_train": s.y_train, "x_test": s.x_test, "y_test": s.y_test})
    assert [step.method for step in result.steps] == ["prune_channels", "export", "quantize_static"]
    quantized = result.steps[-1]
    assert quantized.size_after < quantized.size_before and quantized.bundle == result.bundle.root
    assert quantized.accuracy_after >= result.steps[0].accuracy_before - 0.05
    assert (tmp_path / "out" / "export").is_dir() and (tmp_path / "out" / "02-quantize_static").is_dir()
    assert result.bundle.manifest["lineage"]["steps"][0]["stage"] == "prune_channels"
    if result.report is not None:  # report.py (written alongside) measures the source and both new bundles
        from edgefleet.cloud.compress.report import to_json

        assert len(to_json(result.report)["steps"]) == 3


@pytest.mark.slow
def test_cli_compress(digits_bundle, digits_splits, tmp_path):
    s = digits_splits
    np.savez(tmp_path / "data.npz", x_train=s.x_train, y_train=s.y_train, x_test=s.x_test, y_test=s.y_test,
             slice_zeros=s.y_test == 0)
    (tmp_path / "factory.py").write_text(
        "from edgefleet.cloud.digits import load_splits, train_digits_cnn\n\n\n"
        "def model():\n    return train_digits_cnn(load_splits(), epochs=3)\n")
    write(tmp_path, '[[step]]\nmethod = "prune_unstructured"\namount = 0.5\n')
    runner = ("import sys; from edgefleet.cli import compress_commands; from edgefleet.cli.main import main; "
              "sys.argv = ['edgefleet', *sys.argv[1:]]; main()")

    def edgefleet(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", runner, *args], capture_output=True, text=True, timeout=300,
                              cwd=tmp_path, env={**os.environ, "COLUMNS": "200"}, check=False)

    common = ["compress", str(digits_bundle.root), "--recipe", "recipe.toml", "--data", "data.npz"]
    missing = edgefleet(*common)
    assert missing.returncode == 2 and "pass --torch-model" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1

    done = edgefleet(*common, "--torch-model", "factory:model", "--key", str(digits_bundle.private_key),
                     "--out", "out", "--json", "steps.json", "--plot", "report.png")
    assert done.returncode == 0, done.stderr
    assert "prune_unstructured" in done.stdout and "final bundle" in done.stdout
    document = json.loads((tmp_path / "steps.json").read_text())
    assert document  # the report's JSON when report.py exists, else the steps
    assert (tmp_path / "report.png").stat().st_size > 0
    final = Bundle.open(next((tmp_path / "out").iterdir()))
    assert [step["stage"] for step in final.manifest["lineage"]["steps"]] == ["prune_unstructured", "export"]

    write(tmp_path, '[[step]]\nmethod = "prune_unstructured"\namount = 2\n')
    bad = edgefleet(*common, "--torch-model", "factory:model", "--out", "out2")
    assert bad.returncode == 2 and "step 1 (prune_unstructured) field 'amount'" in bad.stderr


@pytest.mark.slow
def test_cli_compress_without_labels(digits_bundle, digits_splits, tmp_path):
    """Data without y_train/y_test: static int8 is chosen and gated on agreement with the source model's
    decisions, the report says so; a torch step or half the labels is one line and exit 2."""
    s = digits_splits
    np.savez(tmp_path / "data.npz", x_train=s.x_train, x_test=s.x_test)
    write(tmp_path, '[[step]]\nmethod = "quantize_static"\nmax_accuracy_drop = 0.02\n')
    runner = ("import sys; from edgefleet.cli import compress_commands; from edgefleet.cli.main import main; "
              "sys.argv = ['edgefleet', *sys.argv[1:]]; main()")

    def edgefleet(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", runner, "compress", str(digits_bundle.root), "--recipe",
                               "recipe.toml", *args], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                              env={**os.environ, "COLUMNS": "200"}, check=False)

    done = edgefleet("--data", "data.npz", "--out", "out", "--json", "report.json")
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["metric"] == "top1_agreement_with_float" and "no labels" in report["note"]
    int8 = report["steps"][-1]["measurement"]["metrics"]
    assert int8["count"] == len(s.x_test) and int8["accuracy"] >= 0.98
    final = Bundle.open(next(p for p in (tmp_path / "out").iterdir() if p.is_dir()))
    step = final.manifest["lineage"]["steps"][-1]
    assert step["stage"] == "quantize" and step["gate"]["metric"] == "top1_agreement_with_float"
    assert step["accuracy"]["metric"] == "top1_agreement_with_float"

    write(tmp_path, '[[step]]\nmethod = "prune_unstructured"\namount = 0.5\n')
    (tmp_path / "factory.py").write_text("import torch\n\n\ndef model():\n    return torch.nn.Linear(64, 10)\n")
    torch_step = edgefleet("--data", "data.npz", "--torch-model", "factory:model", "--out", "out2")
    assert torch_step.returncode == 2 and "trains on labels" in torch_step.stderr, torch_step.stderr
    assert len(torch_step.stderr.strip().splitlines()) == 1

    write(tmp_path, '[[step]]\nmethod = "quantize_static"\n')
    np.savez(tmp_path / "half.npz", x_train=s.x_train, y_train=s.y_train, x_test=s.x_test)
    half = edgefleet("--data", "half.npz", "--out", "out3")
    assert half.returncode == 2 and "lacks y_test" in half.stderr and len(half.stderr.strip().splitlines()) == 1
