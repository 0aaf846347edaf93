"""Ed25519 keys, bundle signatures and the device's trust store.

`signature.json` holds the key id, the signing and expiry times, the SHA-256 of the canonical manifest
and an Ed25519 signature over the canonical JSON of all of those. Signing the expiry and key id with the
manifest means none of them can be changed without breaking the signature.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgefleet.core.canonical import canonical_bytes, format_time, parse_time, sha256_hex, utc_now
from edgefleet.core.errors import KeyFileError, VerificationError

ALGORITHM = "ed25519"
PURPOSE = "edgefleet-bundle-v1"
DEFAULT_VALIDITY = timedelta(days=90)


def key_id_of(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return sha256_hex(raw)[:16]


@dataclass(frozen=True)
class SigningKey:
    private_key: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    @property
    def key_id(self) -> str:
        return key_id_of(self.public_key)

    def save(self, directory: Path, name: str) -> tuple[Path, Path]:
        """Writes NAME.key (private, mode 0600) and NAME.pub; refuses to overwrite a private key."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        private_path, public_path = directory / f"{name}.key", directory / f"{name}.pub"
        if private_path.exists():
            raise KeyFileError(f"{private_path} exists already; refusing to overwrite a private key")
        pem = self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        public_path.write_bytes(
            self.public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        return private_path, public_path

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        try:
            key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as err:
            raise KeyFileError(f"cannot read signing key {path}: {err}") from err
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(f"{path} is not an Ed25519 private key")
        return cls(key)

    def sign_manifest(self, manifest: dict, validity: timedelta = DEFAULT_VALIDITY) -> dict:
        """Returns the signature document to store as signature.json."""
        now = utc_now()
        payload = _payload(
            key_id=self.key_id,
            manifest_sha256=sha256_hex(canonical_bytes(manifest)),
            signed_at=format_time(now),
            expires_at=format_time(now + validity),
        )
        signature = self.private_key.sign(canonical_bytes(payload))
        return {**payload, "algorithm": ALGORITHM, "signature": base64.b64encode(signature).decode()}


def _payload(*, key_id: str, manifest_sha256: str, signed_at: str, expires_at: str) -> dict:
    return {
        "purpose": PURPOSE,
        "key_id": key_id,
        "manifest_sha256": manifest_sha256,
        "signed_at": signed_at,
        "expires_at": expires_at,
    }


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError, TypeError) as err:
        raise KeyFileError(f"cannot read public key {path}: {err}") from err
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path} is not an Ed25519 public key")
    return key


class TrustStore:
    """The public keys a device accepts bundles from, by key id."""

    def __init__(self, keys: Iterable[Ed25519PublicKey] = ()) -> None:
        self._keys = {key_id_of(k): k for k in keys}

    @classmethod
    def from_paths(cls, paths: Iterable[str | Path]) -> TrustStore:
        """Each path is a PEM public key file or a directory whose *.pub files are all trusted."""
        keys = []
        for path in map(Path, paths):
            if path.is_dir():
                keys.extend(load_public_key(p) for p in sorted(path.glob("*.pub")))
            else:
                keys.append(load_public_key(path))
        return cls(keys)

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    def public_key(self, key_id: str) -> Ed25519PublicKey | None:
        return self._keys.get(key_id)

    def __len__(self) -> int:
        return len(self._keys)

    def verify(self, manifest: dict, signature_doc: dict, *, now: datetime | None = None) -> str:
        """Checks the signature document against the manifest; returns the key id or raises."""
        for field in ("key_id", "manifest_sha256", "signed_at", "expires_at", "algorithm", "signature"):
            if not isinstance(signature_doc.get(field), str):
                raise VerificationError("bad_signature", f"signature.json is malformed: {field} must be a string")
        try:
            payload = _payload(
                key_id=signature_doc["key_id"],
                manifest_sha256=signature_doc["manifest_sha256"],
                signed_at=signature_doc["signed_at"],
                expires_at=signature_doc["expires_at"],
            )
            algorithm = signature_doc["algorithm"]
            signature = base64.b64decode(signature_doc["signature"], validate=True)
            expires_at = parse_time(payload["expires_at"])
        except (KeyError, ValueError, TypeError) as err:
            raise VerificationError("bad_signature", f"signature.json is malformed: {err}") from err
        if algorithm != ALGORITHM:
            raise VerificationError("bad_signature", f"signature algorithm {algorithm!r} is not {ALGORITHM}")
        key = self._keys.get(payload["key_id"])
        if key is None:
            raise VerificationError(
                "unknown_key",
                f"bundle is signed by key {payload['key_id']}, which is not among the trusted keys "
                f"({', '.join(self.key_ids) or 'none'})",
            )
        try:
            key.verify(signature, canonical_bytes(payload))
        except InvalidSignature as err:
            raise VerificationError(
                "bad_signature", f"signature by key {payload['key_id']} does not verify: the bundle was altered"
            ) from err
        actual = sha256_hex(canonical_bytes(manifest))
        if actual != payload["manifest_sha256"]:
            raise VerificationError(
                "bad_signature",
                f"manifest.json was changed after signing (sha256 {actual[:12]}..., "
                f"signed {payload['manifest_sha256'][:12]}...)",
            )
        now = now or utc_now()
        if now >= expires_at:
            raise VerificationError(
                "expired", f"signature expired at {payload['expires_at']} (now {format_time(now)})"
            )
        return payload["key_id"]
