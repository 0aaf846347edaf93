"""SlotStore on real signed digits bundles: install, activate, rollback, crash leftovers, clean, journal."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import pytest

import edgefleet.core.signing as signing
from edgefleet.core.canonical import utc_now
from edgefleet.core.errors import VerificationError
from edgefleet.core.signing import TrustStore
from edgefleet.edge_runtime import slots as slots_module
from edgefleet.edge_runtime.slots import Slot, SlotError, SlotStore
from tests.edge_runtime.ota_attack_kit import Releases, derive, pack

pytestmark = pytest.mark.timeout(120)
LIMIT = 50 << 20


@pytest.fixture(scope="module")
def releases(digits_bundle, tmp_path_factory) -> Releases:
    return Releases.build(digits_bundle, tmp_path_factory.mktemp("releases"))


@pytest.fixture
def store(tmp_path, releases) -> SlotStore:
    return SlotStore(tmp_path / "models", releases.trust)


def installed(store: SlotStore, releases: Releases, *versions: int) -> list[Slot]:
    """Installs and activates each version in turn."""
    made = []
    for version in versions:
        slot = store.install(releases.archives[version], max_bytes=LIMIT)
        store.activate(slot)
        made.append(slot)
    return made


def leftovers(store: SlotStore) -> list[str]:
    return sorted(p.name for p in [*store.slots_dir.iterdir(), *store.root.iterdir()] if ".tmp-" in p.name)


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_empty_store_then_first_install_and_activate(store, releases):
    assert store.current() is None and store.previous() is None
    slot = store.install(releases.archives[1], max_bytes=LIMIT)
    assert (slot.name, slot.version) == ("digits-cnn", 1)
    assert slot.path == store.slots_dir / slot.id and (slot.path / "model.onnx").is_file()
    assert store.current() is None  # installing never switches
    store.activate(slot)
    assert store.current() == slot and store.previous() is None
    assert os.readlink(store.root / "current") == f"slots/{slot.id}"
    assert leftovers(store) == []


def test_first_start_from_a_configured_bundle_directory(store, releases):
    slot = store.install(releases.dirs[1], max_bytes=LIMIT)
    store.activate(slot)
    assert store.current() == slot and slot.path != releases.dirs[1]


def test_activate_keeps_the_old_slot_as_previous(store, releases):
    v1, v2 = installed(store, releases, 1, 2)
    assert store.current() == v2 and store.previous() == v1
    store.activate(v2)  # again: a no-op, previous stays
    assert store.previous() == v1
    v3 = store.install(releases.archives[3], max_bytes=LIMIT)
    store.activate(v3)
    assert store.current() == v3 and store.previous() == v2


def test_a_failed_install_leaves_no_trace(store, releases, tmp_path):
    (v1,) = installed(store, releases, 1)
    bad_dir = derive(releases.dirs[2], tmp_path / "bad", releases.key)
    flip_byte(bad_dir / "model.onnx")
    with pytest.raises(VerificationError) as caught:
        store.install(pack(bad_dir, tmp_path / "bad.tar.gz"), max_bytes=LIMIT)
    assert caught.value.reason == "hash_mismatch"
    assert store.current() == v1 and leftovers(store) == []
    assert [s.id for s in store.slots()] == [v1.id]


def test_same_version_is_not_newer_and_another_name_is_not_compared(store, releases, tmp_path):
    installed(store, releases, 2)
    with pytest.raises(VerificationError) as caught:
        store.install(releases.archives[2], max_bytes=LIMIT)
    assert caught.value.reason == "not_newer" and "not newer than the installed v2" in str(caught.value)
    other = derive(releases.dirs[1], tmp_path / "other", releases.key, name="other-model")
    slot = store.install(other, max_bytes=LIMIT)
    assert (slot.name, slot.version) == ("other-model", 1)


def test_a_leftover_install_directory_is_ignored_and_removed(store, releases):
    (v1,) = installed(store, releases, 1)
    crashed = store.slots_dir / ".tmp-deadbeef"
    crashed.mkdir()
    (crashed / "model.onnx").write_bytes(b"half an unpack")
    assert store.current() == v1 and store.slots() == [v1]
    reopened = SlotStore(store.root, store.trust)
    assert not crashed.exists() and reopened.current() == v1


@pytest.mark.parametrize("target", ["new", "nowhere"])
def test_crash_between_temp_symlink_and_rename(store, releases, target):
    """activate() makes `.current.tmp-*` then renames it over `current`; a crash in between leaves the temp."""
    v1, v2 = installed(store, releases, 1, 2)
    v3 = store.install(releases.archives[3], max_bytes=LIMIT)
    temp = store.root / ".current.tmp-0badf00d"
    os.symlink(f"slots/{v3.id}" if target == "new" else "slots/half-made", temp)
    assert store.current() == v2 and store.previous() == v1
    reopened = SlotStore(store.root, store.trust)
    assert not os.path.lexists(temp)
    assert reopened.current() == v2 and reopened.previous() == v1
    reopened.activate(v3)  # and the store works on
    assert reopened.current() == v3


def test_a_failed_switch_leaves_the_old_slot_current(store, releases, monkeypatch):
    v1, v2 = installed(store, releases, 1, 2)
    v3 = store.install(releases.archives[3], max_bytes=LIMIT)
    real_replace = os.replace

    def failing_replace(src, dst, *args, **kwargs):
        if Path(dst).name == "current":
            raise OSError(5, "Input/output error (simulated)")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(slots_module.os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated"):
        store.activate(v3)
    monkeypatch.undo()
    assert store.current() == v2
    assert store.previous() is None  # previous moved first (to v2 = current): reported as none
    assert leftovers(store) == []


CRASH_LOOP = textwrap.dedent("""
    import sys
    from pathlib import Path
    from edgefleet.core.signing import TrustStore
    from edgefleet.edge_runtime.slots import SlotStore
    root, key, archive = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    store = SlotStore(root, TrustStore.from_paths([key]), keep=2)
    a, b = store.slots()[-2:]
    print("ready", flush=True)
    while True:  # ends with current b, previous a: clean() deletes only older installs of the archive
        store.activate(a)
        new = store.install(archive, max_bytes=1 << 30)
        store.activate(new)
        store.activate(a)
        store.activate(b)
        store.clean()
