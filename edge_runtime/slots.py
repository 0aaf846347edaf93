"""Model slots on the device: verified bundles side by side, and two symlinks saying which one serves.

    root/slots/<id>/       one unpacked, verified bundle per slot (<name>-v<version>-<token>)
    root/slots/.tmp-*      an install or a deletion in progress; removed at the next start or clean()
    root/current           symlink -> slots/<id>: the bundle being served
    root/previous          symlink -> slots/<id>: the one served before it, the target of rollback()
    root/journal.json      the OTA agent's record of an update in progress (write_journal)
    root/.lock             flock'ed by every change, so two stores on one root never interleave

    store = SlotStore(data_dir / "models", trust)
    slot = store.install(archive, max_bytes=cmd.max_bytes)      # unpack + verify, never touches current
    store.activate(slot)                                         # previous := current; current := slot
    store.rollback()                                             # current := previous, re-verified first

Crash safety. A link is switched by creating a temporary symlink next to it and renaming it over the
old one (rename is atomic), then fsyncing `root`; an install is unpacked into a `.tmp-` directory,
verified, every file and directory fsynced, then renamed into place and `slots/` fsynced. So after a
crash or power cut `current` names the old slot or the new one, whole; leftovers (`.tmp-` directories,
temporary links) are never read and are removed on the next start. `activate` moves `previous` first and
`current` second: a crash between them leaves current on the old slot (and previous equal to it, which
`previous()` reports as none).

Trust. A slot enters only through `install`, which runs the full `Bundle.verify` (trusted key, signature,
expiry, hashes, no extra or linked files) and refuses a version not newer than the current one of the
same name unless a signed rollback authorization allows exactly that name and version. `current()`
verifies again and raises if the slot no longer verifies: a device serves nothing rather than a model
that was changed on disk. An expired signature is the one thing it tolerates in an installed slot (with a
warning): expiry guards against being fed stale updates (freeze attacks), and a device that was offline
past it must still start the model it already runs. `verify(slot)` is the strict check, expiry included.
Within one store, a slot whose files have not changed (inode, size, mtime, ctime) is not hashed again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from edgefleet.core.archive import fsync_dir
from edgefleet.core.bundle import SIGNATURE, Bundle, Verified, read_manifest
from edgefleet.core.canonical import parse_time
from edgefleet.core.errors import BundleError, EdgefleetError, VerificationError
from edgefleet.core.ota import check_rollback_authorization
from edgefleet.core.signing import TrustStore

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no cross-process lock
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

SLOTS = "slots"
CURRENT = "current"
PREVIOUS = "previous"
JOURNAL = "journal.json"
LOCK = ".lock"
TMP = ".tmp-"


class SlotError(EdgefleetError):
    """The slot store cannot do what was asked: a dangling link, nothing to roll back to, a foreign slot."""


@dataclass(frozen=True)
class Slot:
    id: str
    path: Path  # the unpacked, verified bundle directory (root/slots/<id>), not the link
    name: str
    version: int


class SlotStore:
    def __init__(self, root: Path, trust: TrustStore, keep: int = 3) -> None:
        if keep < 0:
            raise ValueError(f"keep must be >= 0, got {keep}")
        self.root = Path(root)
        self.slots_dir = self.root / SLOTS
        self.trust = trust
        self.keep = keep
        self._checked: dict[str, tuple] = {}  # slot id -> file fingerprint at its last successful check
        self.slots_dir.mkdir(parents=True, exist_ok=True)
        with self._locked(blocking=False) as locked:
            if locked:  # another store on this root is working: its temporaries are not leftovers
                self._remove_leftovers()

    # reading ------------------------------------------------------------------------------------------
    def current(self) -> Slot | None:
        """The slot being served, verified (raises SlotError or VerificationError if it is broken)."""
        slot = self._read_link(CURRENT)
        if slot is None:
            return None
        try:
            self._check(slot)
        except VerificationError as err:
            log.error("the current slot %s no longer verifies: %s", slot.id, err)
            raise VerificationError(err.reason, f"the current slot {slot.id} no longer verifies: {err}") from err
        return slot

    def previous(self) -> Slot | None:
        """The slot served before the current one, if it still exists (not verified here; rollback does)."""
        try:
            slot = self._read_link(PREVIOUS)
        except (SlotError, BundleError) as err:
            log.warning("ignoring the previous slot: %s", err)
            return None
        if slot is None or self._link_target(PREVIOUS) == self._link_target(CURRENT):
            return None
        return slot

    def verify(self, slot: Slot) -> None:
        """The full Bundle.verify of an installed slot: trusted signature, expiry, hashes, files."""
        slot = self._own(slot)
        Bundle.open(slot.path).verify(self.trust)

    def slots(self) -> list[Slot]:
        """Every installed slot, newest install first (unreadable directories are skipped)."""
        found = []
        for path in self._slot_dirs():
            with contextlib.suppress(BundleError):
                found.append(_slot_at(path))
        return found

    # changing -----------------------------------------------------------------------------------------
    def install(self, archive: Path, *, max_bytes: int, rollback_authorization: dict | None = None,
                expected: tuple[str, int] | None = None) -> Slot:
        """Unpacks and verifies a bundle archive (or directory) into a new slot; the current one is untouched.
        With `expected` (name, version), the verified manifest must name exactly that bundle, else
        VerificationError("bundle_mismatch"): an update command and the archive it fetched must agree."""
        archive = Path(archive)
        token = secrets.token_hex(6)
        tmp = self.slots_dir / f"{TMP}{token}"
        with self._locked():
            try:
                bundle = self._unpack(archive, tmp, max_bytes)
                installed = self._installed_version(bundle.name)
                self._verify_new(bundle, installed, rollback_authorization)
                if expected is not None and (bundle.name, bundle.version) != tuple(expected):
                    raise VerificationError("bundle_mismatch", f"the archive holds {bundle.name} v{bundle.version}, "
                                                               f"but the update named {expected[0]} v{expected[1]}")
                _fsync_tree(tmp)
                self._stamp_install_time(tmp)
                final = self.slots_dir / f"{_safe_name(bundle.name)}-v{bundle.version}-{token}"
                os.rename(tmp, final)
                fsync_dir(self.slots_dir)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            slot = Slot(final.name, final, bundle.name, bundle.version)
            self._checked[slot.id] = _fingerprint(final)
        log.info("installed %s v%d as slot %s", slot.name, slot.version, slot.id)
        return slot

    def activate(self, slot: Slot) -> None:
        """previous := current; current := slot. The slot is checked first; the switch is one rename."""
        with self._locked():
            slot = self._own(slot)
            self._check(slot)
            target = f"{SLOTS}/{slot.id}"
            old = self._link_target(CURRENT)
            if old == target:
                return
            if old is not None:
                self._set_link(PREVIOUS, old)
            self._set_link(CURRENT, target)
        log.info("activated slot %s (%s v%d); previous is %s", slot.id, slot.name, slot.version, old)

    def rollback(self) -> Slot:
        """current := previous, after checking it again; previous is then cleared (the slot rolled back
        from stays on disk until clean()). Raises SlotError if there is nothing to roll back to."""
        with self._locked():
            slot = self._read_link(PREVIOUS)
            if slot is None or self._link_target(PREVIOUS) == self._link_target(CURRENT):
                raise SlotError(f"nothing to roll back to: {self.root} has no previous slot")
            self._check(slot)
            old = self._link_target(CURRENT)
            self._set_link(CURRENT, f"{SLOTS}/{slot.id}")
            (self.root / PREVIOUS).unlink()
            fsync_dir(self.root)
        log.warning("rolled back from %s to slot %s (%s v%d)", old, slot.id, slot.name, slot.version)
        return slot

    def clean(self) -> list[Slot]:
        """Deletes every slot but current, previous and the `keep` newest installs; returns the deleted."""
        deleted = []
        with self._locked():
            self._remove_leftovers()
            protected = {PurePosixPath(t).name for t in (self._link_target(CURRENT), self._link_target(PREVIOUS)) if t}
            dirs = self._slot_dirs()
            keep = protected | {p.name for p in dirs[: self.keep]}
            for path in dirs:
                if path.name in keep:
                    continue
                try:
                    slot = _slot_at(path)
                except BundleError:
                    slot = None
                doomed = self.slots_dir / f"{TMP}del-{path.name}"
                os.rename(path, doomed)  # out of sight first; a crash mid-delete leaves only a leftover
                shutil.rmtree(doomed, ignore_errors=True)
                self._checked.pop(path.name, None)
                log.info("deleted slot %s", path.name)
                if slot is not None:
                    deleted.append(slot)
            if deleted:
                fsync_dir(self.slots_dir)
        return deleted

    # journal ------------------------------------------------------------------------------------------
    def write_journal(self, record: dict) -> None:
        """Replaces the journal atomically: temp file, fsync, rename, fsync of the directory."""
        data = json.dumps(record, indent=2, sort_keys=True, allow_nan=False) + "\n"
        with self._locked():
            tmp = self.root / f".{JOURNAL}{TMP}{secrets.token_hex(4)}"
            try:
                with tmp.open("x") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, self.root / JOURNAL)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            fsync_dir(self.root)

    def read_journal(self) -> dict | None:
        """The journal, or None. A journal that is not a JSON object is set aside (logged), not fatal."""
        path = self.root / JOURNAL
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            record, problem = None, str(err)
        else:
            problem = "it is not a JSON object"
        if isinstance(record, dict):
            return record
        aside = path.with_name(f"{JOURNAL}.corrupt-{int(time.time())}")
        log.error("the OTA journal %s is unreadable (%s); moved to %s", path, problem, aside.name)
        with contextlib.suppress(OSError):
            os.replace(path, aside)
        return None

    def clear_journal(self) -> None:
        with self._locked():
            try:
                (self.root / JOURNAL).unlink()
            except FileNotFoundError:
                return
            fsync_dir(self.root)

    # internals ----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self, blocking: bool = True) -> Iterator[bool]:
        fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
                except BlockingIOError:
                    yield False
                    return
            yield True
        finally:
            os.close(fd)  # releases the flock

    def _remove_leftovers(self) -> None:
        for path in self.slots_dir.glob(f"{TMP}*"):
            log.warning("removing %s, left by an interrupted install or clean", path)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        for path in self.root.glob(f".*{TMP}*"):
            log.warning("removing %s, left by an interrupted switch", path)
            path.unlink(missing_ok=True)

    def _link_target(self, name: str) -> str | None:
        try:
            return os.readlink(self.root / name)
        except FileNotFoundError:
            return None
        except OSError as err:  # EINVAL: not a symlink
            raise SlotError(f"{self.root / name} is not a symlink: {err}") from err

    def _read_link(self, name: str) -> Slot | None:
        target = self._link_target(name)
        if target is None:
            return None
        parts = PurePosixPath(target).parts
        if len(parts) != 2 or parts[0] != SLOTS or parts[1].startswith("."):
            raise SlotError(f"{self.root / name} points at {target!r}, which is not a slot of this store")
        path = self.slots_dir / parts[1]
        if not path.is_dir() or path.is_symlink():
            raise SlotError(f"{self.root / name} points at {target!r}, which does not exist")
        return _slot_at(path)

    def _own(self, slot: Slot) -> Slot:
        """The store's own record of a slot given by a caller; refuses paths outside root/slots."""
        if slot.id.startswith(".") or "/" in slot.id or Path(slot.path) != self.slots_dir / slot.id:
            raise SlotError(f"slot {slot.id!r} at {slot.path} is not a slot of {self.slots_dir}")
        if not slot.path.is_dir():
            raise SlotError(f"slot {slot.id} does not exist (any more)")
        return _slot_at(slot.path)

    def _check(self, slot: Slot) -> Verified | None:
        """Signature by a trusted key, hashes and files (expiry tolerated, logged); cached per fingerprint."""
        fingerprint = _fingerprint(slot.path)
        if self._checked.get(slot.id) == fingerprint:
            return None
        bundle = Bundle.open(slot.path)
        try:
            verified = bundle.verify(self.trust)
        except VerificationError as err:
            if err.reason != "expired":
                self._checked.pop(slot.id, None)
                raise
            log.warning("slot %s: %s; still used, being installed already (expiry guards new installs)",
                        slot.id, err)
            signed_at = parse_time(str(json.loads((slot.path / SIGNATURE).read_text())["signed_at"]))
            verified = bundle.verify(self.trust, now=signed_at)
        self._checked[slot.id] = fingerprint
        return verified

    def _unpack(self, archive: Path, tmp: Path, max_bytes: int) -> Bundle:
        if archive.is_dir():  # a bundle directory (the device's configured first bundle)
            size = sum(p.lstat().st_size for p in archive.rglob("*") if not p.is_dir() or p.is_symlink())
            if size > max_bytes:
                raise VerificationError("too_large", f"bundle {archive} holds {size} bytes; the limit is {max_bytes}")
            shutil.copytree(archive, tmp, symlinks=True)
            return Bundle.open(tmp)
        return Bundle.open(archive, unpack_to=tmp, max_bytes=max_bytes)

    def _installed_version(self, name: str) -> int | None:
        try:
            current = self._read_link(CURRENT)
        except (SlotError, BundleError) as err:
            # never let a broken link open the door to a downgrade: fall back to the newest slot of the name
            versions = [s.version for s in self.slots() if s.name == name]
            log.warning("current slot unreadable (%s); comparing with the newest installed %s: v%s",
                        err, name, max(versions, default=None))
            return max(versions, default=None)
        if current is None or current.name != name:
            return None
        return current.version

    def _verify_new(self, bundle: Bundle, installed: int | None, authorization: Mapping | None) -> None:
        try:
            bundle.verify(self.trust, installed_version=installed)
        except VerificationError as err:
            if err.reason != "not_newer" or authorization is None:
                raise
            key_id = check_rollback_authorization(authorization, self.trust, bundle.name, bundle.version)
            bundle.verify(self.trust)
            log.warning("installing %s v%d over v%s: rollback authorized by key %s",
                        bundle.name, bundle.version, installed, key_id)

    def _set_link(self, name: str, target: str) -> None:
        tmp = self.root / f".{name}{TMP}{secrets.token_hex(4)}"
        os.symlink(target, tmp)
        try:
            os.replace(tmp, self.root / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(self.root)

    def _stamp_install_time(self, path: Path) -> None:
        """Sets the directory's mtime, by which clean() orders slots, strictly after every other slot's."""
        newest = max((p.stat().st_mtime_ns for p in self._slot_dirs()), default=0)
        stamp = max(time.time_ns(), newest + 1)
        os.utime(path, ns=(stamp, stamp))

    def _slot_dirs(self) -> list[Path]:
        """Slot directories, newest install first."""
        dirs = [p for p in self.slots_dir.iterdir() if not p.name.startswith(".") and p.is_dir()
                and not p.is_symlink()]
        return sorted(dirs, key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)


def _slot_at(path: Path) -> Slot:
    manifest = read_manifest(path)
    try:
        return Slot(path.name, path, str(manifest["name"]), int(manifest["version"]))
    except (KeyError, TypeError, ValueError) as err:
        raise BundleError(f"{path}/manifest.json has no valid name and version: {err}") from err


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._")[:64] or "bundle"


def _fingerprint(root: Path) -> tuple:
    entries = []
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        entries.append((path.relative_to(root).as_posix(), st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns,
                        st.st_ctime_ns))
    return tuple(entries)


def _fsync_tree(root: Path) -> None:
    for directory, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(directory))
