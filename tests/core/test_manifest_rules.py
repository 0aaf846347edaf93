"""Hostile manifests and signatures: oversized, nested deep, of the wrong structure, or with paths that
leave the bundle, signed by the trusted key where that matters. Each is refused by Bundle.open or
Bundle.verify with its reason code and a message naming the field, never an internal error."""

from __future__ import annotations

import copy
import json
import os
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from edgefleet.core.bundle import MANIFEST, SIGNATURE, Bundle
from edgefleet.core.errors import VerificationError
from edgefleet.core.manifest_rules import MAX_MANIFEST_BYTES, MAX_SIGNATURE_BYTES
from edgefleet.core.signing import SigningKey, TrustStore
from tests.core.hostile_archives import MIB, deep_json, write_padded_manifest

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def trust(digits_bundle) -> TrustStore:
    return TrustStore.from_paths([digits_bundle.public_key])


def sign_edited(root: Path, private_key: Path, edit: Callable[[dict], object]) -> None:
    """Edits the manifest and signs it with the trusted key, as a compromised build pipeline (or a buggy
    tool) would: the signature is valid, so only the structure check stands between it and the device."""
    manifest = json.loads((root / MANIFEST).read_text())
    edit(manifest)
    (root / MANIFEST).write_text(json.dumps(manifest))
    doc = SigningKey.load(private_key).sign_manifest(manifest)
    (root / SIGNATURE).write_text(json.dumps(doc))


def refused(root: Path, trust: TrustStore, reason: str) -> str:
    with pytest.raises(VerificationError) as caught:
        Bundle.open(root).verify(trust)
    assert caught.value.reason == reason, str(caught.value)
    return str(caught.value)


def _set(path: str | tuple[str, ...], value: object) -> Callable[[dict], None]:
    """An edit that sets manifest[a][b]... (path "a.b.0.c", or a tuple of keys) to value."""
    def edit(manifest: dict) -> None:
        *parents, last = path.split(".") if isinstance(path, str) else path
        node = manifest
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(last) if isinstance(node, list) else last] = copy.deepcopy(value)
    return edit


# --- sizes and depth -------------------------------------------------------------------------------
def test_a_manifest_nested_50000_deep_is_too_deep(bundle_copy):
    """It was `internal error: RecursionError`."""
    (bundle_copy / MANIFEST).write_text('{"schema_version": 1, "x": ' + deep_json(50_000) + "}")
    with pytest.raises(VerificationError) as caught:
        Bundle.open(bundle_copy)
    assert caught.value.reason == "too_deep" and "manifest.json nests arrays/objects 50001 deep" in str(caught.value)


def test_a_signature_nested_deep_is_too_deep(bundle_copy, trust):
    """20,000 deep (40 KB, within the size limit) was `internal error: RecursionError`."""
    (bundle_copy / SIGNATURE).write_text('{"key_id": ' + deep_json(20_000) + "}")
    assert "signature.json nests" in refused(bundle_copy, trust, "too_deep")


def test_a_100_mb_manifest_is_refused_before_it_is_read(bundle_copy):
    """It was read and parsed before the signature check (368 MB RSS); now its size decides, so the
    refusal allocates next to nothing (the CLI test measures a real process's RSS)."""
    manifest = json.loads((bundle_copy / MANIFEST).read_text())
    write_padded_manifest(bundle_copy / MANIFEST, manifest, 100 * MIB)
    tracemalloc.start()
    started = time.process_time()
    try:
        with pytest.raises(VerificationError) as caught:
            Bundle.open(bundle_copy)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert caught.value.reason == "too_large" and f"the limit is {MAX_MANIFEST_BYTES} bytes" in str(caught.value)
    assert peak < 1 * MIB and time.process_time() - started < 0.5


def test_an_oversized_signature_is_refused(bundle_copy, trust):
    doc = json.loads((bundle_copy / SIGNATURE).read_text())
    doc["padding"] = "x" * MAX_SIGNATURE_BYTES
    (bundle_copy / SIGNATURE).write_text(json.dumps(doc))
    assert "signature.json is" in refused(bundle_copy, trust, "too_large")


