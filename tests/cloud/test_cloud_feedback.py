"""Labels that reach the cloud instead of the device: POST /api/v1/feedback queues them, the label forwarder
sends them over a real Mosquitto to the real device agent that predicted, which joins them by request id or by
the prediction's time and counts them in its next window; the performance API then shows them. Every
refusal of the API is fed as an HTTP request."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from edgefleet.core.bundle import Bundle
from edgefleet.edge_runtime.agent import DeviceAgent
from edgefleet.edge_runtime.device_config import DeviceConfig, MqttConfig
from edgefleet.edge_runtime.sim import register_device
from tests.cloud.api_kit import GZIP
from tests.mosquitto import free_port
from tests.waiting import until

pytestmark = pytest.mark.slow  # trains the digits bundle once per session


def test_labels_sent_to_the_cloud_reach_the_device_and_its_accuracy(start_cloud, mosquitto, digits_bundle,
                                                                    digits_splits, tmp_path: Path):
    cloud = start_cloud()
    archive = Bundle.open(digits_bundle.root).pack(tmp_path / "digits.tar.gz")
    assert cloud.client.post("/api/v1/bundles", content=archive.read_bytes(), headers=GZIP).status_code == 201
    credentials = register_device(cloud.server.url, cloud.token, "cam-1", "lab")
    config = DeviceConfig(device="cam-1", fleet="lab", bundle=digits_bundle.root, http_port=free_port(),
                          trusted_keys=(digits_bundle.public_key,), data_dir=tmp_path / "cam-1", threads=1,
                          window_seconds=0.5,
                          mqtt=MqttConfig(mosquitto.url, credentials["username"], credentials["password"]))
    x, y = digits_splits.x_test, digits_splits.y_test
    with DeviceAgent(config) as agent, httpx.Client(base_url=agent.http_url, timeout=30) as device:
        until(lambda: agent.transport.connected, "the device to connect", 20)
        made = []
        for index in range(3):  # a second apart, so a timestamp names one prediction
            before = time.time()
            answer = device.post("/v1/predict", json={"inputs": x[index:index + 1].tolist()}).json()
            made.append(((before + time.time()) / 2, answer["request_id"], int(answer["predictions"][0]["class"])))
            time.sleep(1.2)
        wrong = (made[1][2] + 1) % 10
        sent = [cloud.client.post("/api/v1/feedback", json=body) for body in (
            {"device": "cam-1", "request_id": made[0][1], "label": int(y[0])},
            {"device": "cam-1", "timestamp": made[1][0], "label": str(wrong)},  # by time, by class name
            {"device": "cam-1", "request_id": "never-made", "label": 1},  # the device refuses it: not counted
        )]
        assert [r.status_code for r in sent] == [202, 202, 202], [r.text for r in sent]

        def labels() -> int:
            points = cloud.client.get("/api/v1/devices/cam-1/performance").json()["points"]
            return sum(p["labels"] for p in points), points

        count, points = until(lambda: (n := labels())[0] >= 2 and n, "the forwarded labels in the cloud", 30)
        time.sleep(1.5)  # a few more windows: the refused label must stay uncounted
        count, points = labels()
        queued = cloud.client.get("/api/v1/feedback", params={"device": "cam-1"}).json()
    assert count == 2
    correct = int(made[0][2] == int(y[0]))  # the second label is wrong on purpose
    labelled = [p for p in points if p["labels"]]
    assert sum(p["accuracy"] * p["labels"] for p in labelled) == pytest.approx(correct)
    assert all(row["sent_at"] is not None for row in queued) and len(queued) == 3


@pytest.mark.parametrize(("body", "status", "fragment"), [
    ({"device": "nobody", "request_id": "r1", "label": 1}, 404, "no device 'nobody'"),
    ({"device": "d1", "request_id": "r1", "timestamp": 5.0, "label": 1}, 422, "exactly one of request_id and "
                                                                             "timestamp"),
    ({"device": "d1", "request_id": "r1"}, 422, "exactly one of label"),
    ({"device": "d1", "request_id": "r1", "label": 1, "value": 2.0}, 422, "exactly one of label"),
    ({"device": "d1", "request_id": "../etc", "label": 1}, 422, "request_id"),
    ({"device": "d1", "request_id": "r1", "label": [1] * 1025}, 422, "label"),
    ({"device": "d1", "request_id": "r1", "label": 1, "extra": True}, 422, "extra"),
    ({"device": "d1", "timestamp": -1, "label": 1}, 422, "timestamp"),
])
def test_bad_feedback_gets_one_precise_4xx(cloud, body, status, fragment):
    cloud.client.post("/api/v1/devices", json={"id": "d1", "fleet": "f1"})
    response = cloud.client.post("/api/v1/feedback", json=body)
    assert response.status_code == status and fragment in response.text, response.text


def test_a_non_finite_value_is_refused_before_it_is_parsed(cloud):
    response = cloud.client.post("/api/v1/feedback", content=b'{"device": "d1", "request_id": "r", "value": NaN}',
                                 headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and "NaN" in response.text
