"""The OTA updater end to end: real signed bundle archives over real HTTP, a real slot store, the real
digits CNN serving live traffic while it is replaced, tested, rolled back."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgefleet.core.ota import BundleRef, Command, Status
from edgefleet.core.signing import TrustStore
from edgefleet.edge_runtime.background import BackgroundThreads
from edgefleet.edge_runtime.model_host import ModelHost
from edgefleet.edge_runtime.predictor import Predictor
from edgefleet.edge_runtime.slots import SlotStore
from edgefleet.edge_runtime.updater import HealthPolicy, Updater
from tests.edge_runtime.ota_kit import ArchiveServer, make_variant, pack, sha256

SWITCH_STATES = ["received", "downloading", "verifying", "self_testing", "switching", "health_check"]


@pytest.fixture(scope="module")
def served(digits_bundle, tmp_path_factory):
    """Archives of v2 and v3 (copies of the digits bundle), v2 with wrong golden outputs, and v2 with
    perturbed weights, on a real HTTP server."""
    work = tmp_path_factory.mktemp("ota-bundles")
    public = work / "public"
    public.mkdir()
    key = digits_bundle.private_key
    variants = {
        "v2": make_variant(digits_bundle.root, work / "v2", key, version=2),
        "v3": make_variant(digits_bundle.root, work / "v3", key, version=3),
        "v2-bad-golden": make_variant(digits_bundle.root, work / "v2-bad-golden", key, version=2, golden_offset=0.5),
        "v2-perturbed": make_variant(digits_bundle.root, work / "v2-perturbed", key, version=2, weight_noise=0.5),
    }
    for label, root in variants.items():
        pack(root, public / f"{label}.tar.gz")
    with ArchiveServer(public) as server:
        yield server


@dataclass
class Device:
    store: SlotStore
    host: ModelHost
    updater: Updater
    statuses: list[Status]
    workdir: Path
    server: ArchiveServer

    def command(self, label: str, version: int, **options) -> Command:
        path = self.server.directory / f"{label}.tar.gz"
        ref = BundleRef("digits-cnn", version, f"{self.server.url}/{label}.tar.gz", sha256(path), path.stat().st_size)
        options = {"max_bytes": ref.size, "timeout_seconds": 10.0, "health_window_seconds": 0.5, **options}
        return Command(f"c-{label}-{next(IDS)}", "install", "d-1", ref, **options)

    def run(self, command: Command, timeout: float = 30.0) -> list[Status]:
        self.statuses.clear()
        assert self.updater.handle(command)
        assert self.updater.wait(timeout)
        return [s for s in self.statuses if s.command == command.id]


IDS = itertools.count()


def make_device(digits_bundle, tmp_path, served, health=HealthPolicy(min_requests=10, poll_seconds=0.05),  # noqa: B008
                make_predictor=None) -> Device:
    trust = TrustStore.from_paths([digits_bundle.public_key])
    store = SlotStore(tmp_path / "models", trust)
    store.activate(store.install(digits_bundle.root, max_bytes=10**7))

    def load(path: Path) -> Predictor:
        return Predictor(path, trusted_keys=trust, threads=1)

    make_predictor = make_predictor or load
    host = ModelHost(make_predictor(store.current().path))
    statuses: list[Status] = []
    updater = Updater(store, host, trust=trust, workdir=tmp_path / "incoming", report=statuses.append,
                      fleet="lab", device="pi-01", make_predictor=make_predictor, health=health)
    return Device(store, host, updater, statuses, tmp_path / "incoming", served)


@pytest.fixture
def device(digits_bundle, tmp_path, served):
    return make_device(digits_bundle, tmp_path, served)


class Traffic(BackgroundThreads):
    """Threads predicting on the host for the duration of a `with` block; failures are recorded."""

    def __init__(self, host: ModelHost, x, threads: int = 2) -> None:
        self.host, self.x = host, x
        self.stop = threading.Event()
        self.versions: list[int] = []
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._loop) for _ in range(threads)]

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                self.host.predict(self.x)
                self.versions.append(self.host.current.bundle.version)
            except Exception as err:  # noqa: BLE001 - the test asserts on them
                self.failures.append(repr(err))
            time.sleep(0.0005)


def slot_versions(store: SlotStore) -> list[int]:
    return sorted(slot.version for slot in store.slots())


def test_good_update_ends_active_and_serves_the_new_model(device, digits_splits):
    with Traffic(device.host, digits_splits.x_test[:4]) as traffic:
        statuses = device.run(device.command("v2", 2))
    assert [s.state for s in statuses] == SWITCH_STATES + ["active"]
    assert all(s.bundle == BundleRef("digits-cnn", 2) and s.fleet == "lab" and s.device == "pi-01" for s in statuses)
    active = statuses[-1]
    assert active.reason is None and active.detail["self_test"]["passed"]
    assert active.detail["health"]["requests"] >= 10 and active.detail["health"]["errors"] == 0
    assert traffic.failures == [] and {1, 2} <= set(traffic.versions)
    assert device.host.current.bundle.version == 2 and device.host.current.self_test().passed
    assert device.store.current().version == 2 and device.store.previous().version == 1
    assert device.store.read_journal() is None and list(device.workdir.iterdir()) == []
    # and the next version after it, while the old slots are cleaned down to current, previous, keep
    statuses = device.run(device.command("v3", 3))
    assert statuses[-1].state == "active" and device.store.current().version == 3


def test_self_test_failure_is_never_activated(device, digits_splits):
    with Traffic(device.host, digits_splits.x_test[:4]) as traffic:
        statuses = device.run(device.command("v2-bad-golden", 2))
    assert [s.state for s in statuses] == ["received", "downloading", "verifying", "self_testing", "failed"]
    failed = statuses[-1]
    assert failed.reason == "self_test_failed" and failed.detail["stage"] == "self_testing"
    assert "max abs error 0.5" in failed.detail["message"]
    assert traffic.failures == [] and set(traffic.versions) == {1}
    assert device.store.current().version == 1 and slot_versions(device.store) == [1]  # the new slot is gone
    assert device.store.read_journal() is None


def test_latency_budget_it_cannot_meet_fails_before_the_switch(device):
    statuses = device.run(device.command("v2", 2, latency_budget_ms=1e-6))
    assert statuses[-1].state == "failed" and statuses[-1].reason == "latency_budget"
    assert "switching" not in [s.state for s in statuses]
    assert device.host.current.bundle.version == 1 and slot_versions(device.store) == [1]


class FlakyPredictor(Predictor):
    """A model that passes its self-test and golden timing runs (batches of 8 and 1) and fails one live
    request in three (the test's traffic sends batches of 4)."""

    calls = 0

    def predict(self, inputs):  # noqa: ANN001, ANN201
        if len(inputs) == 4:
            self.calls += 1
            if self.calls % 3 == 0:
                raise RuntimeError("the new model crashed on a live request")
        return super().predict(inputs)


@pytest.mark.parametrize("fault", ["latency", "error_rate"])
def test_health_window_failure_rolls_back(digits_bundle, tmp_path, served, digits_splits, fault):
    trust = TrustStore.from_paths([digits_bundle.public_key])

    def make_predictor(path: Path) -> Predictor:
        cls = FlakyPredictor if fault == "error_rate" and "-v2-" in Path(path).name else Predictor
        return cls(path, trusted_keys=trust, threads=1)

    health = HealthPolicy(min_requests=10, poll_seconds=0.05,
                          max_p99_latency_ms=1e-6 if fault == "latency" else None)
    device = make_device(digits_bundle, tmp_path, served, health, make_predictor)
    with Traffic(device.host, digits_splits.x_test[:4]) as traffic:
        statuses = device.run(device.command("v2", 2, health_window_seconds=2.0))
        time.sleep(0.05)
    assert [s.state for s in statuses] == SWITCH_STATES + ["rolled_back"]
    assert statuses[-1].reason == fault and statuses[-1].detail["health"]["requests"] >= 10
    assert device.host.current.bundle.version == 1 and device.host.current.self_test().passed
    assert device.store.current().version == 1 and slot_versions(device.store) == [1]
    assert device.store.read_journal() is None
    assert traffic.versions[-1] == 1
    if fault == "latency":
        assert traffic.failures == []
    else:  # errors only from the flaky model, and an error rate that ended the window early
        assert traffic.failures and all("crashed on a live request" in f for f in traffic.failures)
        assert statuses[-1].at - statuses[-2].at < 1.5


def test_rollback_command_returns_to_the_previous_slot(device, digits_splits):
    device.run(device.command("v2", 2))
    assert device.host.current.bundle.version == 2
    rollback = Command("c-rb", "rollback", "d-1", BundleRef("digits-cnn", 2),
                       reason="wave 1 failure rate 0.50 over 0.20")
    with Traffic(device.host, digits_splits.x_test[:4]) as traffic:
        statuses = device.run(rollback)
    assert [s.state for s in statuses] == ["received", "rolled_back"]
    assert statuses[-1].reason == "wave 1 failure rate 0.50 over 0.20"
    assert statuses[-1].bundle == BundleRef("digits-cnn", 1)
    assert traffic.failures == []
    assert device.host.current.bundle.version == 1 and device.store.current().version == 1
    # nothing before v1: a rollback of v1 is refused and v1 keeps serving
    statuses = device.run(Command("c-rb2", "rollback", "d-1", BundleRef("digits-cnn", 1)))
    assert statuses[-1].state == "failed" and statuses[-1].reason == "no_previous"
    assert device.host.current.bundle.version == 1


def test_a_rollback_undoes_only_the_bundle_it_names(device):
    """The orphan rollback: a device that never installed a deployment's v3 (it serves v2, v1 before it)
    must not go back to v1 when that deployment is aborted; nor for a rollback that names nothing."""
    device.run(device.command("v2", 2))
    for command, reason, says in (
            (Command("c-other", "rollback", "d-9", BundleRef("digits-cnn", 3), reason="d-9 aborted"), "not_current",
             "undoes digits-cnn v3, but this device serves digits-cnn v2"),
            (Command("c-unnamed", "rollback", "d-9", reason="an old cloud"), "unnamed_rollback", "names no bundle")):
        statuses = device.run(command)
        assert [(s.state, s.reason) for s in statuses] == [("received", None), ("failed", reason)]
        assert says in statuses[-1].detail["message"]
        assert device.host.current.bundle.version == 2 and device.store.current().version == 2
        assert device.store.previous().version == 1


def test_an_archive_that_is_not_the_announced_bundle_is_refused(device):
    """The command announces v40; the archive it points at is a genuine, signed v3: refused after the
    signature check, never installed, never reported active."""
    honest = device.command("v3", 3)
    announced = BundleRef("digits-cnn", 40, honest.bundle.url, honest.bundle.sha256, honest.bundle.size)
    statuses = device.run(Command("c-v40", "install", "d-1", announced, max_bytes=honest.max_bytes,
                                  timeout_seconds=10.0, health_window_seconds=0.5))
    assert [s.state for s in statuses] == ["received", "downloading", "verifying", "failed"]
    assert statuses[-1].reason == "bundle_mismatch"
    assert "holds digits-cnn v3, but the update named digits-cnn v40" in statuses[-1].detail["message"]
    assert device.store.current().version == 1 and slot_versions(device.store) == [1]
    assert device.host.current.bundle.version == 1


def test_a_second_command_while_busy_is_refused(device):
    first = device.command("v2", 2, health_window_seconds=1.0)
    assert device.updater.handle(first)
    second = device.command("v3", 3)
    assert not device.updater.handle(second)
    refused = [s for s in device.statuses if s.command == second.id]
    assert [(s.state, s.reason) for s in refused] == [("failed", "busy")]
    assert device.updater.wait(30)
    assert [s.state for s in device.statuses if s.command == first.id][-1] == "active"


def test_refusals_before_downloading(device):
    statuses = device.run(device.command("v2", 2))
    assert statuses[-1].state == "active"
    requests = len(device.server.requests)
    statuses = device.run(device.command("v2", 2))  # a repeated command: already active
    assert statuses[-1].state == "active" and statuses[-1].detail["already_active"]
    statuses = device.run(device.command("v2-perturbed", 2, mode="shadow"))  # not newer, no authorization
    assert [(s.state, s.reason) for s in statuses] == [("received", None), ("failed", "not_newer")]
    assert len(device.server.requests) == requests
    bad = device.command("v3", 3)
    bad = Command(bad.id, "install", "d-1", BundleRef("digits-cnn", 3, bad.bundle.url, "0" * 64, bad.bundle.size),
                  max_bytes=bad.max_bytes)
    statuses = device.run(bad)
    assert statuses[-1].state == "failed" and statuses[-1].reason == "hash_mismatch"
    assert device.store.current().version == 2 and slot_versions(device.store) == [1, 2]


def test_shadow_mode_reports_agreement_and_keeps_serving_the_old_model(device, digits_splits):
    with Traffic(device.host, digits_splits.x_test[:16]) as traffic:
        statuses = device.run(device.command("v2-perturbed", 2, mode="shadow", health_window_seconds=1.0))
    assert [s.state for s in statuses] == SWITCH_STATES[:-1] + ["active", "active"]
    started, final = statuses[-2].detail, statuses[-1].detail
    assert started["mode"] == "shadow" and started["phase"] == "testing"
    report = final["report"]
    assert final["phase"] == "report" and report["compared"] > 10 and 0.3 < report["agreement"] < 1.0
    assert report["candidate"] == {"name": "digits-cnn", "version": 2}
    assert traffic.failures == [] and set(traffic.versions) == {1}
    assert device.host.current.bundle.version == 1 and device.store.current().version == 1
    assert device.host.test_report() is None


def test_canary_mode_answers_a_fraction_then_reports(device, digits_splits):
    with Traffic(device.host, digits_splits.x_test[:4]) as traffic:
        statuses = device.run(device.command("v2", 2, mode="canary", canary_fraction=0.5, health_window_seconds=1.0))
    assert [s.state for s in statuses][-2:] == ["active", "active"]
    report = statuses[-1].detail["report"]
    assert report["mode"] == "canary" and abs(report["observed_fraction"] - 0.5) < 0.05
    assert report["arms"]["candidate"]["requests"] > 10 and report["arms"]["candidate"]["errors"] == 0
    assert traffic.failures == []
    assert device.host.current.bundle.version == 1 and device.store.current().version == 1
