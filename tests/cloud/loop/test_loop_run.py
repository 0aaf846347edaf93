"""The loop closed end to end: four real device agents serve the digits CNN (v1) over HTTP, report through a
real Mosquitto to a real cloud (SQLite) and capture their requests; live traffic drifts (half the digits
brighter by 0.5, which v1 gets mostly wrong), its true labels reach the cloud's feedback API two seconds
later. The drift monitor opens an alert; `edgefleet loop watch --policy --once` (a real process) sees it
fire the policy's trigger and runs it (later runs: `edgefleet loop run`): it freezes the labelled captures,
retrains from scratch with examples/loop_train_digits.py, quantizes, compiles, evaluates offline, pushes and
deploys in two waves whose canaries are judged on their measured accuracy against the control:

- the first run ends with the fleet on v2 and the drifted accuracy of every device recovered;
- a careless training function (labels shuffled) is stopped at the offline evaluation, nothing is pushed;
- forced past it, the same candidate is stopped by the canary's accuracy gate and the canaries roll back.

`edgefleet loop status` shows the three runs, each stage with its state and time."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from edgefleet.core.bundle import Bundle
from examples.loop_fleet import LabelledTraffic, brighter, device_accuracy, start_agents, write_policy
from tests.cli.test_bundle_commands import edgefleet
from tests.cloud.rollout_kit import (  # noqa: F401 - fixtures, found by pytest under their names
    GZIP,
    no_edgefleet_environment_fixture,
    start_cloud_fixture,
    wait_until,
)

pytestmark = pytest.mark.slow
REPO = Path(__file__).parents[3]
FNS = "examples.loop_train_digits"


def labelled_rows(cloud) -> int:  # noqa: ANN001 - rollout_kit.Cloud
    count, after = 0, 0
    while True:
        page = cloud.client.get("/api/v1/captures", params={"fleet": "lab", "limit": 1000, "after_id": after})
        assert page.status_code == 200, page.text
        rows = page.json()
        count += sum(len(row["label"]["label"]) for row in rows if row.get("label"))
        if len(rows) < 1000:
            return count
        after = rows[-1]["id"]


def drift_alerts(cloud) -> list[dict]:  # noqa: ANN001
    alerts = cloud.client.get("/api/v1/alerts", params={"status": "open"}).json()
    return [a for a in alerts if a["kind"] == "data_drift" and a["fleet"] == "lab"]


def run_loop(cloud, policy: Path, *extra: str):  # noqa: ANN001, ANN201
    env = {"EDGEFLEET_CLOUD": cloud.server.url, "EDGEFLEET_TOKEN": cloud.token, "COLUMNS": "200"}
    return edgefleet("loop", "run", "--policy", str(policy), "--workdir", str(policy.parent / "runs"), *extra,
                     env=env, cwd=REPO)


def test_a_drifted_fleet_is_retrained_and_moved_to_v2_and_bad_candidates_are_stopped(
        start_cloud, mosquitto, digits_bundle, digits_splits, tmp_path: Path):
    cloud = start_cloud(drift_interval_seconds=1.0)
    archive = Bundle.open(digits_bundle.root).pack(tmp_path / "v1.tar.gz")
    assert cloud.client.post("/api/v1/bundles", content=archive.read_bytes(), headers=GZIP).status_code == 201
    changed = cloud.client.put("/api/v1/fleets/lab/capture", json={"enabled": True, "sample_rate": 0.5,
                                                                   "max_per_second": 3})
    assert changed.status_code == 200, changed.text
    splits = digits_splits
    keys = {"private_key": digits_bundle.private_key, "public_key": digits_bundle.public_key}
    data = {"x_train": splits.x_train, "y_train": splits.y_train, "x_test": splits.x_test, "y_test": splits.y_test}
    good = write_policy(tmp_path / "good", function=f"{FNS}:retrain", **keys, **data)
    careless = write_policy(tmp_path / "careless", function=f"{FNS}:careless", **keys, **data)
    agents = start_agents(cloud.server.url, cloud.token, mosquitto.url, digits_bundle.root, digits_bundle.public_key,
                          tmp_path)
    urls = {name: agent.http_url for name, agent in agents.items()}
    bright = brighter(splits.x_test)
    try:
        with LabelledTraffic(urls, splits.x_train, splits.y_train, cloud.server.url, cloud.token) as traffic:
            before = {name: device_accuracy(url, bright, splits.y_test) for name, url in urls.items()}
            traffic.drift.set()
            wait_until(lambda: drift_alerts(cloud) and labelled_rows(cloud) >= 400,
                       "a drift alert and the policy's 400 labelled captured rows", 120)

            first = edgefleet("loop", "watch", "--policy", str(good), "--once", "--workdir", str(good.parent / "runs"),
                              env={"EDGEFLEET_CLOUD": cloud.server.url, "EDGEFLEET_TOKEN": cloud.token}, cwd=REPO)
            assert first.returncode == 0, first.stdout + first.stderr
            assert {a.predictor.bundle.version for a in agents.values()} == {2}
            after = {name: device_accuracy(url, bright, splits.y_test) for name, url in urls.items()}

            second = run_loop(cloud, careless)
            third = run_loop(cloud, careless, "--force")
            wait_until(lambda: {a.predictor.bundle.version for a in agents.values()} == {2},
                       "the canaries back on v2", 60)
            assert not [f for f in traffic.failures if "feedback" in f], traffic.failures[:5]
    finally:
        for agent in agents.values():
            agent.stop()

    print("drifted accuracy per device before/after:",
          {name: f"{before[name]:.3f} -> {after[name]:.3f}" for name in urls})
    for name in urls:  # measured 0.43 -> 0.9 on each device; 450 digits give a binomial s.d. under 0.025
        assert after[name] >= before[name] + 0.3, (name, before[name], after[name])

    assert second.returncode == 2
    assert "stopped: offline evaluation refused the candidate: the candidate is worse than the serving model" in \
        second.stderr, second.stderr
    assert third.returncode == 2
    assert "stopped: deployment" in third.stderr and "quality gate failed after the canary wave" in third.stderr, \
        third.stderr
    assert "accuracy" in third.stderr

    env = {"EDGEFLEET_CLOUD": cloud.server.url, "EDGEFLEET_TOKEN": cloud.token, "COLUMNS": "200"}
    shown = edgefleet("loop", "status", "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    runs = {run["trigger"].get("forced", False) * 2 + (run["policy"] == "digits-bright"): run
            for run in json.loads(shown.stdout)}
    assert len(json.loads(shown.stdout)) == 3
    states = [[(s["name"], s["state"]) for s in run["stages"]]
              for run in sorted(json.loads(shown.stdout), key=lambda r: r["started_at"])]
    stages = ["dataset", "train", "compress", "compile", "evaluate", "push", "deploy"]
    assert states[0] == [(name, "succeeded") for name in stages]
    assert states[1] == [*((name, "succeeded") for name in stages[:4]), ("evaluate", "stopped")]
    assert states[2] == [*((name, "succeeded") for name in stages[:6]), ("deploy", "stopped")]
    assert runs and all(s["seconds"] is not None for run in json.loads(shown.stdout) for s in run["stages"])
    first_run = sorted(json.loads(shown.stdout), key=lambda r: r["started_at"])[0]
    assert first_run["bundle"] == {"name": "digits-cnn", "version": 2}
    assert first_run["trigger"]["kind"] == "drift" and first_run["trigger"]["alert_kind"] == "data_drift"
    assert isinstance(first_run["trigger"]["alert_id"], int)
    measured = first_run["stages"][-1]["metrics"]["accuracy_per_device"]  # live traffic, half of it bright
    print("measured accuracy per device (labels that arrived):", json.dumps(measured))
    assert sorted(measured) == sorted(urls)
    for figures in measured.values():
        assert figures["before"]["version"] == 1 and figures["after"]["version"] == 2
        assert figures["before"]["labels"] >= 100 and figures["after"]["labels"] >= 40, figures
        assert figures["after"]["accuracy"] > figures["before"]["accuracy"] + 0.1, figures
    dataset = first_run["stages"][0]["outputs"]
    lineage = Bundle.open(Path(first_run["stages"][1]["outputs"]["bundle"])).manifest["lineage"]
    assert lineage["dataset"]["fingerprint"] == dataset["fingerprint"]
    table = edgefleet("loop", "status", env=env)
    assert table.returncode == 0 and "3 loop run(s)" in table.stdout, table.stdout + table.stderr
    print(table.stdout)
    assert os.path.isdir(good.parent / "runs")
