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
    assert "with onnxruntime" in result.stdout  # no --backend: an ONNX bundle's default is onnxruntime


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
    assert report["backend"] == "onnxruntime"  # the default for an ONNX bundle, as before


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


def test_bench_goes_on_past_a_backend_that_cannot_run_the_bundle(digits_bundle, trust, tmp_path):
    result = edgefleet("bench", str(digits_bundle.root), *trust, "--backend", "native,onnxruntime,litert",
                       "--runs", "8", "--json", str(tmp_path / "bench.json"))
    assert result.returncode == 1, result.stderr  # some backend could not run it: not a clean pass
    assert "Traceback" not in result.stderr + result.stdout and "benchmarking litert (3/3)" in result.stdout
    reports = json.loads((tmp_path / "bench.json").read_text())
    assert [(r["entry"], r["status"]) for r in reports] == \
        [("native", "refused"), ("onnxruntime", "measured"), ("litert", "refused")]
    assert "bundle has no artifact in a format it runs (edgefleet-graph)" in reports[0]["reason"]
    assert "bundle has no artifact in a format it runs (tflite)" in reports[2]["reason"]
    assert reports[1]["results"][0]["runs"] == 8
    assert "cannot run" in result.stdout and "(tflite)" in result.stdout


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


# --- hostile bundles: one line, exit code 2, bounded work ------------------------------------------
def _signed_edit(root: Path, private_key: Path, edit) -> None:
    from edgefleet.core.signing import SigningKey

    manifest = json.loads((root / "manifest.json").read_text())
    edit(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest))
    (root / "signature.json").write_text(json.dumps(SigningKey.load(private_key).sign_manifest(manifest)))


# A small launcher forks the command and reports its peak RSS from wait4. (Forked straight from pytest,
# the child's ru_maxrss would start at pytest's own RSS: Linux carries the pre-exec peak across exec.)
_LAUNCHER = """
import os, resource, sys
limit, report, *command = sys.argv[1:]
pid = os.fork()
if pid == 0:
    if int(limit):
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), int(limit)))
    os.execv(command[0], command)
_, status, usage = os.wait4(pid, 0)
with open(report, "w") as out:
    out.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status) % 256)
"""


def edgefleet_measured(*args: str, report: Path, max_file_bytes: int = 0) -> tuple[subprocess.CompletedProcess, float]:
    """Runs the command; returns its result and its peak RSS in MB. With max_file_bytes, it can write no
    file larger (the kernel stops it with SIGXFSZ)."""
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("EDGEFLEET_TRUST", None)
    command = [sys.executable, "-c", _LAUNCHER, str(max_file_bytes), str(report), sys.executable, "-m",
               "edgefleet.cli.main", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, check=False)
    return result, int(report.read_text()) / 1024


def test_verify_a_manifest_nested_50000_deep(bundle_copy, trust):
    """It was `internal error: RecursionError` (exit 1)."""
    (bundle_copy / "manifest.json").write_text('{"schema_version": 1, "x": ' + "[" * 50_000 + "]" * 50_000 + "}")
    assert_user_error(edgefleet("verify", str(bundle_copy), *trust), "manifest.json nests arrays/objects 50001 deep")


def test_verify_a_100_mb_manifest_stays_small(bundle_copy, trust):
    """The manifest was parsed before the signature check: 368 MB RSS for 100 MB (1.29 GB for 400 MB)."""
    from tests.core.hostile_archives import MIB, write_padded_manifest

    write_padded_manifest(bundle_copy / "manifest.json", json.loads((bundle_copy / "manifest.json").read_text()),
                          100 * MIB)
    result, peak_mb = edgefleet_measured("verify", str(bundle_copy), *trust, "--no-self-test",
                                         report=bundle_copy.parent / "rss")
    assert_user_error(result, "bytes; the limit is 8388608 bytes")
    assert peak_mb < 120, f"edgefleet verify peaked at {peak_mb:.0f} MB RSS"


def test_verify_a_gzip_bomb_writes_nothing_big(digits_bundle, trust, tmp_path):
    """`edgefleet verify bomb.tar.gz` unpacked 2 MB to 2 GB on disk before refusing; here the process
    could not write a file over 64 MiB without being killed, and it is refused from the header."""
    from tests.core.hostile_archives import MIB, tar_of, zero_bomb

    bomb = tmp_path / "bomb.tar.gz"
    bomb.write_bytes(zero_bomb(tar_of(digits_bundle.root), "model.onnx.bak", 2048))
    result, _ = edgefleet_measured("verify", str(bomb), *trust, report=tmp_path / "rss", max_file_bytes=64 * MIB)
    assert_user_error(result, "unpacks to more than")
    assert "compression bomb" in result.stderr


def test_verify_an_archive_with_a_file_and_a_path_inside_it(digits_bundle, trust, tmp_path):
    """A file `a` then `a/b`: it was `internal error: FileExistsError`."""
    from tests.core.hostile_archives import entry, gz, tar_of

    archive = tmp_path / "clash.tar.gz"
    archive.write_bytes(gz(tar_of(digits_bundle.root), entry("a", data=b"x"), entry("a/b", data=b"y")))
    assert_user_error(edgefleet("verify", str(archive), *trust), "'a/b' is inside 'a', which is a file")


