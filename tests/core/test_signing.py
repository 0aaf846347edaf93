from __future__ import annotations

import stat

import pytest

from edgefleet.core.errors import KeyFileError
from edgefleet.core.signing import SigningKey, TrustStore


def test_key_files_round_trip(tmp_path):
    key = SigningKey.generate()
    private, public = key.save(tmp_path, "release")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert SigningKey.load(private).key_id == key.key_id
    assert TrustStore.from_paths([public]).key_ids == [key.key_id]
    assert TrustStore.from_paths([tmp_path]).key_ids == [key.key_id]


def test_refuses_to_overwrite_private_key(tmp_path):
    SigningKey.generate().save(tmp_path, "release")
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        SigningKey.generate().save(tmp_path, "release")


def test_unreadable_keys(tmp_path):
    (tmp_path / "bad.pub").write_text("not a key")
    with pytest.raises(KeyFileError, match="cannot read public key"):
        TrustStore.from_paths([tmp_path / "bad.pub"])
    with pytest.raises(KeyFileError, match="cannot read signing key"):
        SigningKey.load(tmp_path / "missing.key")


def test_signature_binds_manifest():
    key = SigningKey.generate()
    trust = TrustStore([key.public_key])
    doc = key.sign_manifest({"name": "m", "version": 1})
    assert trust.verify({"version": 1, "name": "m"}, doc) == key.key_id  # key order does not matter
    from edgefleet.core.errors import VerificationError

    with pytest.raises(VerificationError, match="changed after signing"):
        trust.verify({"name": "m", "version": 2}, doc)
