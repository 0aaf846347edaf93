"""kill -9 during an update, at every stage, then start again: the device serves a whole model (the old
one, or the new one if the switch had happened), passes its self-test, and recover() reports where the
update stopped. The updater runs in tests/edge_runtime/update_process.py, which SIGKILLs itself at a
named point (test-only hooks in that script)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edgefleet.core.ota import BundleRef, Command
from edgefleet.core.signing import TrustStore
from edgefleet.edge_runtime.slots import SlotStore
from tests.edge_runtime.ota_kit import ArchiveServer, env_with_repo, make_variant, pack, sha256

REPO = Path(__file__).resolve().parents[2]

# kill point -> (stage the journal names, state recover() reports, version served afterwards)
POINTS = {
    "download": ("downloading", "failed", 1),
    "unpack": ("verifying", "failed", 1),
    "verify": ("verifying", "failed", 1),
    "self_test": ("self_testing", "failed", 1),
    "switch_before": ("switching", "failed", 1),
    "switch": ("switching", "health_check", 2),
    "health": ("health_check", "health_check", 2),
}


@pytest.fixture(scope="module")
def server(digits_bundle, tmp_path_factory):
    work = tmp_path_factory.mktemp("fault-bundles")
    (work / "public").mkdir()
    pack(make_variant(digits_bundle.root, work / "v2", digits_bundle.private_key, version=2),
         work / "public" / "v2.tar.gz")
    with ArchiveServer(work / "public", chunk=4096, delay=0.01) as server:  # several reads: killable mid-way
        yield server


class DeviceProcess:
    def __init__(self, root: Path, key: Path, server: ArchiveServer) -> None:
        self.root, self.key, self.server = root, key, server
        self.runs = 0
        archive = server.directory / "v2.tar.gz"
        ref = BundleRef("digits-cnn", 2, f"{server.url}/v2.tar.gz", sha256(archive), archive.stat().st_size)
        self.command = Command("c-v2", "install", "d-1", ref, max_bytes=ref.size, timeout_seconds=10,
                               health_window_seconds=0.3)

    def run(self, *, command: bool | Command = False, kill_at: str | None = None) -> tuple[int, dict | None, list]:
        self.runs += 1
        statuses = self.root / f"statuses-{self.runs}.jsonl"
        args = [sys.executable, "-m", "tests.edge_runtime.update_process", "--root", str(self.root),
                "--key", str(self.key), "--statuses", str(statuses)]
        if command:
            args += ["--command", (self.command if command is True else command).to_payload().decode()]
        if kill_at:
            args += ["--kill-at", kill_at]
        done = subprocess.run(args, cwd=REPO, env=env_with_repo(), capture_output=True, text=True, timeout=60,
                              check=False)
        if done.returncode not in (0, -signal.SIGKILL):
            raise AssertionError(f"the device process failed ({done.returncode}):\n{done.stderr[-3000:]}")
        lines = statuses.read_text().splitlines() if statuses.exists() else []
        result = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else None
        return done.returncode, result, [json.loads(line) for line in lines]

    def journal(self) -> dict | None:
        path = self.root / "models" / "journal.json"
        return json.loads(path.read_text()) if path.exists() else None

    def slot_dirs(self) -> list[str]:
        return sorted(p.name for p in (self.root / "models" / "slots").iterdir())

    def incoming(self) -> list[str]:
        path = self.root / "incoming"
        return sorted(p.name for p in path.iterdir()) if path.exists() else []


@pytest.fixture
def device(digits_bundle, tmp_path, server) -> DeviceProcess:
    store = SlotStore(tmp_path / "models", TrustStore.from_paths([digits_bundle.public_key]))
    store.activate(store.install(digits_bundle.root, max_bytes=10**7))  # provisioned with v1
    return DeviceProcess(tmp_path, digits_bundle.public_key, server)


@pytest.mark.parametrize("point", list(POINTS))
def test_kill_at_each_stage_then_recover(device, point):
    stage, state, version = POINTS[point]
    code, _, before = device.run(command=True, kill_at=point)
    assert code == -signal.SIGKILL
    assert device.journal()["stage"] == stage  # journaled before the stage's work began
    assert before[-1]["state"] == stage
    left = device.slot_dirs()
    if point == "unpack":  # the store's temporary directory, half an install
        assert any(name.startswith(".tmp-") for name in left)
    if point not in ("download", "unpack"):  # the new slot is on disk (after "verify": not even journaled)
        assert len([name for name in left if not name.startswith(".")]) == 2

    code, after, statuses = device.run()
    assert code == 0
    first = statuses[0]
    assert first["command"] == "c-v2" and first["state"] == state
    assert first["detail"]["interrupted_at"] == stage
    if state == "failed":
        assert first["reason"] == f"interrupted at {stage}" and [s["state"] for s in statuses] == ["failed"]
    else:  # the switch had happened: the health window is run again, then the new model is kept
        assert [s["state"] for s in statuses] == ["health_check", "active"]
    # a whole model serves: the one the links name, self-tested, answering
    assert after["serving"]["version"] == version == after["current"]["version"]
    assert after["self_test"] and len(after["prediction"]) == 8
    assert after["journal"] is None
    # no partial state is left: no half-installed or orphaned slot, no stray download
    slots = device.slot_dirs()
    assert not any(name.startswith(".") for name in slots)
    assert [name.split("-v")[1][0] for name in slots] == (["1"] if version == 1 else ["1", "2"])
    assert device.incoming() == (["digits-cnn-v2.tar.gz.partial"] if point == "download" else [])


def test_download_resumes_after_a_kill(device):
    code, _, _ = device.run(command=True, kill_at="download")
    assert code == -signal.SIGKILL
    partial = device.root / "incoming" / "digits-cnn-v2.tar.gz.partial"
    kept = partial.stat().st_size
    assert 0 < kept < device.command.bundle.size
    served_before = len(device.server.requests)
    code, after, statuses = device.run(command=True)  # recover, then the cloud's retry of the command
    assert code == 0
    assert [s["state"] for s in statuses] == ["failed", "received", "downloading", "verifying", "self_testing",
                                              "switching", "health_check", "active"]
    assert after["serving"]["version"] == 2 and after["self_test"]
    assert device.server.requests[served_before:] == [("/v2.tar.gz", f"bytes={kept}-")]
    assert device.incoming() == []


def test_health_window_interrupted_twice_rolls_back(device):
    code, _, _ = device.run(command=True, kill_at="health")
    assert code == -signal.SIGKILL
    code, _, statuses = device.run(kill_at="health")  # recovery re-runs the window, and dies in it again
    assert code == -signal.SIGKILL and statuses[-1]["detail"]["recoveries"] == 1
    code, after, statuses = device.run()
    assert code == 0
    assert [(s["state"], s["reason"]) for s in statuses] == [("rolled_back", "interrupted at health_check again")]
    assert after["serving"]["version"] == 1 == after["current"]["version"] and after["self_test"]
    assert [name.split("-v")[1][0] for name in device.slot_dirs()] == ["1"]


def test_kill_during_a_rollback_command(device):
    code, after, statuses = device.run(command=True)
    assert code == 0 and statuses[-1]["state"] == "active" and after["serving"]["version"] == 2
    rollback = Command("c-rb", "rollback", "d-1", BundleRef("digits-cnn", 2),
                       reason="wave 1 failure rate 0.50 over 0.20")
    code, _, statuses = device.run(command=rollback, kill_at="rollback")
    assert code == -signal.SIGKILL and device.journal()["stage"] == "rolling_back"
    code, after, statuses = device.run()
    assert code == 0
    assert [(s["state"], s["reason"]) for s in statuses] == [("rolled_back", "wave 1 failure rate 0.50 over 0.20")]
    assert statuses[0]["bundle"] == {"name": "digits-cnn", "version": 1}
    assert after["serving"]["version"] == 1 == after["current"]["version"] and after["self_test"]
    assert after["journal"] is None
