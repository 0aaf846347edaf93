"""One test per threat to an over-the-air update (the TUF threat list, applied to a model bundle).

Each update goes the device's way: download from a real HTTP server on 127.0.0.1, then
SlotStore.install and activate. Each attack must be refused with its own reason and a message naming
the problem, and afterwards the device must still serve its old slot, which must still verify, also
for a store opened afresh (as after a reboot), with no temporary files left behind.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import tarfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from edgefleet.core.bundle import SIGNATURE, sign, write_manifest
from edgefleet.core.canonical import canonical_bytes
from edgefleet.core.errors import VerificationError
from edgefleet.core.ota import authorize_rollback
from edgefleet.core.signing import SigningKey
from edgefleet.edge_runtime.download import CHUNK, download
from edgefleet.edge_runtime.predictor import Predictor
from edgefleet.edge_runtime.slots import Slot, SlotStore
from tests.edge_runtime.ota_attack_kit import (
    ArtifactServer,
    Endless,
    File,
    Releases,
    Stall,
    Trickle,
    derive,
    pack,
    sha256,
)

pytestmark = pytest.mark.timeout(60)
UNPACK_LIMIT = 50 << 20
DOWNLOAD_LIMIT = 10 << 20


@pytest.fixture(scope="module")
def releases(digits_bundle, tmp_path_factory) -> Releases:
    return Releases.build(digits_bundle, tmp_path_factory.mktemp("releases"))


@pytest.fixture
def server():
    with ArtifactServer() as running:
        yield running


@dataclass
class Device:
    store: SlotStore
    old: Slot  # the slot it serves before the attack (digits-cnn v2; v1 is previous)
    server: ArtifactServer
    workdir: Path

    def update(self, data: bytes, *, sha: str | None = None, authorization: dict | None = None,
               max_bytes: int = DOWNLOAD_LIMIT, **download_options) -> Slot:
        """What the OTA agent does with an install command: download, install, activate."""
        self.server.routes["/bundle.tar.gz"] = File(data)
        return self.fetch("/bundle.tar.gz", sha=sha or sha256(data), authorization=authorization,
                          max_bytes=max_bytes, **download_options)

    def fetch(self, path: str, *, sha: str | None = None, authorization: dict | None = None,
              max_bytes: int = DOWNLOAD_LIMIT, **download_options) -> Slot:
        archive = download(self.server.url(path), self.workdir / "incoming.tar.gz", max_bytes=max_bytes,
                           expected_sha256=sha, **download_options)
        slot = self.store.install(archive, max_bytes=UNPACK_LIMIT, rollback_authorization=authorization)
        self.store.activate(slot)
        return slot

    def refuses(self, reason: str, data: bytes | None = None, **options) -> str:
        with pytest.raises(VerificationError) as caught:
            self.update(data, **options) if data is not None else self.fetch("/bundle.tar.gz", **options)
        assert caught.value.reason == reason, str(caught.value)
        self.assert_untouched()
        return str(caught.value)

    def assert_untouched(self) -> None:
        assert self.store.current() == self.old
        self.store.verify(self.old)
        reopened = SlotStore(self.store.root, self.store.trust)
        assert reopened.current() == self.old
        assert [p.name for p in self.store.slots_dir.iterdir() if p.name.startswith(".")] == []


@pytest.fixture
def device(releases, server, tmp_path) -> Device:
    store = SlotStore(tmp_path / "models", releases.trust)
    for version in (1, 2):
        store.activate(store.install(releases.archives[version], max_bytes=UNPACK_LIMIT))
    return Device(store, store.current(), server, tmp_path)


def archive_of(directory: Path, out: Path) -> bytes:
    return pack(directory, out).read_bytes()


def test_the_honest_update_goes_through(device, releases):
    slot = device.update(releases.data(3))
    assert (slot.name, slot.version) == ("digits-cnn", 3)
    assert device.store.current() == slot and device.store.previous() == device.old
    with Predictor(slot.path, trusted_keys=releases.trust) as predictor:  # the retagged model really runs
        assert predictor.self_test().passed


# signatures -------------------------------------------------------------------------------------------


def test_resigned_by_an_attackers_key_is_unknown_key(device, releases, tmp_path):
    attacker = SigningKey.generate()
    forged = derive(releases.dirs[3], tmp_path / "forged", attacker, version=4)
    message = device.refuses("unknown_key", archive_of(forged, tmp_path / "forged.tar.gz"))
    assert attacker.key_id in message and "not among the trusted keys" in message


def test_a_key_that_was_never_trusted_is_unknown_key(device, releases, tmp_path):
    """A genuine-looking release by some other (say, a staging) key the device was never given."""
    staging = SigningKey.generate()
    bundle = derive(releases.dirs[1], tmp_path / "staging", staging, version=9, model_tag="staging build")
    assert staging.key_id in device.refuses("unknown_key", archive_of(bundle, tmp_path / "staging.tar.gz"))


def test_attacker_signature_claiming_the_trusted_key_id_is_bad_signature(device, releases, tmp_path):
    forged = derive(releases.dirs[3], tmp_path / "forged", releases.key, version=4)
    doc = json.loads((forged / SIGNATURE).read_text())
    attacker = SigningKey.generate()
    payload = {k: doc[k] for k in ("purpose", "key_id", "manifest_sha256", "signed_at", "expires_at")}
    doc["signature"] = base64.b64encode(attacker.private_key.sign(canonical_bytes(payload))).decode()
    (forged / SIGNATURE).write_text(json.dumps(doc))
    assert "does not verify" in device.refuses("bad_signature", archive_of(forged, tmp_path / "f.tar.gz"))


def test_altered_signature_bytes_are_bad_signature(device, releases, tmp_path):
    altered = Path(shutil.copytree(releases.dirs[3], tmp_path / "altered"))
    doc = json.loads((altered / SIGNATURE).read_text())
    raw = bytearray(base64.b64decode(doc["signature"]))
    raw[10] ^= 0x01
    doc["signature"] = base64.b64encode(bytes(raw)).decode()
    (altered / SIGNATURE).write_text(json.dumps(doc))
    assert "does not verify" in device.refuses("bad_signature", archive_of(altered, tmp_path / "a.tar.gz"))


def test_a_manifest_edited_after_signing_is_bad_signature(device, releases, tmp_path):
    edited = Path(shutil.copytree(releases.dirs[3], tmp_path / "edited"))
    manifest = json.loads((edited / "manifest.json").read_text())
    manifest["version"] = 99  # the classic: bump the version of a signed bundle
    (edited / "manifest.json").write_text(json.dumps(manifest))
    message = device.refuses("bad_signature", archive_of(edited, tmp_path / "e.tar.gz"))
    assert "changed after signing" in message


def test_an_unsigned_bundle_is_refused(device, releases, tmp_path):
    unsigned = Path(shutil.copytree(releases.dirs[3], tmp_path / "unsigned"))
    (unsigned / SIGNATURE).unlink()
    assert "not signed" in device.refuses("missing_signature", archive_of(unsigned, tmp_path / "u.tar.gz"))


# files ------------------------------------------------------------------------------------------------


def test_a_flipped_byte_in_the_model_is_hash_mismatch(device, releases, tmp_path):
    tampered = Path(shutil.copytree(releases.dirs[3], tmp_path / "tampered"))
    model = bytearray((tampered / "model.onnx").read_bytes())
    model[len(model) // 2] ^= 0x01
    (tampered / "model.onnx").write_bytes(bytes(model))
    message = device.refuses("hash_mismatch", archive_of(tampered, tmp_path / "t.tar.gz"))
    assert "model.onnx has sha256" in message


def test_the_same_tampering_on_the_wire_is_caught_by_the_download(device, releases):
    """The command announces the sha256 of the genuine archive; a mirror serves another."""
    tampered = bytearray(releases.data(3))
    tampered[len(tampered) // 2] ^= 0x01
    message = device.refuses("hash_mismatch", bytes(tampered), sha=sha256(releases.data(3)))
    assert "expected" in message


@pytest.mark.parametrize(("manifest_from", "model_from", "reason", "says"), [
    (3, 2, "hash_mismatch", "model.onnx has sha256"),  # same size, other bytes
    (2, 3, "hash_mismatch", "model.onnx has sha256"),
    (3, 1, "size_mismatch", "model.onnx is"),
    (1, 3, "size_mismatch", "model.onnx is"),
])
def test_mix_and_match_of_versions_is_refused(device, releases, tmp_path, manifest_from, model_from, reason, says):
    """Manifest and signature of one genuine release with the model of another genuine release."""
    mixed = Path(shutil.copytree(releases.dirs[manifest_from], tmp_path / "mixed"))
    shutil.copy(releases.dirs[model_from] / "model.onnx", mixed / "model.onnx")
    assert says in device.refuses(reason, archive_of(mixed, tmp_path / "m.tar.gz"))


def test_an_extra_file_is_refused(device, releases, tmp_path):
    extra = Path(shutil.copytree(releases.dirs[3], tmp_path / "extra"))
    (extra / "payload.so").write_bytes(b"\x7fELF not in the manifest")
    message = device.refuses("unlisted_file", archive_of(extra, tmp_path / "x.tar.gz"))
    assert "payload.so" in message


def evil_archive(source: Path, out: Path, member: tarfile.TarInfo, data: bytes = b"") -> bytes:
    with tarfile.open(out, "w:gz") as tar:
        for path in sorted(source.iterdir()):
            tar.add(path, arcname=path.name)
        tar.addfile(member, io.BytesIO(data) if data else None)
    return out.read_bytes()


def test_path_traversal_in_the_tarball_writes_nothing_outside(device, releases, tmp_path):
    member = tarfile.TarInfo("../../../escaped.txt")
    member.size = 6
    data = evil_archive(releases.dirs[3], tmp_path / "evil.tar.gz", member, b"pwned\n")
    message = device.refuses("unsafe_path", data)
    assert "'../../../escaped.txt'" in message and "escapes the bundle" in message
    assert not list(tmp_path.rglob("escaped.txt"))
    assert not (tmp_path.parent / "escaped.txt").exists()


def test_a_symlink_in_the_tarball_is_refused(device, releases, tmp_path):
    member = tarfile.TarInfo("model.onnx.link")
    member.type, member.linkname = tarfile.SYMTYPE, "/etc/shadow"
    data = evil_archive(releases.dirs[3], tmp_path / "link.tar.gz", member)
    assert "is a symlink" in device.refuses("unsafe_path", data)


def test_a_decompression_bomb_is_refused_while_unpacking(device, releases, tmp_path):
    bomb = Path(shutil.copytree(releases.dirs[3], tmp_path / "bomb"))
    with (bomb / "zeros.bin").open("wb") as handle:
        handle.truncate(UNPACK_LIMIT + 1)  # compresses to about 50 kB
    data = archive_of(bomb, tmp_path / "bomb.tar.gz")
    assert len(data) < 1 << 20
    assert f"more than {UNPACK_LIMIT} bytes" in device.refuses("too_large", data)


# versions and time ---------------------------------------------------------------------------------


def test_a_downgrade_is_not_newer(device, releases):
    assert "not newer than the installed v2" in device.refuses("not_newer", releases.data(1))


def test_a_replay_of_the_installed_version_is_not_newer(device, releases):
    device.refuses("not_newer", releases.data(2))


def test_a_downgrade_with_a_signed_rollback_authorization_is_accepted(device, releases):
    slot = device.update(releases.data(1), authorization=authorize_rollback(releases.key, "digits-cnn", 1))
    assert slot.version == 1 and device.store.current() == slot
    device.store.verify(slot)


def test_a_rollback_authorization_for_another_version_is_refused(device, releases):
    authorization = authorize_rollback(releases.key, "digits-cnn", 3)
    message = device.refuses("bad_rollback_authorization", releases.data(1), authorization=authorization)
    assert "it is for digits-cnn v3, not digits-cnn v1" in message


def test_a_rollback_authorization_for_another_model_is_refused(device, releases):
    authorization = authorize_rollback(releases.key, "other-model", 1)
    device.refuses("bad_rollback_authorization", releases.data(1), authorization=authorization)


def test_a_rollback_authorization_by_an_untrusted_key_is_refused(device, releases):
    attacker = SigningKey.generate()
    authorization = authorize_rollback(attacker, "digits-cnn", 1)
    message = device.refuses("bad_rollback_authorization", releases.data(1), authorization=authorization)
    assert f"key {attacker.key_id} is not trusted" in message


def test_a_forged_or_expired_rollback_authorization_is_refused(device, releases):
    forged = {**authorize_rollback(releases.key, "digits-cnn", 2), "version": 1}  # edited after signing
    assert "does not verify" in device.refuses("bad_rollback_authorization", releases.data(1),
                                               authorization=forged)
    expired = authorize_rollback(releases.key, "digits-cnn", 1, validity=timedelta(seconds=-1))
    assert "expired" in device.refuses("bad_rollback_authorization", releases.data(1), authorization=expired)


def test_an_expired_signature_is_refused_freeze_attack(device, releases, tmp_path):
    """A mirror replaying an old (but once valid, newer-than-installed) release after its signature ran out."""
    stale = derive(releases.dirs[3], tmp_path / "stale", releases.key, validity=timedelta(seconds=-1))
    assert "signature expired at" in device.refuses("expired", archive_of(stale, tmp_path / "s.tar.gz"))


# the transfer ---------------------------------------------------------------------------------------


def test_endless_data_is_too_large_and_never_fills_the_disk(device):
    device.server.routes["/bundle.tar.gz"] = Endless()
    partial = device.workdir / "incoming.tar.gz.partial"
    sizes = []
    message = device.refuses("too_large", max_bytes=1 << 20, progress=lambda *_: sizes.append(partial.stat().st_size))
    assert f"more than {1 << 20} bytes" in message
    assert max(sizes) <= (1 << 20) + CHUNK and not partial.exists()


def test_a_stalling_mirror_is_given_up_on(device, releases):
    device.server.routes["/bundle.tar.gz"] = Stall(releases.data(3), after=4096)
    started = time.monotonic()
    message = device.refuses("stalled", sha=sha256(releases.data(3)), stall_seconds=0.5, timeout_seconds=30)
    assert time.monotonic() - started < 0.5 + 2.0 and "nothing received" in message


def test_a_trickling_mirror_hits_the_total_timeout(device, releases):
    """Slow retrieval: one byte every 50 ms never trips the stall limit, but the whole update is bounded."""
    device.server.routes["/bundle.tar.gz"] = Trickle(releases.data(3), interval=0.05)
    started = time.monotonic()
    message = device.refuses("timeout", sha=sha256(releases.data(3)), stall_seconds=1.0, timeout_seconds=1.5)
    assert time.monotonic() - started < 1.5 + 2.0 and "took longer than 1.5 s" in message


def test_after_every_refusal_a_genuine_update_still_installs(device, releases, tmp_path):
    stale = derive(releases.dirs[3], tmp_path / "stale", releases.key, validity=timedelta(seconds=-1))
    device.refuses("expired", archive_of(stale, tmp_path / "s.tar.gz"))
    device.refuses("not_newer", releases.data(1))
    assert device.update(releases.data(3)).version == 3


def test_the_same_edit_signed_by_the_trusted_key_is_accepted(device, releases, tmp_path):
    """Sanity check of the kit: the same edits, signed by the trusted key, are accepted."""
    bundle = Path(shutil.copytree(releases.dirs[3], tmp_path / "legit"))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["version"] = 5
    write_manifest(bundle, manifest)
    sign(bundle, releases.key)
    assert device.update(archive_of(bundle, tmp_path / "l.tar.gz")).version == 5