def test_a_manifest_that_is_a_fifo_is_refused_not_waited_on(bundle_copy):
    (bundle_copy / MANIFEST).unlink()
    os.mkfifo(bundle_copy / MANIFEST)
    with pytest.raises(VerificationError) as caught:
        Bundle.open(bundle_copy)
    assert caught.value.reason == "unsafe_path" and "not a regular file" in str(caught.value)


def test_a_manifest_that_is_not_utf8_is_bad_manifest(bundle_copy):
    (bundle_copy / MANIFEST).write_bytes(b'{"name": "\xff"}')
    with pytest.raises(VerificationError) as caught:
        Bundle.open(bundle_copy)
    assert caught.value.reason == "bad_manifest" and "not valid JSON" in str(caught.value)


def test_a_signed_version_beyond_int64_is_refused(bundle_copy, digits_bundle):
    """2**63 reached SQLite in the cloud and failed there with an OverflowError."""
    sign_edited(bundle_copy, digits_bundle.private_key, _set("version", 2**63))
    with pytest.raises(VerificationError) as caught:
        Bundle.open(bundle_copy)
    assert caught.value.reason == "number_out_of_range" and "outside the 64-bit range" in str(caught.value)


def test_the_largest_int64_version_is_accepted(bundle_copy, digits_bundle, trust):
    sign_edited(bundle_copy, digits_bundle.private_key, _set("version", 2**63 - 1))
    assert Bundle.open(bundle_copy).verify(trust).version == 2**63 - 1


# --- structure, signed by the trusted key ----------------------------------------------------------
STRUCTURE_CASES = {
    "files is a list": (lambda m: m.update(files=list(m["files"])), "files must be an object mapping each path"),
    "files entry is a string": (_set(("files", "model.onnx"), "abc"), "files['model.onnx'] must be an object"),
    "file size is a string": (_set(("files", "model.onnx", "size"), "big"), "files['model.onnx'].size must be an"),
    "file sha256 is a number": (_set(("files", "model.onnx", "sha256"), 5), "files['model.onnx'].sha256 must be 64"),
    "artifacts is an object": (_set("artifacts", {}), "artifacts must be a list of artifact objects, got an object"),
    "artifact is a string": (_set("artifacts.0", "model.onnx"), "artifacts[0] must be an object with a path"),
    "artifact without a path": (lambda m: m["artifacts"][0].pop("path"), "artifacts[0].path must be a relative"),
    "artifact options a list": (_set("artifacts.0.options", []), "artifacts[0].options must be an object"),
    "numeric error a string": (_set("artifacts.0.numeric_error.max_abs", "x"), "numeric_error.max_abs must be"),
    "checked atol a string": (_set("artifacts.0.numeric_error.atol", "1e-3"), "numeric_error.atol must be a number"),
    "interface is null": (_set("interface", None), "interface must be an object with inputs and outputs, got null"),
    "no inputs": (_set("interface.inputs", []), "interface.inputs must be a non-empty list of tensor specs"),
    "input spec a string": (_set("interface.inputs.0", "pixels"), "interface.inputs[0] must be an object"),
    "object dtype": (_set("interface.inputs.0.dtype", "object"), "interface.inputs[0].dtype must be a numpy dtype"),
    "shape a string": (_set("interface.outputs.0.shape", "batch"), "interface.outputs[0].shape must be a list"),
    "class names a string": (_set("interface.class_names", "0123"), "interface.class_names must be a list"),
    "profiled input unknown": (_set("interface.profiled_inputs", ["pixels", "nope"]),
                               "interface.profiled_inputs must be a list of input names"),
    "profiled inputs nested": (_set("interface.profiled_inputs", [["pixels"]]),
                               "interface.profiled_inputs must be a list of input names"),
    "detection scores unknown": (_set("interface.detection", {"scores": "nope"}),
                                 "interface.detection must be an object with a layout"),
    "detection threshold a string": (_set("interface.detection", {"scores": "logits", "score_threshold": "high"}),
                                     "interface.detection must be an object with a layout"),
    "detection layout unknown": (_set("interface.detection", {"layout": "ssd", "output": "logits"}),
                                 "(boxes+scores, yolov5, yolov8, yolov8-transposed; "
                                 "default boxes+scores)"),
    "detection yolo without output": (_set("interface.detection", {"layout": "yolov5", "scores": "logits"}),
                                      "its output's name (scores for boxes+scores, output otherwise)"),
    "golden is a list": (_set("golden", ["golden.npz"]), "golden must be an object with a path, got a list"),
    "golden atol a string": (_set("golden.atol", "x"), "golden.atol must be a number >= 0, got 'x'"),
    "golden rtol negative": (_set("golden.rtol", -1), "golden.rtol must be a number >= 0, got -1"),
    "profile is a string": (_set("reference_profile", "profile.json"), "reference_profile must be an object"),
    "metrics is a list": (_set("metrics", []), "metrics must be an object"),
    "accuracy a string": (_set("metrics.eval.accuracy", "high"), "metrics.eval.accuracy must be a number"),
    "version a string": (_set("version", "3"), "version must be an integer from 1 to 2**63-1, got '3'"),
    "version a float": (_set("version", 1.5), "version must be an integer from 1 to 2**63-1, got 1.5"),
    "version zero": (_set("version", 0), "version must be an integer from 1 to 2**63-1, got 0"),
    "version true": (_set("version", True), "version must be an integer from 1 to 2**63-1, got true"),
    "name a number": (_set("name", 5), "name must be a non-empty string"),
    "label an object": (_set("label", {}), "label must be a string, got an object"),
    "model card a list": (_set("model_card", []), "model_card must be an object"),
}


