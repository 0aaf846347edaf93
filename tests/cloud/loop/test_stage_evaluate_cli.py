"""`edgefleet loop stage evaluate` as a user or an orchestrator runs it: a real subprocess on real bundles
(eval_kit.py); exit 0 and a report, or exit 2 with one line; the report signed into the candidate."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgefleet.core.bundle import Bundle
from edgefleet.core.signing import SigningKey, TrustStore
from tests.cli.test_bundle_commands import assert_user_error, edgefleet


def run(kit, candidate, out, *extra: str, data=None):
    return edgefleet("loop", "stage", "evaluate", "--candidate", str(candidate), "--serving",
                     str(kit.bundles["serving"]), "--data", str(data or kit.heldout), "--out", str(out),
                     "--key", str(kit.private_key), "--trust", str(kit.public_key), *extra)


def signed_report(kit, root) -> dict:
    bundle = Bundle.open(root)
    bundle.verify(TrustStore.from_paths([kit.public_key]))
    return bundle.manifest


def test_a_better_candidate_passes_and_carries_its_signed_report(kit, tmp_path):
    root = kit.candidate("better", tmp_path)
    result = run(kit, root, tmp_path / "report.json", "--recent", str(kit.recent), "--critical-slice", "clean")
    assert result.returncode == 0, result.stderr
    assert "offline evaluation: digits-cnn v2 (onnxruntime) against digits-cnn v1" in result.stdout
    assert "inverted" in result.stdout and "expected calibration error" in result.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["decision"] == {"refused": False, "reasons": [], "forced": False, "passed": True}
    manifest = signed_report(kit, root)
    assert manifest["metrics"]["offline_evaluation"] == report
    card = manifest["model_card"]["offline_evaluation"]
    assert card["against"] == "digits-cnn v1" and not card["refused"]
    assert card["overall"]["recent"]["verdict"] == "better"


def test_a_worse_candidate_is_refused_with_one_line_naming_the_slice(kit, tmp_path):
    root = kit.candidate("shifted", tmp_path)
    result = run(kit, root, tmp_path / "report.json", "--critical-slice", "clean")
    report = json.loads((tmp_path / "report.json").read_text())
    clean = next(g for g in report["datasets"]["heldout"]["groups"] if g["slice"] == "clean")
    assert_user_error(result, f"candidate refused: the candidate is worse than the serving model on critical slice "
                              f"'clean' of heldout (450 rows): accuracy {clean['candidate']['value']:.3f} vs "
                              f"{clean['serving']['value']:.3f}")
    assert "--force accepts it" in result.stderr
    assert "worse" in result.stdout  # the table is printed before the refusal
    manifest = signed_report(kit, root)
    assert manifest["metrics"]["offline_evaluation"]["decision"]["refused"]
    assert manifest["model_card"]["offline_evaluation"]["reasons"] == report["decision"]["reasons"]


def test_force_accepts_a_refused_candidate_and_records_it(kit, tmp_path):
    root = kit.candidate("shifted", tmp_path)
    result = run(kit, root, tmp_path / "report.json", "--critical-slice", "clean", "--force")
    assert result.returncode == 0, result.stderr
    assert "forced past the refusal" in result.stdout and "critical slice 'clean'" in result.stdout
    decision = json.loads((tmp_path / "report.json").read_text())["decision"]
    assert decision["refused"] and decision["forced"] and decision["passed"]
    card = signed_report(kit, root)["model_card"]["offline_evaluation"]
    assert card["refused"] and card["forced"]


def test_a_failing_sanity_check_from_a_policy_file_is_refused(kit, tmp_path):
    root = kit.candidate("better", tmp_path)
    checks = tmp_path / "checks.toml"
    checks.write_text('[[invariance]]\nname = "horizontal flip"\ntransform = "flip"\naxis = -1\nmax_changed = 0.05\n')
    result = run(kit, root, tmp_path / "report.json", "--checks", str(checks))
    assert_user_error(result, "the candidate fails invariance 'horizontal flip': ")
    assert "limit 5.0%" in result.stderr


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="module")
def heldout(kit):
    with np.load(kit.heldout) as data:
        return {k: data[k] for k in data.files}


@pytest.mark.parametrize(("case", "message"), [
    ("no labels", "lacks the labels 'y' (it holds: pixels, slice)"),
    ("no input", "lacks the model input 'pixels' (it holds: slice, y)"),
    ("wrong shape", "input 'pixels': expected float32[batch, 1, 8, 8], got float32[900, 8, 8]"),
    ("short labels", "'y' has shape (10,); expected one label per sample (900)"),
    ("bad label", "label 12 is not a class index of the model (0..9)"),
    ("unknown slice", "--critical-slice 'night' is not a slice of the data (slices: clean, inverted)"),
    ("not npz", "cannot read it as .npz"),
    ("empty", "input 'pixels': expected float32[batch, 1, 8, 8] with batch >= 1, got float32[0, 1, 8, 8]"),
    ("reserved slice", "slice key 'slice' has the value 'overall', the name of the whole data in the report"),
])
def test_bad_data_is_one_line(kit, heldout, tmp_path, case, message):
    root = kit.candidate("better", tmp_path)
    arrays = {"pixels": heldout["pixels"], "y": heldout["y"], "slice": heldout["slice"]}
    extra: list[str] = []
    if case == "no labels":
        del arrays["y"]
    elif case == "no input":
        del arrays["pixels"]
    elif case == "wrong shape":
        arrays["pixels"] = arrays["pixels"].reshape(-1, 8, 8)
    elif case == "short labels":
        arrays["y"] = arrays["y"][:10]
    elif case == "bad label":
        arrays["y"] = arrays["y"].copy()
        arrays["y"][5] = 12
    elif case == "empty":
        arrays = {k: v[:0] for k, v in arrays.items()}
    elif case == "reserved slice":
        arrays["slice"] = np.where(arrays["slice"] == "clean", "overall", arrays["slice"])
    elif case == "unknown slice":
        extra = ["--critical-slice", "night"]
    path = _npz(tmp_path / "data.npz", **arrays)
    if case == "not npz":
        path.write_text("pixels,y\n")
    before = (root / "manifest.json").read_bytes()
    result = run(kit, root, tmp_path / "report.json", *extra, data=path)
    assert_user_error(result, message)
    assert f"--data {path}" in result.stderr or case == "unknown slice"
    assert (root / "manifest.json").read_bytes() == before and not (tmp_path / "report.json").exists()


def test_an_unsigned_candidate_or_an_untrusted_key_is_one_line(kit, tmp_path):
    root = kit.candidate("better", tmp_path)
    (root / "signature.json").unlink()
    assert_user_error(run(kit, root, tmp_path / "r.json"), f"--candidate {root}: bundle {root} is not signed")
    other, _ = SigningKey.generate().save(tmp_path / "other", "other")
    root = kit.candidate("shifted", tmp_path)
    result = edgefleet("loop", "stage", "evaluate", "--candidate", str(root), "--serving",
                       str(kit.bundles["serving"]), "--data", str(kit.heldout), "--out", str(tmp_path / "r.json"),
                       "--key", str(other), "--trust", str(kit.public_key))
    assert_user_error(result, "is not among the trusted keys")
    archive = Bundle.open(kit.bundles["serving"]).pack(tmp_path / "serving.tar.gz")
    assert_user_error(run(kit, archive, tmp_path / "r.json"), "not a bundle directory")
