"""The record of loop runs over the real API (in-process cloud, real SQLite), and when a policy's trigger
fires: the drift alerts it reads are rows the drift monitor would write, in the same table."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edgefleet.cloud.db import Alert
from edgefleet.cloud.loop.policy import load_policy
from edgefleet.cloud.loop.trigger import LoopWatcher, due_trigger
from edgefleet.core.api_client import CloudClient
from edgefleet.core.signing import TrustStore
from tests.cloud.loop.test_policy import VALID, folder  # noqa: F401 - the policy fixture's folder

RUN = {"policy": "digits-bright", "model": "digits-cnn", "fleet": "lab", "trigger": {"kind": "manual"}}


def new_run(cloud, **changes) -> dict:  # noqa: ANN001 - api_kit.Cloud
    made = cloud.client.post("/api/v1/loop/runs", json={**RUN, **changes})
    assert made.status_code == 201, made.text
    return made.json()


def test_stages_are_stamped_by_the_cloud_and_final_ones_stay_final(cloud):
    run = new_run(cloud)
    path = f"/api/v1/loop/runs/{run['id']}"
    started = cloud.client.put(f"{path}/stages/dataset", json={"state": "running", "inputs": {"fleet": "lab"}})
    assert started.status_code == 200, started.text
    done = cloud.client.put(f"{path}/stages/dataset", json={"state": "succeeded", "outputs": {"rows": 800},
                                                            "metrics": {"train_rows": 600}})
    assert done.status_code == 200, done.text
    stage = done.json()["stages"][0]
    assert stage["inputs"] == {"fleet": "lab"} and stage["outputs"] == {"rows": 800}
    assert stage["ended_at"] >= stage["started_at"] and stage["seconds"] is not None
    again = cloud.client.put(f"{path}/stages/dataset", json={"state": "running"})
    assert again.status_code == 409 and "already succeeded" in again.json()["detail"]
    cloud.client.put(f"{path}/stages/train", json={"state": "running"})
    ended = cloud.client.put(path, json={"state": "failed", "reason": "the cloud went away"})
    assert ended.status_code == 200, ended.text
    record = ended.json()
    assert record["state"] == "failed" and record["reason"] == "the cloud went away"
    assert [(s["name"], s["state"]) for s in record["stages"]] == [("dataset", "succeeded"), ("train", "failed")]
    assert "while this stage was running" in record["stages"][1]["message"]
    late = cloud.client.put(f"{path}/stages/compress", json={"state": "running"})
    assert late.status_code == 409 and "is failed" in late.json()["detail"]


@pytest.mark.parametrize(("method", "path", "body", "status", "text"), [
    ("put", "/api/v1/loop/runs/r-000000000000/stages/train", {"state": "running"}, 404, "no loop run"),
    ("put", "/api/v1/loop/runs/{id}/stages/bake", {"state": "running"}, 422, ""),
    ("put", "/api/v1/loop/runs/{id}/stages/train", {"state": "done"}, 422, ""),
    ("put", "/api/v1/loop/runs/{id}", {"state": "running"}, 422, ""),
    ("post", "/api/v1/loop/runs", {**RUN, "policy": "../etc"}, 422, ""),
    ("get", "/api/v1/loop/runs/r-nope", None, 404, "no loop run"),
])
def test_bad_requests_get_one_4xx(cloud, method, path, body, status, text):
    run = new_run(cloud)
    url = path.replace("{id}", run["id"])
    answer = getattr(cloud.client, method)(url, **({"json": body} if body is not None else {}))
    assert answer.status_code == status, answer.text
    assert text in str(answer.json()["detail"])


def add_alert(cloud, kind: str, opened_at: float, fleet: str = "lab", model: str = "digits-cnn") -> int:  # noqa: ANN001
    with cloud.server.sessions() as session:
        alert = Alert(scope="device", scope_id="cam-1", fleet=fleet, model_name=model, model_version=1, kind=kind,
                      message="drift", details={}, status="open", opened_at=opened_at)
        session.add(alert)
        session.commit()
        return alert.id


def test_a_drift_alert_fires_once_and_alerts_before_the_last_run_are_covered(cloud, folder: Path):  # noqa: F811
    (folder / "policy.toml").write_text(VALID)
    policy = load_policy(folder / "policy.toml")
    client = CloudClient(cloud.server.url, cloud.token)
    assert due_trigger(policy, client) is None
    add_alert(cloud, "data_drift", time.time() - 5, fleet="other")
    add_alert(cloud, "data_drift", time.time() - 5, model="other-model")
    add_alert(cloud, "estimated_accuracy", time.time() - 5)
    assert due_trigger(policy, client) is None  # another fleet, another model, not a drift alert
    first = add_alert(cloud, "data_drift", time.time() - 4)
    add_alert(cloud, "prediction_drift", time.time() - 3)  # a second device of the fleet, same condition
    fired = due_trigger(policy, client)
    assert fired["kind"] == "drift" and fired["alert_id"] == first and fired["alert_kind"] == "data_drift"
    new_run(cloud, trigger=fired)
    assert due_trigger(policy, client) is None  # used up, and the other alert opened before that run
    later = add_alert(cloud, "sequential_drift", time.time() + 1)
    assert due_trigger(policy, client)["alert_id"] == later


def test_a_schedule_fires_every_period(cloud, folder: Path):  # noqa: F811
    (folder / "policy.toml").write_text(VALID.replace('kind = "drift"', 'kind = "schedule"\nevery = "1h"'))
    policy = load_policy(folder / "policy.toml")
    client = CloudClient(cloud.server.url, cloud.token)
    assert due_trigger(policy, client)["kind"] == "schedule"
    new_run(cloud, trigger={"kind": "schedule"})
    assert due_trigger(policy, client) is None
    assert due_trigger(policy, client, now=time.time() + 3601)["kind"] == "schedule"


def test_a_fired_trigger_waits_for_labelled_rows_and_records_nothing(cloud, folder: Path):  # noqa: F811
    (folder / "policy.toml").write_text(VALID)
    policy = load_policy(folder / "policy.toml")
    watcher = LoopWatcher(policy, CloudClient(cloud.server.url, cloud.token), TrustStore.from_paths([]),
                          workdir=folder / "runs")
    assert watcher.check_once() is None and watcher.waiting is None  # no alert: nothing to wait for
    alert = add_alert(cloud, "data_drift", time.time() - 1)
    for _ in range(2):
        assert watcher.check_once() is None
    assert watcher.waiting["trigger"]["alert_id"] == alert
    assert (watcher.waiting["rows"], watcher.waiting["needed"]) == (0, 100)
    assert cloud.client.get("/api/v1/loop/runs").json() == []  # no run recorded while the labels are missing
    assert not (folder / "runs").exists()


def test_counting_a_dataset_filter_stores_nothing_and_refuses_a_bad_filter(cloud):
    counted = cloud.client.post("/api/v1/datasets/count", json={"fleet": "lab", "labelled_only": True})
    assert counted.status_code == 200, counted.text
    assert counted.json() == {"samples": 0, "rows": 0, "unlabelled": 0}
    assert cloud.client.get("/api/v1/datasets").json() == []
    for body, status in (({"fleet": "lab", "name": "x"}, 422), ({"since": 20.0, "until": 10.0}, 400)):
        refused = cloud.client.post("/api/v1/datasets/count", json=body)
        assert refused.status_code == status, refused.text
