"""The bundle: a directory with manifest.json, signature.json and the files the manifest lists.

`write_manifest` fills in the `files` table (sha256 and size of every file) and `Bundle.verify`
checks everything a device must check before it loads a model: known schema version, a valid
signature by a trusted key that has not expired, a manifest of the right structure (core/manifest.py)
whose every path stays inside the bundle, every listed file present with its size and hash, no file or
directory that is not listed (or implied by a listed file's path), no link, and (optionally) a version
newer than the installed one.

Everything read from outside is bounded before it is read: an archive by core/archive.py's limits,
manifest.json and signature.json by their size and depth limits, a bundle directory's walk by
archive.MAX_MEMBERS entries. Each refusal is a VerificationError with a reason code.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path, PurePosixPath

import numpy as np

from edgefleet.core import archive, bounded_json, manifest_rules
from edgefleet.core.errors import BundleError, VerificationError
from edgefleet.core.npz import load_npz
from edgefleet.core.schema import TensorSpec
from edgefleet.core.signing import DEFAULT_VALIDITY, SigningKey, TrustStore

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE = "signature.json"
RESERVED = {MANIFEST, SIGNATURE}
FILE_LIMITS = {MANIFEST: manifest_rules.MAX_MANIFEST_BYTES, SIGNATURE: manifest_rules.MAX_SIGNATURE_BYTES}


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(archive.CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def list_files(root: Path) -> list[str]:
    """Every entry below root except manifest and signature, as posix paths; links are reported too."""
    return _walk(Path(root))[0]


def _walk(root: Path) -> tuple[list[str], list[str]]:
    """(files and links, directories) below root, sorted; VerificationError("too_many_files") past
    archive.MAX_MEMBERS entries, so a directory padded with 200,000 entries costs a bounded walk."""
    files, dirs, pending, seen = [], [], [(root, "")], 0
    while pending:
        directory, prefix = pending.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                seen += 1
                if seen > archive.MAX_MEMBERS:
                    raise VerificationError("too_many_files", f"{root} holds more than {archive.MAX_MEMBERS} "
                                                              "files and directories")
                rel = prefix + entry.name
                if entry.is_dir(follow_symlinks=False):
                    dirs.append(rel)
                    pending.append((Path(entry.path), rel + "/"))
                elif rel not in RESERVED:
                    files.append(rel)
    return sorted(files), sorted(dirs)


def write_manifest(root: Path, manifest: dict) -> dict:
    """Completes manifest['files'] (and each artifact's sha256 and size) from the directory's contents
    and writes manifest.json."""
    root = Path(root)
    files = {}
    for rel in list_files(root):
        path = root / rel
        if path.is_symlink():
            raise BundleError(f"{path} is a symlink; a bundle holds only regular files")
        files[rel] = {"sha256": file_digest(path), "size": path.stat().st_size}
    artifacts = []
    for artifact in manifest.get("artifacts", []):
        if artifact["path"] not in files:
            raise BundleError(f"artifact {artifact['path']!r} is not a file in {root}")
        artifacts.append({**artifact, **files[artifact["path"]]})  # sha256 and size, as in the file table
    manifest = {**manifest, "schema_version": SCHEMA_VERSION, "files": files, "artifacts": artifacts}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    (root / SIGNATURE).unlink(missing_ok=True)  # any old signature no longer matches
    return manifest


def sign(root: Path, key: SigningKey, validity: timedelta = DEFAULT_VALIDITY) -> dict:
    """Signs the manifest.json in root and writes signature.json."""
    manifest = read_manifest(Path(root))
    doc = key.sign_manifest(manifest, validity)
    (Path(root) / SIGNATURE).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return doc


def read_manifest(root: Path) -> dict:
    """manifest.json within its size and depth limits, as a dict with the known schema_version (its
    structure is checked by verify, after the signature)."""
    path = Path(root) / MANIFEST
    try:
        manifest = manifest_rules.read_document(path, max_bytes=manifest_rules.MAX_MANIFEST_BYTES,
                                             max_depth=manifest_rules.MAX_MANIFEST_DEPTH, malformed="bad_manifest")
    except FileNotFoundError as err:
        raise BundleError(f"{root} is not a bundle: {MANIFEST} is missing") from err
    except OSError as err:
        raise BundleError(f"{path} cannot be read: {err}") from err
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise VerificationError(
            "bad_manifest",
            f"{path} has schema_version {manifest_rules.shown(version)}; this edgefleet reads schema_version "
            f"{SCHEMA_VERSION}",
        )
    return manifest


@dataclass(frozen=True)
class Verified:
    key_id: str
    expires_at: str
    name: str
    version: int


class Bundle:
    """A bundle directory on disk. Opening it reads the manifest; `verify` decides whether to trust it."""

    def __init__(self, root: Path, manifest: dict, *, _tempdir: tempfile.TemporaryDirectory | None = None) -> None:
        self.root = Path(root)
        self.manifest = manifest
        self._tempdir = _tempdir  # keeps an unpacked archive alive as long as the Bundle

    @classmethod
    def open(cls, path: str | Path, *, unpack_to: Path | None = None, max_bytes: int | None = None) -> Bundle:
        """Opens a bundle directory, or unpacks a .tar.gz (into unpack_to, or a temporary directory)."""
        path = Path(path)
        if path.is_dir():
            return cls(path, read_manifest(path))
        if not path.exists():
            raise BundleError(f"no bundle at {path}")
        tempdir = None
        if unpack_to is None:
            tempdir = tempfile.TemporaryDirectory(prefix="edgefleet-bundle-")
            unpack_to = Path(tempdir.name) / "bundle"
        root = archive.unpack(path, unpack_to, max_bytes=max_bytes, file_limits=FILE_LIMITS)
        return cls(root, read_manifest(root), _tempdir=tempdir)

    # identity and interface -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return manifest_rules.check_identity(self.manifest)[0]

    @property
    def version(self) -> int:
        return manifest_rules.check_identity(self.manifest)[1]

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec.from_dict(d) for d in self.manifest["interface"]["inputs"]]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec.from_dict(d) for d in self.manifest["interface"]["outputs"]]

    @property
    def artifacts(self) -> list[dict]:
        return list(self.manifest.get("artifacts", []))

    def path(self, rel: str) -> Path:
        """The on-disk path of a listed file; refuses anything that would leave the bundle."""
        manifest_rules.check_relpath(rel)
        if rel not in self.manifest.get("files", {}):
            raise BundleError(f"{rel!r} is not listed in the manifest")
        return self.root / rel

    def pack(self, out_path: Path) -> Path:
        return archive.pack(self.root, out_path)

    def golden(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict]:
        """Golden inputs, expected outputs and their tolerances (atol, rtol)."""
        entry = self.manifest.get("golden")
        if not entry:
            raise BundleError(f"bundle {self.name} v{self.version} has no golden examples")
        try:
            data = load_npz(self.path(entry["path"]), [f"inputs/{s.name}" for s in self.inputs]
                            + [f"outputs/{s.name}" for s in self.outputs])
            inputs = {s.name: data[f"inputs/{s.name}"] for s in self.inputs}
            outputs = {s.name: data[f"outputs/{s.name}"] for s in self.outputs}
        except (KeyError, ValueError, OSError, zipfile.BadZipFile) as err:  # what np.load raises on a bad .npz
            raise BundleError(f"bundle {self.name} v{self.version}: the golden examples in {entry['path']} cannot be "
                              f"read: {err}") from err
        return inputs, outputs, {"atol": float(entry["atol"]), "rtol": float(entry["rtol"])}

    def reference_profile(self) -> dict | None:
        """The reference profile (a listed, hashed file of any size), parsed within the depth limit."""
        entry = self.manifest.get("reference_profile")
        if not entry:
            return None
        data = self.path(entry["path"]).read_bytes()
        profile = bounded_json.loads(data, max_bytes=len(data), what=f"reference profile {entry['path']}")
        if not isinstance(profile, dict):
            raise BundleError(f"reference profile {entry['path']} must hold a JSON object")
        return profile

    # trust --------------------------------------------------------------------------------------------
    def verify(
        self, trust: TrustStore, *, now: datetime | None = None, installed_version: int | None = None
    ) -> Verified:
        """Raises VerificationError (with a reason code) unless the bundle can be trusted."""
        try:
            signature_doc = manifest_rules.read_document(
                self.root / SIGNATURE, max_bytes=manifest_rules.MAX_SIGNATURE_BYTES,
                max_depth=manifest_rules.MAX_SIGNATURE_DEPTH, malformed="bad_signature")
        except FileNotFoundError as err:
            raise VerificationError("missing_signature",
                                    f"bundle {self.root} is not signed ({SIGNATURE} missing)") from err
        except OSError as err:
            raise VerificationError("bad_signature", f"{SIGNATURE} cannot be read: {err}") from err
        key_id = trust.verify(self.manifest, signature_doc, now=now)
        manifest_rules.check_structure(self.manifest)
        manifest_rules.check_paths(self.manifest)
        self._verify_files()
        if installed_version is not None and self.version <= installed_version:
            raise VerificationError(
                "not_newer",
                f"bundle {self.name} v{self.version} is not newer than the installed v{installed_version}",
            )
        return Verified(key_id, str(signature_doc["expires_at"]), self.name, self.version)

    def _verify_files(self) -> None:
        """What is on disk first (links, unlisted files and directories: a bounded walk), then each listed
        file's size and hash, so nothing is read through a link."""
        listed: Mapping[str, Mapping] = self.manifest["files"]
        files, dirs = _walk(self.root)
        for rel in files:
            if (self.root / rel).is_symlink():
                raise VerificationError("unsafe_path", f"{rel} is a symlink; a bundle holds only regular files")
            if rel not in listed:
                raise VerificationError("unlisted_file", f"{rel} is in the bundle but not in the manifest")
        needed = {str(parent) for rel in listed for parent in PurePosixPath(rel).parents}
        for rel in dirs:
            if rel not in needed:
                raise VerificationError("unlisted_file", f"directory {rel} is in the bundle but holds no listed file")
        for rel, entry in listed.items():
            path = self.root / rel
            if not path.is_file() or path.is_symlink():
                raise VerificationError("missing_file", f"{rel} is listed in the manifest but missing")
            size = path.stat().st_size
            if size != entry["size"]:
                raise VerificationError(
                    "size_mismatch", f"{rel} is {size} bytes; the manifest says {entry['size']}"
                )
            digest = file_digest(path)
            if digest != entry["sha256"]:
                raise VerificationError(
                    "hash_mismatch", f"{rel} has sha256 {digest[:16]}...; the manifest says {entry['sha256'][:16]}..."
                )