@pytest.mark.parametrize("case", STRUCTURE_CASES)
def test_a_signed_manifest_of_the_wrong_structure_is_bad_manifest(bundle_copy, digits_bundle, trust, case):
    """`files` as a list was an AttributeError; `interface: null` was accepted (and failed on the device)."""
    edit, expected = STRUCTURE_CASES[case]
    sign_edited(bundle_copy, digits_bundle.private_key, edit)
    message = refused(bundle_copy, trust, "bad_manifest")
    assert expected in message and message.startswith("manifest field ")


def test_a_tampered_manifest_is_a_bad_signature_before_its_structure_is_looked_at(bundle_copy, trust):
    manifest = json.loads((bundle_copy / MANIFEST).read_text())
    manifest["files"] = []
    (bundle_copy / MANIFEST).write_text(json.dumps(manifest))
    refused(bundle_copy, trust, "bad_signature")


@pytest.mark.parametrize("field", ["key_id", "expires_at", "signature"])
def test_a_signature_field_of_the_wrong_type_is_a_bad_signature(bundle_copy, trust, field):
    doc = json.loads((bundle_copy / SIGNATURE).read_text())
    doc[field] = [doc[field]]
    (bundle_copy / SIGNATURE).write_text(json.dumps(doc))
    assert f"{field} must be a string" in refused(bundle_copy, trust, "bad_signature")


# --- paths -----------------------------------------------------------------------------------------
PATH_CASES = {
    "artifact ..": (_set("artifacts.0.path", "../x.onnx"), "'../x.onnx' (artifacts[0].path) escapes the bundle"),
    "artifact absolute": (_set("artifacts.0.path", "/etc/passwd"), "(artifacts[0].path) is an absolute path"),
    "golden ..": (_set("golden.path", "../../golden.npz"), "(golden.path) escapes the bundle"),
    "profile absolute": (_set("reference_profile.path", "/etc/hosts"), "(reference_profile.path) is an absolute"),
    "artifact control char": (_set("artifacts.0.path", "model\0.onnx"), "contains a control character"),
    "artifact empty": (_set("artifacts.0.path", ""), "(artifacts[0].path) is empty"),
    "cache_dir ..": (_set("artifacts.0.options", {"cache_dir": "../../.ssh"}), "artifacts[0].options.cache_dir"),
    "provider cache path": (
        _set("artifacts.0.options", {"providers": [["TensorrtExecutionProvider",
                                                    {"trt_engine_cache_path": "/var/lib/x"}]]}),
        "(artifacts[0].options.providers[0][1].trt_engine_cache_path) is an absolute path"),
}