def test_verify_a_signed_manifest_whose_files_is_a_list(digits_bundle, bundle_copy, trust):
    """It was `internal error: AttributeError`."""
    _signed_edit(bundle_copy, digits_bundle.private_key, lambda m: m.update(files=list(m["files"])))
    assert_user_error(edgefleet("verify", str(bundle_copy), *trust), "manifest field files must be an object")


def test_verify_a_signed_artifact_path_that_leaves_the_bundle(digits_bundle, bundle_copy, trust):
    """`../x` passed verify and was refused only when a backend loaded it."""
    _signed_edit(bundle_copy, digits_bundle.private_key, lambda m: m["artifacts"][0].update(path="../x.onnx"))
    result = edgefleet("verify", str(bundle_copy), *trust, "--no-self-test")
    assert_user_error(result, "manifest path '../x.onnx' (artifacts[0].path) escapes the bundle")


def test_inspect_a_manifest_with_interface_null(bundle_copy):
    """inspect does not verify, but reads the fields: `interface: null` was an internal TypeError."""
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["interface"] = None
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    assert_user_error(edgefleet("inspect", str(bundle_copy)), "manifest field interface must be an object")


def test_inspect_shows_an_unreadable_signature(bundle_copy):
    (bundle_copy / "signature.json").write_text("[" * 5000 + "]" * 5000)
    result = edgefleet("inspect", str(bundle_copy))
    assert result.returncode == 0, result.stderr
    assert "unreadable" in result.stdout and "nests" in result.stdout


def test_verify_a_signed_bundle_whose_golden_file_lacks_an_output(digits_bundle, bundle_copy, trust):
    """The self-test read golden arrays by name: a signed .npz without `outputs/logits` was a KeyError."""
    from edgefleet.core.bundle import file_digest

    with np.load(bundle_copy / "golden.npz") as data:
        inputs_only = {k: data[k] for k in data.files if k.startswith("inputs/")}
    np.savez(bundle_copy / "golden.npz", **inputs_only)
    entry = {"sha256": file_digest(bundle_copy / "golden.npz"), "size": (bundle_copy / "golden.npz").stat().st_size}
    _signed_edit(bundle_copy, digits_bundle.private_key, lambda m: m["files"].update({"golden.npz": entry}))
    assert_user_error(edgefleet("verify", str(bundle_copy), *trust), "the golden examples in golden.npz cannot be read")


def test_inspect_an_artifact_with_null_size_and_error(bundle_copy):
    """null is a valid `size` and `max_abs` (an unchecked artifact); inspect formatted them as numbers."""
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["artifacts"][0].update(size=None, numeric_error={"max_abs": None})
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    result = edgefleet("inspect", str(bundle_copy))
    assert result.returncode == 0, result.stderr
    assert "0.0 KiB, unchecked (device self-test)" in result.stdout


TFLITE_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tflite"


@pytest.mark.parametrize("model", ["cnn_float.tflite", "cnn_nosig.tflite"])
def test_an_imported_tflite_bundle_runs_on_litert_without_backend(model, tmp_path):
    """Its only artifact is LiteRT's: verify, predict and bench took onnxruntime by default and failed."""
    pytest.importorskip("ai_edge_litert")
    assert edgefleet("keys", "generate", "--out", str(tmp_path / "k"), "--name", "t").returncode == 0
    bundle, trust = str(tmp_path / "b"), ["--trust", str(tmp_path / "k" / "t.pub")]
    imported = edgefleet("import", str(TFLITE_FIXTURES / model), "--out", bundle, "--name", "cnn", "--version", "1",
                         "--key", str(tmp_path / "k" / "t.key"))
    assert imported.returncode == 0, imported.stderr

    verified = edgefleet("verify", bundle, *trust)
    assert verified.returncode == 0, verified.stderr
    assert "self-test passed on 8 golden examples with litert" in verified.stdout

    with np.load(TFLITE_FIXTURES / "reference.npz") as reference:
        pixels, want = reference["pixels"], reference["float_logits"]
    np.save(tmp_path / "pixels.npy", pixels)
    predicted = edgefleet("predict", bundle, "--input", str(tmp_path / "pixels.npy"), "--output",
                          str(tmp_path / "out.npz"), *trust)
    assert predicted.returncode == 0, predicted.stderr
    assert "5 predictions (litert)" in predicted.stdout
    with np.load(tmp_path / "out.npz") as got:  # one output, named as the file names it (no SignatureDef: its tensor)
        assert len(got.files) == 1
        np.testing.assert_allclose(got[got.files[0]], want, rtol=1e-5, atol=1e-5)

    benched = edgefleet("bench", bundle, *trust, "--runs", "50", "--json", str(tmp_path / "bench.json"))
    assert benched.returncode == 0, benched.stderr
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["backend"] == "litert" and report["results"][0]["runs"] == 50
    assert "litert" in benched.stdout

    # a backend named on the command line is still the only one tried
    named = edgefleet("verify", bundle, *trust, "--backend", "onnxruntime")
    assert named.returncode == 2 and "Traceback" not in named.stderr
    assert "error: no listed backend can run bundle cnn v1 (onnxruntime: bundle has no artifact in a format it " \
           "runs (onnx, ort))" in named.stderr.splitlines()
