"""`edgefleet predict` and `edgefleet bench` in each task's own terms (issue 12), as a user runs them: a real
subprocess on real bundles exported from torch (tests/edge_runtime/task_kit.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgefleet.core.answers import task_answer
from edgefleet.core.bundle import Bundle
from edgefleet.edge_runtime.predictor import Predictor
from tests.cli.test_bundle_commands import assert_user_error, edgefleet
from tests.edge_runtime import task_kit


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    return {task: task_kit.build(task, tmp_path_factory.mktemp(task)) for task in
            ("classification", "regression", "embedding", "detection", "other")}


def run_predict(built: task_kit.TaskBundle, folder, *extra: str):
    np.savez(folder / "x.npz", **built.sample)
    return edgefleet("predict", str(built.root), "--trust", str(built.public_key), "--input", str(folder / "x.npz"),
                     *extra)


def expected(built: task_kit.TaskBundle, **options) -> dict:
    """The answer the library gives (core/answers.py), to hold the printed table against."""
    from edgefleet.core.answers import AnswerOptions

    with Predictor(built.root, trusted_keys=[built.public_key]) as predictor:
        outputs = predictor.predict(built.sample)
    opened = Bundle.open(built.root)
    return task_answer(opened.manifest["interface"], opened.outputs, outputs, AnswerOptions(**options))


def test_predict_prints_a_classifiers_top_k(bundles, tmp_path):
    built = bundles["classification"]
    result = run_predict(built, tmp_path, "--top-k", "3")
    assert result.returncode == 0, result.stderr
    assert "3 predictions (onnxruntime)" in result.stdout
    for row in expected(built, top_k=3)["top_k"]:
        assert " ".join(c["class"] for c in row) in result.stdout
        assert " ".join(f"{c['score']:.3f}" for c in row) in result.stdout


def test_predict_prints_regression_values_and_no_class(bundles, tmp_path):
    built = bundles["regression"]
    result = run_predict(built, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "4 predictions (onnxruntime)" in result.stdout and "value" in result.stdout
    for sample in expected(built)["values"]:
        assert f"{sample['value']:.4g}" in result.stdout
    assert "class" not in result.stdout and "confidence" not in result.stdout
    assert_user_error(run_predict(built, tmp_path, "--top-k", "2"),
                      "top_k does not apply to this model: its task is regression")
    np.save(tmp_path / "y.npy", np.zeros(4))
    assert_user_error(run_predict(built, tmp_path, "--labels", str(tmp_path / "y.npy")),
                      "--labels needs a classifier; this bundle's task is regression")


def test_predict_prints_embedding_norms_normalized_on_request(bundles, tmp_path):
    built = bundles["embedding"]
    result = run_predict(built, tmp_path, "--normalize")
    assert result.returncode == 0, result.stderr
    assert "vector (normalized)" in result.stdout
    for embedding in expected(built, normalize=True)["embeddings"]:
        assert f"{embedding['norm']:.4g}" in result.stdout


def test_predict_prints_detection_counts_and_the_best_one(bundles, tmp_path):
    built = bundles["detection"]
    result = run_predict(built, tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"detections (score >= {task_kit.DETECTION_THRESHOLD:g})" in result.stdout
    lines = [line for line in result.stdout.splitlines() if line.startswith("│")]
    for line, found in zip(lines, expected(built)["detections"], strict=True):
        cells = [cell.strip() for cell in line.strip("│").split("│")]
        assert cells[1] == str(len(found)) and cells[2].startswith(f"score {found[0]['score']:.4g}, box [")


def test_predict_other_counts_samples_on_the_batch_axis_and_shows_the_raw_shapes(bundles, tmp_path):
    result = run_predict(bundles["other"], tmp_path)  # x [5 steps, 2 batch, 8], state [2 layers, 2 batch, 16]
    assert result.returncode == 0, result.stderr
    assert "2 predictions (onnxruntime); outputs y (5, 2, 16), next_state (2, 2, 16)" in result.stdout


def test_predict_refuses_a_top_k_below_one(bundles, tmp_path):
    assert_user_error(run_predict(bundles["classification"], tmp_path, "--top-k", "0"),
                      "top_k must be a positive integer, got 0")


def test_bench_rows_carry_each_backends_quality(bundles, tmp_path):
    pytest.importorskip("openvino")
    built = bundles["regression"]
    result = edgefleet("bench", str(built.root), "--trust", str(built.public_key), "--backend", "onnxruntime,openvino",
                       "--runs", "16", "--json", str(tmp_path / "bench.json"))
    assert result.returncode == 0, result.stderr
    reports = json.loads((tmp_path / "bench.json").read_text())
    assert [r["entry"] for r in reports] == ["onnxruntime", "openvino"]
    for report in reports:
        assert report["quality"]["task"] == "regression" and report["quality"]["max_abs_error"] < 1e-4
        assert "max_rel_error" in report["quality"]
    assert "quality vs golden" in result.stdout and result.stdout.count("max abs error") == 2