""")


def test_kill_9_at_any_moment_leaves_a_whole_current_slot(store, releases, digits_bundle):
    v1, v2 = installed(store, releases, 1, 2)
    rounds = []
    for delay in (0.05, 0.13, 0.21, 0.34, 0.55, 0.89):
        child = subprocess.Popen(
            [sys.executable, "-c", CRASH_LOOP, str(store.root), str(digits_bundle.public_key),
             str(releases.archives[3])], stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline().strip() == "ready"
            time.sleep(delay)
            assert child.poll() is None, "the loop ended by itself"
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
            child.stdout.close()
        reopened = SlotStore(store.root, store.trust, keep=2)
        current = reopened.current()
        assert current is not None and current.version in (1, 2, 3)
        reopened.verify(current)
        assert leftovers(reopened) == []
        rounds.append(current.version)
    assert len(rounds) == 6


def test_a_current_slot_that_no_longer_verifies_is_a_loud_error(store, releases):
    v1, v2 = installed(store, releases, 1, 2)
    assert store.current() == v2  # checked and cached
    flip_byte(v2.path / "model.onnx")
    for reader in (store, SlotStore(store.root, store.trust)):
        with pytest.raises(VerificationError) as caught:
            reader.current()
        assert caught.value.reason == "hash_mismatch"
        assert f"current slot {v2.id} no longer verifies" in str(caught.value)


def test_a_current_slot_by_a_key_no_longer_trusted_is_refused(store, releases):
    installed(store, releases, 1)
    with pytest.raises(VerificationError) as caught:
        SlotStore(store.root, TrustStore()).current()
    assert caught.value.reason == "unknown_key"


def test_a_dangling_current_link_is_a_loud_error(store, releases):
    v1, v2 = installed(store, releases, 1, 2)
    os.rename(v2.path, store.root / "elsewhere")
    with pytest.raises(SlotError, match="does not exist"):
        store.current()


def test_an_expired_current_slot_still_serves_but_verify_says_expired(store, releases, monkeypatch, caplog):
    (v1,) = installed(store, releases, 1)
    later = utc_now() + timedelta(days=400)
    monkeypatch.setattr(signing, "utc_now", lambda: later)
    with caplog.at_level(logging.WARNING, logger="edgefleet.edge_runtime.slots"):
        assert SlotStore(store.root, store.trust).current() == v1
    assert "expired" in caplog.text
    with pytest.raises(VerificationError) as caught:
        store.verify(v1)
    assert caught.value.reason == "expired"
    with pytest.raises(VerificationError) as caught:  # and nothing expired gets in
        store.install(releases.archives[3], max_bytes=LIMIT)
    assert caught.value.reason == "expired"


def test_rollback_goes_back_once(store, releases):
    v1, v2 = installed(store, releases, 1, 2)
    assert store.rollback() == v1
    assert store.current() == v1 and store.previous() is None
    assert v2.path.is_dir()  # kept until clean()
    with pytest.raises(SlotError, match="nothing to roll back to"):
        store.rollback()


def test_rollback_refuses_a_previous_slot_that_no_longer_verifies(store, releases):
    v1, v2 = installed(store, releases, 1, 2)
    flip_byte(v1.path / "model.onnx")
    with pytest.raises(VerificationError) as caught:
        store.rollback()
    assert caught.value.reason == "hash_mismatch"
    assert store.current() == v2


def test_activate_refuses_a_slot_of_another_store(store, releases, tmp_path):
    installed(store, releases, 1)
    with pytest.raises(SlotError, match="not a slot of"):
        store.activate(Slot("x", releases.dirs[2], "digits-cnn", 2))


def test_clean_keeps_current_previous_and_the_newest(tmp_path, releases):
    store = SlotStore(tmp_path / "models", releases.trust, keep=1)
    v1, v2 = installed(store, releases, 1, 2)
    extra = [store.install(releases.dirs[3], max_bytes=LIMIT) for _ in range(2)]
    newest = store.install(releases.archives[3], max_bytes=LIMIT)
    (store.slots_dir / ".tmp-del-crashed").mkdir()
    deleted = store.clean()
    assert sorted(s.id for s in deleted) == sorted(s.id for s in extra)
    assert sorted(s.id for s in store.slots()) == sorted([v1.id, v2.id, newest.id])
    assert leftovers(store) == []
    assert store.current() == v2 and store.previous() == v1
    assert store.clean() == []


def test_journal_is_replaced_atomically(store):
    assert store.read_journal() is None
    store.write_journal({"command": "c-1", "state": "downloading"})
    store.write_journal({"command": "c-1", "state": "switching", "slot": "x"})
    assert store.read_journal() == {"command": "c-1", "state": "switching", "slot": "x"}
    assert leftovers(store) == []
    store.clear_journal()
    store.clear_journal()
    assert store.read_journal() is None


def test_an_unreadable_journal_is_set_aside(store, caplog):
    (store.root / "journal.json").write_text('{"command": "c-1", "sta')
    with caplog.at_level(logging.ERROR, logger="edgefleet.edge_runtime.slots"):
        assert store.read_journal() is None
    assert "unreadable" in caplog.text
    assert not (store.root / "journal.json").exists()
    assert [p.name.startswith("journal.json.corrupt-") for p in store.root.glob("journal.json.*")] == [True]


def test_the_journal_survives_a_reopen(store):
    store.write_journal({"state": "health_check", "deadline": 12.5})
    assert json.loads((store.root / "journal.json").read_text())["state"] == "health_check"
    assert SlotStore(store.root, store.trust).read_journal() == {"state": "health_check", "deadline": 12.5}
