"""Quality gates without telemetry: the real cloud (real SQLite, the Mosquitto fixture) and scripted devices
(tests/cloud/rollout_kit.py), which answer installs but send no telemetry windows, so every gate lacks
data. What must happen: a bad gate spec is one 400 naming the field (one CLI line, exit 2); insufficient
data is never a silent pass: it fails the rollout (canaries rolled back, the rest untouched) or, if so
configured, lets it go on with the verdict saying so; a restarted cloud keeps the observation it began.
The gates judged on real agents' telemetry: test_quality_gates_fleet.py; the rules alone:
test_quality_gate_rules.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx

from tests.cloud.rollout_kit import (  # noqa: F401 - fixtures, found by pytest under their names
    GZIP,
    Cloud,
    archive_fixture,
    cloud_fixture,
    devices_to_stop_fixture,
    fleet_fixture,
    no_edgefleet_environment_fixture,
    planned_waves,
    start_cloud_fixture,
    start_devices,
    wait_until,
)

GATED = {"kind": "waves", "waves": [50, 100], "success_threshold": 1.0}


def test_bad_gate_specs_get_one_400(cloud: Cloud, fleet):
    fleet(2)

    def post(strategy: dict, target: dict | None = None) -> httpx.Response:
        return cloud.client.post("/api/v1/deployments", json={
            "target": target or {"fleet": "lab"}, "bundle": {"name": "digits-cnn", "version": 1},
            "strategy": strategy})

    cases = [
        ({**GATED, "quality_gates": {}}, "set at least one threshold"),
        ({**GATED, "quality_gates": {"max_prediction_psi": -1}},
         "strategy.quality_gates.max_prediction_psi must be within (0, 10], got -1"),
        ({**GATED, "quality_gates": {"max_accuracy_drop": 1.5}},
         "strategy.quality_gates.max_accuracy_drop must be within [0, 1], got 1.5"),
        ({**GATED, "quality_gates": {"max_p99_ratio": 0.5}}, "strategy.quality_gates.max_p99_ratio must be within [1"),
        ({**GATED, "quality_gates": {"max_error_rate_increase": 0.01, "observation_seconds": 0}},
         "strategy.quality_gates.observation_seconds must be within (0, 604800], got 0"),
        ({**GATED, "quality_gates": {"max_p99_ratio": 2, "min_samples": 10}},
         "strategy.quality_gates.min_samples must be within [100, 1e+09], got 10"),
        ({**GATED, "quality_gates": {"max_accuracy_drop": 0.1, "min_labels": 0}},
         "strategy.quality_gates.min_labels must be within [1, 1e+09], got 0"),
        ({**GATED, "mode": "shadow", "quality_gates": {"max_p99_ratio": 2}}, "need mode 'switch'"),
        ({"quality_gates": {"max_p99_ratio": 2}}, "need at least two waves"),
    ]
    for strategy, message in cases:
        response = post(strategy)
        assert response.status_code == 400 and message in response.json()["detail"], (strategy, response.text)
    one_device = post({**GATED, "quality_gates": {"max_p99_ratio": 2}}, {"devices": ["lab-00"]})
    assert one_device.status_code == 400
    assert "need control devices: waves [50, 100] of 1 device(s)" in one_device.json()["detail"]
    # a typo or a wrong type is the body's shape: 422, as for every strategy field
    assert post({**GATED, "quality_gates": {"max_psi": 0.2}}).status_code == 422
    assert post({**GATED, "quality_gates": {"max_p99_ratio": "fast"}}).status_code == 422
    assert post({**GATED, "quality_gates": {"max_p99_ratio": 2, "on_insufficient": "maybe"}}).status_code == 422
    assert cloud.client.get("/api/v1/deployments").json() == []  # nothing stored
    # the CLI: the server's message on one line, exit 2
    env = {**os.environ, "EDGEFLEET_CLOUD": cloud.server.url, "EDGEFLEET_TOKEN": cloud.token, "COLUMNS": "200"}
    cli = subprocess.run([sys.executable, "-m", "edgefleet.cli.main", "deploy", "digits-cnn", "1", "--fleet", "lab",
                          "--waves", "50,100", "--gate-psi", "-1"], capture_output=True, text=True, env=env,
                         timeout=60, check=False)
    assert cli.returncode == 2 and len(cli.stderr.strip().splitlines()) == 1, cli.stderr
    assert "strategy.quality_gates.max_prediction_psi must be within (0, 10], got -1" in cli.stderr


def test_insufficient_data_fails_the_canaries_by_default(cloud: Cloud, fleet):
    devices = fleet(4)
    plan = cloud.deploy(**GATED, wave_timeout_seconds=3,
                        quality_gates={"observation_seconds": 0.5, "max_p99_ratio": 2.0, "max_prediction_psi": 0.2})
    canary, control = planned_waves(plan)
    aborted = cloud.wait_state(plan["id"], "aborted")
    assert aborted["reason"] == (
        "quality gate failed after the canary wave: prediction_drift: insufficient data: canary 0, control 0 "
        "predictions (min_samples 200); latency: insufficient data: canary 0, control 0 requests (min_samples 200)")
    gates = aborted["gates"]
    assert gates["outcome"] == "failed" and gates["on_insufficient"] == "fail"
    assert sorted(gates["canary"]) == sorted(canary) and sorted(gates["control"]) == sorted(control)
    assert [(r["gate"], r["outcome"]) for r in gates["results"]] == [("prediction_drift", "insufficient"),
                                                                      ("latency", "insufficient")]
    # judged only after the wave's timeout: the gates waited for data that never came
    assert gates["judged_at"] >= gates["started"] + 0.5 and aborted["gates_started_at"] == gates["started"]
    wait_until(lambda: all(devices[d].ops() == ["install", "rollback"] for d in canary), "canaries rolled back")
    wait_until(lambda: all(row["state"] == "rolled_back" for row in cloud.deployment(plan["id"])["devices"]
                           if row["device"] in canary), "rollbacks reported")
    time.sleep(0.5)  # several engine ticks: the control devices still hear nothing
    assert all(devices[d].commands == [] for d in control)


def test_insufficient_data_passes_when_so_configured_and_says_so(cloud: Cloud, fleet):
    devices = fleet(4)
    env = {**os.environ, "EDGEFLEET_CLOUD": cloud.server.url, "EDGEFLEET_TOKEN": cloud.token, "COLUMNS": "250"}
    command = ["deploy", "digits-cnn", "1", "--fleet", "lab", "--waves", "50,100", "--success", "1", "--wave-timeout",
               "3", "--health-window", "1", "--gate-observe", "0.5", "--gate-accuracy-drop", "0.05",
               "--gate-on-insufficient", "pass"]
    deployed = subprocess.run([sys.executable, "-m", "edgefleet.cli.main", *command], capture_output=True, text=True,
                              env=env, timeout=60, check=False)
    assert deployed.returncode == 0, deployed.stderr
    plan = {"id": deployed.stdout.split()[1].rstrip(":")}
    assert cloud.deployment(plan["id"])["strategy"]["quality_gates"] == {
        "observation_seconds": 0.5, "min_samples": 200, "min_labels": 100, "on_insufficient": "pass",
        "max_prediction_psi": None, "max_accuracy_drop": 0.05, "max_p99_ratio": None, "max_error_rate_increase": None}
    done = cloud.wait_state(plan["id"], "completed")
    gates = done["gates"]
    assert gates["outcome"] == "passed with insufficient data (on_insufficient pass)"
    (result,) = gates["results"]
    assert result["gate"] == "accuracy" and result["outcome"] == "insufficient"
    assert result["text"] == ("insufficient data: canary 0, control 0 labels (min_labels 100); estimate: canary 0, "
                              "control 0 predictions (min_samples 200)")
    assert all(device.ops() == ["install"] for device in devices.values())
    # the CLI's rollout table shows the verdict
    shown = subprocess.run([sys.executable, "-m", "edgefleet.cli.main", "rollout", "status", plan["id"]],
                           capture_output=True, text=True, env=env, timeout=60, check=False)
    assert shown.returncode == 0, shown.stderr
    assert "quality gates: passed with insufficient data" in shown.stdout and "insufficient" in shown.stdout


def test_a_restarted_cloud_keeps_the_observation_it_began(start_cloud, archive, mosquitto, devices_to_stop):
    cloud = start_cloud()
    assert cloud.client.post("/api/v1/bundles", content=archive.read_bytes(), headers=GZIP).status_code == 201
    devices = start_devices(cloud, mosquitto, 4, running=devices_to_stop)
    plan = cloud.deploy(**GATED, wave_timeout_seconds=4, quality_gates={
        "observation_seconds": 3, "max_error_rate_increase": 0.01, "on_insufficient": "pass"})
    canary, control = planned_waves(plan)
    wait_until(lambda: cloud.deployment(plan["id"])["gates_started_at"], "the observation begins")
    began = cloud.deployment(plan["id"])["gates_started_at"]
    cloud.client.close()
    cloud.server.stop()  # mid-observation

    again = start_cloud(token=cloud.token)  # same data directory and database
    done = again.wait_state(plan["id"], "completed")
    assert done["gates_started_at"] == began and done["gates"]["started"] == began
    assert done["gates"]["judged_at"] >= began + 3  # the whole observation, counted from its first start
    assert all(device.ops() == ["install"] for device in devices.values())
    assert sorted(done["gates"]["control"]) == sorted(control) and sorted(done["gates"]["canary"]) == sorted(canary)