@pytest.mark.parametrize("case", PATH_CASES)
def test_an_unsafe_path_in_a_signed_manifest_is_refused_by_verify(bundle_copy, digits_bundle, trust, case):
    """An artifact path `../x` was refused only when a backend loaded it, never by verify."""
    edit, expected = PATH_CASES[case]
    sign_edited(bundle_copy, digits_bundle.private_key, edit)
    assert expected in refused(bundle_copy, trust, "unsafe_path")


def test_a_path_field_naming_an_unlisted_file_is_bad_manifest(bundle_copy, digits_bundle, trust):
    sign_edited(bundle_copy, digits_bundle.private_key, _set("artifacts.0.path", "other.onnx"))
    assert "artifacts[0].path names 'other.onnx', which is not a file listed" in refused(
        bundle_copy, trust, "bad_manifest")


def test_a_listed_file_behind_a_linked_directory_is_unsafe(bundle_copy, digits_bundle, trust, tmp_path):
    """A listed `sub/model.onnx` whose directory is a link out of the bundle: refused before any read."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "model.onnx").write_bytes((bundle_copy / "model.onnx").read_bytes())
    os.symlink(outside, bundle_copy / "sub")

    def move(manifest: dict) -> None:
        manifest["files"]["sub/model.onnx"] = manifest["files"].pop("model.onnx")
        manifest["artifacts"][0]["path"] = "sub/model.onnx"

    (bundle_copy / "model.onnx").unlink()
    sign_edited(bundle_copy, digits_bundle.private_key, move)
    assert "sub is a symlink" in refused(bundle_copy, trust, "unsafe_path")


def test_an_empty_directory_is_not_part_of_a_bundle(bundle_copy, trust):
    (bundle_copy / "pad" / "deeper").mkdir(parents=True)
    assert "directory pad is in the bundle but holds no listed file" in refused(bundle_copy, trust, "unlisted_file")


def test_a_directory_padded_with_thousands_of_entries_is_refused_by_a_bounded_walk(bundle_copy, trust):
    pad = bundle_copy / "pad"
    pad.mkdir()
    for index in range(5000):
        (pad / str(index)).mkdir()
    assert "more than 4096 files and directories" in refused(bundle_copy, trust, "too_many_files")


def test_a_lone_surrogate_has_no_canonical_form(bundle_copy, trust):
    """JSON's \\ud800 escape decodes to a string UTF-8 cannot encode: it was a UnicodeEncodeError."""
    text = (bundle_copy / MANIFEST).read_text()
    (bundle_copy / MANIFEST).write_text(text.replace('"label": "', '"label": "\\ud800', 1))
    assert "lone surrogate" in refused(bundle_copy, trust, "not_unicode")


def test_a_signed_reference_profile_nested_deep_is_too_deep(bundle_copy, digits_bundle, trust):
    """The profile is read when a device starts its telemetry: 50,000 deep was a RecursionError."""
    from edgefleet.core.bounded_json import JsonLimitError
    from edgefleet.core.bundle import file_digest

    (bundle_copy / "profile.json").write_text(deep_json(50_000))
    entry = {"sha256": file_digest(bundle_copy / "profile.json"), "size": 100_000}
    sign_edited(bundle_copy, digits_bundle.private_key, lambda m: m["files"].update({"profile.json": entry}))
    bundle = Bundle.open(bundle_copy)
    bundle.verify(trust)
    with pytest.raises(JsonLimitError) as caught:
        bundle.reference_profile()
    assert caught.value.reason == "too_deep" and "reference profile profile.json nests" in str(caught.value)
