"""The bench's per-task quality fields (issue 12) on real bundles exported from torch (task_kit.py): each
backend's outputs on the golden inputs against the golden outputs, in the task's own terms, in the JSON
report and the table; a bundle whose golden outputs are off shows it."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from rich.console import Console

from edgefleet.core.bundle import Bundle, read_manifest, sign, write_manifest
from edgefleet.core.signing import SigningKey, TrustStore
from edgefleet.edge_runtime import bench
from edgefleet.edge_runtime.bench import BenchOptions, run_bench
from edgefleet.edge_runtime.bench_tables import render_tables
from tests.edge_runtime import task_kit


@pytest.fixture(autouse=True)
def short_warmup(monkeypatch):
    monkeypatch.setattr(bench, "WARMUP_SECONDS", 0.01)


@pytest.fixture(scope="module")
def regression(tmp_path_factory):
    return task_kit.build("regression", tmp_path_factory.mktemp("regression"))


@pytest.fixture(scope="module")
def embedding(tmp_path_factory):
    return task_kit.build("embedding", tmp_path_factory.mktemp("embedding"))


def measure(built: task_kit.TaskBundle, backend: str | None = None) -> dict:
    trust = TrustStore.from_paths([built.public_key])
    return run_bench(built.root, trust, BenchOptions(backend=backend, runs=8, threads=1))


def rendered(report: dict) -> str:
    console = Console(width=200, record=True)
    for table in render_tables(report):
        console.print(table)
    return console.export_text()


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_a_regression_bundle_reports_its_errors_per_backend(regression, backend):
    pytest.importorskip(backend)
    report = measure(regression, backend)
    quality = report["quality"]
    assert report["backend"] == backend and quality["task"] == "regression" and quality["examples"] == 8
    assert set(quality) == {"task", "examples", "max_abs_error", "max_rel_error"}  # no class, no agreement
    assert 0 <= quality["max_abs_error"] < 1e-4  # onnxruntime and OpenVINO f32 against torch
    assert quality["max_rel_error"] >= 0
    assert f"max abs error {quality['max_abs_error']:.3g}" in rendered(report)


def test_an_embedding_bundle_reports_its_cosine(embedding):
    report = measure(embedding)
    quality = report["quality"]
    assert set(quality) == {"task", "examples", "min_cosine", "max_abs_error"} and quality["examples"] == 4
    assert 0.99999 < quality["min_cosine"] <= 1.0 + 1e-9
    assert quality["max_abs_error"] < 1e-4
    text = rendered(report)
    assert f"min cosine {quality['min_cosine']:.6f}" in text and "(embedding, 4 examples)" in text


def test_golden_outputs_that_are_off_show_in_the_quality(regression, tmp_path):
    root = shutil.copytree(regression.root, tmp_path / "b")
    inputs, outputs, _tolerance = Bundle.open(root).golden()
    outputs["value"] = outputs["value"] + np.float32(0.5)  # as if the model had changed since
    np.savez(root / "golden.npz", **{f"inputs/{k}": v for k, v in inputs.items()},
             **{f"outputs/{k}": v for k, v in outputs.items()})
    write_manifest(root, read_manifest(root))
    sign(root, SigningKey.load(regression.public_key.with_suffix(".key")))
    report = measure(task_kit.TaskBundle(root, regression.public_key, regression.sample))
    assert report["quality"]["max_abs_error"] == pytest.approx(0.5, abs=1e-4)
