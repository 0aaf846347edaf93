"""Slices on the device: a real uvicorn serving the digits CNN counts each request in the slice it names (query,
header or the device's default), a label that comes later in the slice of its prediction, bounds the names a
window keeps (the rest under `_other`), and refuses a bad name with one 400 while it goes on serving."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from edgefleet.core.errors import EdgefleetError
from edgefleet.core.slices import MAX_SLICE_CELLS, MAX_SLICES, OTHER
from edgefleet.core.telemetry import parse_telemetry
from edgefleet.edge_runtime.device_config import DeviceConfig
from edgefleet.edge_runtime.feedback import RecentPredictions
from edgefleet.edge_runtime.http_api import create_app
from edgefleet.edge_runtime.model_host import ModelHost
from edgefleet.edge_runtime.predictor import Predictor
from edgefleet.edge_runtime.slices import SliceWindow
from edgefleet.edge_runtime.telemetry import TelemetryAggregator
from tests.edge_runtime.http_kit import serve


@pytest.fixture(scope="module")
def device(digits_bundle):
    """(client, host) of a device whose requests without a slice belong to "site-a"."""
    with Predictor(digits_bundle.root, trusted_keys=[digits_bundle.public_key], threads=1) as predictor:
        host = ModelHost(predictor, telemetry=lambda p: TelemetryAggregator(p.bundle, fleet="lab", device="d1"))
        app = create_app(host, recent=RecentPredictions(), default_slice="site-a")
        with serve(app) as base, httpx.Client(base_url=base, timeout=30) as client:
            yield client, host


def predict(client: httpx.Client, x: np.ndarray, query: str = "", headers: dict | None = None) -> dict:
    response = client.post(f"/v1/predict{query}", json={"inputs": x.tolist()}, headers=headers or {})
    assert response.status_code == 200, response.text
    return response.json()


def closed(host: ModelHost):
    """The window that closes now, as the cloud reads it (its payload through the telemetry gate)."""
    return parse_telemetry(host.current.telemetry.close_window().to_payload())


def test_requests_and_their_later_labels_count_in_their_slice(device, digits_splits):
    client, host = device
    closed(host)
    x, y = digits_splits.x_test, digits_splits.y_test
    by_query = predict(client, x[:3], "?slice=cam-b&top_k=2")  # beside an answer option
    by_header = predict(client, x[3:5], headers={"X-Edgefleet-Slice": "cam-b"})
    both = predict(client, x[5:6], "?slice=cam-c", headers={"X-Edgefleet-Slice": "cam-c"})
    default = predict(client, x[6:10])
    assert [a.get("slice") for a in (by_query, by_header, both, default)] == ["cam-b", "cam-b", "cam-c", "site-a"]
    assert len(by_query["top_k"][0]) == 2
    first = closed(host)
    assert [(s.slice, s.samples) for s in first.slices] == [("cam-b", 5), ("cam-c", 1), ("site-a", 4)]
    assert all(sum(s.confidence) == s.samples and s.labels is None for s in first.slices)
    assert len(first.slices[0].confidence) == len(first.confidence)  # the profile's bins
    # the labels come in the next window; a wrong one for cam-c
    wrong = (int(y[5]) + 1) % 10
    for answer, labels in ((by_query, y[:3]), (by_header, y[3:5]), (both, [wrong]), (default, y[6:10])):
        sent = client.post("/v1/feedback", json={"request_id": answer["request_id"], "label": [int(v) for v in labels]})
        assert sent.status_code == 200, sent.text
    second = closed(host)
    by_name = {s.slice: s for s in second.slices}
    assert {name: (s.samples, s.labels.count) for name, s in by_name.items()} == {
        "cam-b": (0, 5), "cam-c": (0, 1), "site-a": (0, 4)}
    assert by_name["cam-c"].labels.correct == 0
    predicted = [int(p["class"]) for a in (by_query, by_header) for p in a["predictions"]]
    assert by_name["cam-b"].labels.correct == sum(int(p == t) for p, t in zip(predicted, y[:5], strict=True))
    assert second.labels.count == 10 and second.labels.correct == sum(s.labels.correct for s in second.slices)


@pytest.mark.parametrize(("query", "headers", "fragment"), [
    ("?slice=", {}, "query parameter slice must be 1 to 64 letters"),
    ("?slice=a/b", {}, "got 'a/b'"),
    ("?slice=" + "a" * 65, {}, "1 to 64 letters"),
    ("?slice=_other", {}, "starting with a letter or digit"),
    ("?slice=a&slice=b", {}, "query parameter slice is given more than once"),
    ("", {"X-Edgefleet-Slice": "café".encode()}, "header X-Edgefleet-Slice must be"),
    ("?slice=a", {"X-Edgefleet-Slice": "b"}, "query parameter slice ('a') and header X-Edgefleet-Slice ('b') differ"),
])
def test_a_bad_slice_is_one_400_and_the_device_goes_on(device, digits_splits, query, headers, fragment):
    client, host = device
    closed(host)
    x = digits_splits.x_test[:1]
    response = client.post(f"/v1/predict{query}", json={"inputs": x.tolist()}, headers=headers)
    assert response.status_code == 400 and fragment in response.json()["detail"], response.text
    assert predict(client, x)["slice"] == "site-a"  # the same connection serves the next request
    assert [(s.slice, s.samples) for s in closed(host).slices] == [("site-a", 1)]  # the refused one counted nowhere


def test_names_beyond_the_window_bound_count_as_other(device, digits_splits):
    client, host = device
    closed(host)
    x = digits_splits.x_test[:1]
    names = [f"probe-{i:03d}" for i in range(MAX_SLICES + 8)]
    answers = [predict(client, x, f"?slice={name}") for name in names]
    window = closed(host)
    kept = {s.slice: s.samples for s in window.slices}
    assert len(window.slices) == MAX_SLICES + 1 and kept[OTHER] == 8 and "probe-031" in kept
    assert sum(kept.values()) == len(names)
    assert len(window.to_payload()) < 64 * 1024
    # a label arriving in a window where its slice is not among the first names counts as _other too
    for answer in answers[:MAX_SLICES + 2]:
        assert client.post("/v1/feedback", json={"request_id": answer["request_id"], "label": 0}).status_code == 200
    labelled = {s.slice: s.labels.count for s in closed(host).slices}
    assert labelled[OTHER] == 2 and sum(labelled.values()) == MAX_SLICES + 2


def test_a_slices_confusion_is_bounded_and_the_totals_still_count():
    window = SliceWindow(None, None)
    cells = [(t, p) for t in range(20) for p in range(20)][:MAX_SLICE_CELLS + 5]
    window.add_classes("cam-a", [p for _, p in cells], [t for t, _ in cells])
    (entry,) = window.take()
    assert len(entry.labels.confusion) == MAX_SLICE_CELLS and entry.labels.count == MAX_SLICE_CELLS
    assert window.take() == ()  # a window starts empty


def test_a_device_config_refuses_a_bad_default_slice(tmp_path):
    base = {"device": {"id": "d1", "slice": "site a"}, "model": {"bundle": "b.tar.gz", "trusted_keys": ["k.pub"]}}
    with pytest.raises(EdgefleetError, match="device config: device.slice must be 1 to 64 letters"):
        DeviceConfig.from_dict(base)
    good = json.loads(json.dumps(base))
    good["device"]["slice"] = "site-a"
    assert DeviceConfig.from_dict(good).slice == "site-a"
