"""A device's OTA side in its own process, for tests/edge_runtime/test_update_faults.py to kill -9.

    python -m tests.edge_runtime.update_process --root DEVICE_DIR --key release.pub --statuses s.jsonl \
        [--command '{"schema": "edgefleet.cmd", ...}'] [--kill-at POINT]

Start-up as a device does it: open the slot store, serve its current slot, `Updater.recover()`, then
handle the command if one is given. Each Status is appended to --statuses as one JSON line. With
--kill-at the process SIGKILLs itself at that point (test-only hooks, installed here, not in the library):

    download      mid-transfer, after 16 KiB of the archive (some of it in the .partial file)
    unpack        mid-install: the archive is unpacked into the store's temporary directory, not verified
    verify        store.install returned: the new slot is on disk, the updater has not journaled it
    self_test     the new slot's Predictor is loaded, its self-test not run
    switch_before the "switching" stage is journaled, nothing switched
    switch        store.activate returned (current -> new slot), the host still serves the old model
    health        the "health_check" stage is journaled and reported (also during recover's re-run)
    rollback      store.rollback returned (current -> previous), the host still serves the newer model

At the end it prints one JSON line: the model served, its self-test, a prediction, the current slot and
the journal.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

import numpy as np

from edgefleet.core import archive
from edgefleet.core.ota import Status, parse_command
from edgefleet.core.signing import TrustStore
from edgefleet.edge_runtime import updater as updater_module
from edgefleet.edge_runtime.model_host import ModelHost
from edgefleet.edge_runtime.predictor import Predictor
from edgefleet.edge_runtime.slots import SlotStore
from edgefleet.edge_runtime.updater import HealthPolicy, Updater


def die() -> None:
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install_kill_hooks(point: str | None, store: SlotStore, first_path: Path) -> None:
    if point == "download":
        real_download = updater_module.download

        def download(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            def progress(received: int, total: int | None) -> None:
                if received >= 16384:  # past the file object's 8 KiB buffer: some bytes are on disk
                    die()
            return real_download(*args, **{**kwargs, "progress": progress})

        updater_module.download = download
    else:
        # the kill lands right after the stage's last step has finished
        owners = {"unpack": (archive, "unpack"), "verify": (store, "install"), "rollback": (store, "rollback"),
                  "switch": (store, "activate")}
        if point in owners:
            die_after(*owners[point])


def die_after(owner: object, name: str) -> None:
    """Replaces owner.name with a call to the real one followed by kill -9."""
    real = getattr(owner, name)

    def call_then_die(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        real(*args, **kwargs)
        die()

    setattr(owner, name, call_then_die)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("--statuses", type=Path, required=True)
    parser.add_argument("--command")
    parser.add_argument("--kill-at")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")

    trust = TrustStore.from_paths([args.key])
    store = SlotStore(args.root / "models", trust)
    first = store.current()

    def make_predictor(path: Path) -> Predictor:
        predictor = Predictor(path, trusted_keys=trust, threads=1)
        if args.kill_at == "self_test" and Path(path).resolve() != first.path.resolve():
            die()
        return predictor

    def report(status: Status) -> None:
        with args.statuses.open("a") as out:
            out.write(status.to_payload().decode() + "\n")
        if (args.kill_at, status.state) in (("switch_before", "switching"), ("health", "health_check")):
            die()

    host = ModelHost(make_predictor(first.path))
    install_kill_hooks(args.kill_at, store, first.path)
    updater = Updater(store, host, trust=trust, workdir=args.root / "incoming", report=report, fleet="lab",
                      device="pi-01", make_predictor=make_predictor, health=HealthPolicy(golden_runs=5))
    updater.recover()
    assert updater.wait(60), "recovery did not finish"
    if args.command:
        updater.handle(parse_command(args.command))
        assert updater.wait(60), "the update did not finish"

    served = host.current
    x = served.bundle.golden()[0]["pixels"]
    current = store.current()
    print(json.dumps({
        "serving": {"name": served.bundle.name, "version": served.bundle.version, "root": str(served.bundle.root)},
        "self_test": served.self_test().passed,
        "prediction": np.argmax(host.predict(x)["logits"], axis=1).tolist(),
        "current": None if current is None else {"id": current.id, "version": current.version},
        "journal": store.read_journal(),
    }))


if __name__ == "__main__":
    main()
