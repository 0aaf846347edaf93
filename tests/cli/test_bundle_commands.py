"""The `edgefleet` command as a user runs it: a real subprocess, exit codes and messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def edgefleet(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    full_env.pop("EDGEFLEET_TRUST", None) if env is None or "EDGEFLEET_TRUST" not in env else None
    return subprocess.run(
        [sys.executable, "-m", "edgefleet.cli.main", *args],
        capture_output=True, text=True, timeout=300, env=full_env, cwd=cwd, check=False,
    )


def assert_user_error(result: subprocess.CompletedProcess, expected: str) -> None:
    """Exit code 2, one line on stderr saying what is wrong, no traceback."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout


@pytest.fixture
def trust(digits_bundle) -> list[str]:
    return ["--trust", str(digits_bundle.public_key)]


def test_keys_generate(tmp_path):
    result = edgefleet("keys", "generate", "--out", str(tmp_path / "k"), "--name", "fleet")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "k" / "fleet.key").is_file() and (tmp_path / "k" / "fleet.pub").is_file()
    assert "key id" in result.stdout
    again = edgefleet("keys", "generate", "--out", str(tmp_path / "k"), "--name", "fleet")
    assert_user_error(again, "refusing to overwrite a private key")


def test_inspect(digits_bundle):
    result = edgefleet("inspect", str(digits_bundle.root))
    assert result.returncode == 0, result.stderr
    assert "digits-cnn v1" in result.stdout and "pixels: float32[batch, 1, 8, 8]" in result.stdout
    manifest = json.loads(edgefleet("inspect", str(digits_bundle.root), "--json").stdout)
    assert manifest["name"] == "digits-cnn"


def test_verify_and_self_test(digits_bundle, trust):
    result = edgefleet("verify", str(digits_bundle.root), *trust)
    assert result.returncode == 0, result.stderr
    assert "verified digits-cnn v1" in result.stdout and "self-test passed on 8 golden examples" in result.stdout


def test_verify_reads_trust_from_environment(digits_bundle):
    result = edgefleet("verify", str(digits_bundle.root), "--no-self-test",
                       env={"EDGEFLEET_TRUST": str(digits_bundle.public_key.parent)})
    assert result.returncode == 0, result.stderr


def test_verify_tampered_bundle(bundle_copy, trust):
    (bundle_copy / "extra.bin").write_bytes(b"x")
    result = edgefleet("verify", str(bundle_copy), *trust)
    assert_user_error(result, "extra.bin is in the bundle but not in the manifest")


def test_verify_without_trust(digits_bundle):
    assert_user_error(edgefleet("verify", str(digits_bundle.root)), "no trusted keys")


def test_missing_bundle(tmp_path, trust):
    assert_user_error(edgefleet("verify", str(tmp_path / "nope"), *trust), "no bundle at")


def test_predict_npy_with_labels(digits_bundle, digits_splits, trust, tmp_path):
    np.save(tmp_path / "x.npy", digits_splits.x_test)
    np.save(tmp_path / "y.npy", digits_splits.y_test)
    result = edgefleet("predict", str(digits_bundle.root), *trust, "--input", str(tmp_path / "x.npy"),
                       "--labels", str(tmp_path / "y.npy"), "--output", str(tmp_path / "out.npz"))
    assert result.returncode == 0, result.stderr
    accuracy = float(result.stdout.split("accuracy:")[1].split()[0])
    assert accuracy > 0.9
    with np.load(tmp_path / "out.npz") as out:
        assert out["logits"].shape == (450, 10)


def test_predict_json_single_sample(digits_bundle, digits_splits, trust, tmp_path):
    (tmp_path / "one.json").write_text(json.dumps(digits_splits.x_test[0].tolist()))  # no batch axis
    result = edgefleet("predict", str(digits_bundle.root), *trust, "--input", str(tmp_path / "one.json"))
    assert result.returncode == 0, result.stderr
    assert "1 predictions" in result.stdout


def test_predict_wrong_dtype(digits_bundle, digits_splits, trust, tmp_path):
    np.save(tmp_path / "x64.npy", digits_splits.x_test[:3].astype(np.float64))
    result = edgefleet("predict", str(digits_bundle.root), *trust, "--input", str(tmp_path / "x64.npy"))
    assert_user_error(result, "input 'pixels': expected float32[batch, 1, 8, 8], got float64[3, 1, 8, 8]")


def test_predict_wrong_file_type(digits_bundle, trust, tmp_path):
    (tmp_path / "x.csv").write_text("1,2,3")
    result = edgefleet("predict", str(digits_bundle.root), *trust, "--input", str(tmp_path / "x.csv"))
    assert_user_error(result, "expected .npy, .npz or .json")


def test_bench_json_report(digits_bundle, trust, tmp_path):
    result = edgefleet("bench", str(digits_bundle.root), *trust, "--batch", "1,4", "--runs", "64",
                       "--threads", "1", "--compare-raw", "--json", str(tmp_path / "bench.json"))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "bench.json").read_text())
    assert [r["batch"] for r in report["results"]] == [1, 4]
    assert all(r["runs"] == 64 for r in report["results"])


def test_bench_several_backends_side_by_side(digits_bundle, trust, tmp_path):
    result = edgefleet("bench", str(digits_bundle.root), *trust, "--backend", "onnxruntime,onnx", "--batch", "1,2",
                       "--runs", "32", "--json", str(tmp_path / "bench.json"))
    assert result.returncode == 0, result.stderr
    assert "backends side by side" in result.stdout and "benchmarking onnx (2/2)" in result.stdout
    reports = json.loads((tmp_path / "bench.json").read_text())
    assert [r["entry"] for r in reports] == ["onnxruntime", "onnx"]  # a backend, then a target by name
    assert all([x["batch"] for x in r["results"]] == [1, 2] and r["memory"]["peak_rss_mb"] for r in reports)
    failed = edgefleet("bench", str(digits_bundle.root), *trust, "--backend", "onnxruntime,tflite", "--runs", "8")
    assert_user_error(failed, "--backend tflite: unknown backend 'tflite'")


def test_bench_bad_batch(digits_bundle, trust):
    assert_user_error(edgefleet("bench", str(digits_bundle.root), *trust, "--batch", "one"), "--batch")


def test_sign_then_verify(digits_bundle, bundle_copy, tmp_path):
    assert edgefleet("keys", "generate", "--out", str(tmp_path / "k")).returncode == 0
    result = edgefleet("sign", str(bundle_copy), "--key", str(tmp_path / "k" / "release.key"), "--days", "7")
    assert result.returncode == 0, result.stderr
    assert edgefleet("verify", str(bundle_copy), "--trust", str(tmp_path / "k"), "--no-self-test").returncode == 0
    old_key = edgefleet("verify", str(bundle_copy), "--trust", str(digits_bundle.public_key), "--no-self-test")
    assert_user_error(old_key, "not among the trusted keys")


def test_usage_error_exit_code():
    result = edgefleet("verify")
    assert result.returncode == 2 and "Traceback" not in result.stderr
