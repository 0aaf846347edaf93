"""Datasets frozen from captured samples, over real HTTP to a real CloudServer (SQLite, Mosquitto): labels that
arrive after the upload, versions and fingerprints, the export read by the offline evaluation's own reader,
every refusal as one 4xx (or exit 2), and what retention does to a frozen dataset. The samples are real
8x8 digits from scikit-learn, uploaded as devices send them (tests/cloud/test_captures.py's helpers)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time

import numpy as np
import pytest
from sklearn.datasets import load_digits

from edgefleet.cloud.loop.eval_data import class_labels, read_data
from edgefleet.cloud.retention import Retention, RetentionSettings
from edgefleet.core.schema import TensorSpec
from edgefleet.edge_runtime.capture import encode_arrays
from tests.cloud.api_kit import Cloud
from tests.cloud.test_captures import register, sample, upload

DIGITS = load_digits()
PIXELS = [TensorSpec("pixels", "float32", ("batch", 8, 8))]


def digit_sample(device: str, index: int, slice_name: str | None = None, **changes: object) -> dict:
    pixels = (DIGITS.images[index] / 16).astype(np.float32)[None]
    return sample(device, f"req-{device}-{index}", slice=slice_name, inputs=encode_arrays({"pixels": pixels}),
                  **changes)


def label(cloud: Cloud, device: str, index: int, value: int | None = None) -> None:
    value = int(DIGITS.target[index]) if value is None else value
    answer = cloud.client.post("/api/v1/feedback", json={"device": device, "request_id": f"req-{device}-{index}",
                                                         "label": value})
    assert answer.status_code == 202, answer.text


def export(cloud: Cloud, ref: str) -> tuple[dict[str, np.ndarray], str]:
    answer = cloud.client.get(f"/api/v1/datasets/{ref}/export")
    assert answer.status_code == 200, answer.text
    with np.load(io.BytesIO(answer.content), allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}, answer.headers["X-Edgefleet-Fingerprint"]


@pytest.fixture
def captured(cloud: Cloud) -> Cloud:
    """cam-1 (day) and cam-2 (night) in fleet lab captured digits 0..5 and 6..11; cam-9 in yard digit 20;
    labels for digits 0, 2, 4, 6, 8 and 20 arrive after the uploads."""
    for device, fleet, indices, slice_name in (("cam-1", "lab", range(0, 6), "day"),
                                               ("cam-2", "lab", range(6, 12), "night"), ("cam-9", "yard", [20], None)):
        auth = register(cloud, device, fleet)
        answer = upload(cloud, auth, [digit_sample(device, i, slice_name, fleet=fleet) for i in indices])
        assert answer.json()["stored"] == len(indices), answer.text
    for device, index in (("cam-1", 0), ("cam-1", 2), ("cam-1", 4), ("cam-2", 6), ("cam-2", 8), ("cam-9", 20)):
        label(cloud, device, index)
    return cloud


def test_a_dataset_freezes_late_labels_and_exports_what_evaluation_reads(captured: Cloud, tmp_path):
    cloud = captured
    made = cloud.client.post("/api/v1/datasets", json={"name": "lab-digits", "fleet": "lab", "model": "digits",
                                                        "version": 1, "labelled_only": True})
    assert made.status_code == 201, made.text
    first = made.json()
    expected = [0, 2, 4, 6, 8]  # cam-1's then cam-2's labelled digits; cam-9 is in another fleet
    assert first["version"] == 1 and first["samples"] == 5 and first["unlabelled"] == 0
    assert first["classes"] == {str(DIGITS.target[i]): 1 for i in expected}
    assert first["slices"] == {"day": 3, "night": 2}
    assert first["inputs"] == {"pixels": {"dtype": "<f4", "row_shape": [8, 8]}}
    arrays, fingerprint = export(cloud, "lab-digits/1")
    again, fingerprint_again = export(cloud, "lab-digits/latest")
    assert fingerprint == fingerprint_again == first["fingerprint"]
    assert all(np.array_equal(arrays[k], again[k]) for k in arrays)
    path = tmp_path / "recent.npz"
    np.savez(path, **arrays)
    data = read_data(path, "heldout", PIXELS)  # the evaluation's own reader, with its strictest checks
    assert data.count == 5 and sorted(data.slices) == ["day", "night"]
    captures = cloud.client.get("/api/v1/captures").json()
    digit_of = {r["sample_id"]: int(r["request_id"].rsplit("-", 1)[1]) for r in captures}
    members = cloud.client.get("/api/v1/datasets/lab-digits/1", params={"samples": "true"}).json()["members"]
    order = [digit_of[m["sample_id"]] for m in members]  # the .npz's rows: sorted by (device, sample id)
    assert sorted(order) == expected and [m["device"] for m in members] == ["cam-1"] * 3 + ["cam-2"] * 2
    captured_at = {r["sample_id"]: r["captured_at"] for r in captures}  # each row's time (the freshness report's)
    assert arrays["captured_at"].tolist() == [captured_at[m["sample_id"]] for m in members]
    assert class_labels(data, 10).tolist() == [int(DIGITS.target[i]) for i in order]
    assert np.array_equal(data.inputs["pixels"], np.stack([DIGITS.images[i] / 16 for i in order]).astype(np.float32))
    assert data.slices["night"].tolist() == [False, False, False, True, True]

    label(cloud, "cam-2", 10)  # a label arrives late: the next version holds it, the frozen one does not
    second = cloud.client.post("/api/v1/datasets", json={"name": "lab-digits", "fleet": "lab",
                                                         "labelled_only": True}).json()
    assert second["version"] == 2 and second["samples"] == 6 and second["fingerprint"] != fingerprint
    assert export(cloud, "lab-digits/1")[1] == fingerprint
    label(cloud, "cam-2", 10, value=(int(DIGITS.target[10]) + 1) % 10)  # a corrected label: the newest wins
    third = cloud.client.post("/api/v1/datasets", json={"name": "lab-digits", "fleet": "lab",
                                                        "labelled_only": True}).json()
    assert third["samples"] == 6 and third["fingerprint"] not in (fingerprint, second["fingerprint"])
    same = cloud.client.post("/api/v1/datasets", json={"name": "other", "fleet": "lab", "labelled_only": True}).json()
    assert same["fingerprint"] == third["fingerprint"]  # the same rows and labels, the same fingerprint
    listed = cloud.client.get("/api/v1/datasets", params={"name": "lab-digits"}).json()
    assert [r["version"] for r in listed] == [1, 2, 3] and "members" not in listed[0]


def test_a_dataset_with_unlabelled_samples_exports_without_labels(captured: Cloud, tmp_path):
    made = captured.client.post("/api/v1/datasets", json={"name": "all", "device": "cam-1", "slice": "day",
                                                          "until": time.time() + 60})
    assert made.status_code == 201 and made.json()["samples"] == 6 and made.json()["unlabelled"] == 3, made.text
    arrays, _ = export(captured, "all/1")
    assert "y" not in arrays and "slice" in arrays  # evaluation then compares by agreement only
    np.savez(tmp_path / "recent.npz", **arrays)
    assert read_data(tmp_path / "recent.npz", "recent", PIXELS).labels is None


def test_bad_filters_unknown_names_and_empty_selections_are_refused(captured: Cloud):
    cloud = captured
    for body, code, fragment in [
        ({"name": "../x"}, 422, "name"),
        ({"name": "d", "surprise": 1}, 422, "surprise"),
        ({"name": "d", "since": -1}, 422, "since"),
        ({"name": "d", "version": 1}, 400, "needs the model name"),
        ({"name": "d", "since": 200, "until": 100}, 400, "must be before until"),
        ({"name": "d", "fleet": "nowhere"}, 400, "no captured sample matches fleet=nowhere"),
        ({"name": "d", "device": "cam-2", "slice": "day"}, 400, "cannot be empty"),
        ({"name": "d", "fleet": "lab", "since": time.time() + 3600}, 400, "no captured sample"),
    ]:
        answer = cloud.client.post("/api/v1/datasets", json=body)
        assert answer.status_code == code and fragment in answer.text, (body, answer.text)
    answer = cloud.client.post("/api/v1/datasets", json={"name": "d", "device": "cam-1", "labelled_only": True,
                                                         "slice": "night"})
    assert answer.status_code == 400 and "cannot be empty" in answer.text
    auth = register(cloud, "cam-3")
    upload(cloud, auth, [sample("cam-3", "req-u1")])  # unlabelled
    answer = cloud.client.post("/api/v1/datasets", json={"name": "d", "device": "cam-3", "labelled_only": True})
    assert answer.status_code == 400 and "1 match without labelled_only" in answer.text, answer.text
    upload(cloud, auth, [sample("cam-3", inputs=encode_arrays({"pixels": np.zeros((1, 4), np.float32)}))])
    answer = cloud.client.post("/api/v1/datasets", json={"name": "d", "device": "cam-3"})
    assert answer.status_code == 400 and "one input layout" in answer.text, answer.text
    auth = register(cloud, "cam-5")
    upload(cloud, auth, [sample("cam-5", inputs=encode_arrays({"y": np.zeros((1, 2), np.float32)}))])
    answer = cloud.client.post("/api/v1/datasets", json={"name": "d", "device": "cam-5"})
    assert answer.status_code == 400 and "clash" in answer.text, answer.text
    upload(cloud, auth, [sample("cam-5", "req-b", inputs=encode_arrays({"x": np.zeros((2, 2), np.float32)}))])
    cloud.client.post("/api/v1/feedback", json={"device": "cam-5", "request_id": "req-b", "label": 1})
    answer = cloud.client.post("/api/v1/datasets", json={"name": "d", "device": "cam-5", "labelled_only": True})
    assert answer.status_code == 400 and "2 rows and 1 labels" in answer.text, answer.text
    for path, code in (("/api/v1/datasets/nope/1", 404), ("/api/v1/datasets/nope/latest/export", 404),
                       ("/api/v1/datasets/nope/x1", 400), ("/api/v1/datasets/..bad/1", 400)):
        answer = cloud.client.get(path)
        assert answer.status_code == code and answer.json()["detail"], (path, answer.text)
    assert cloud.client.get("/api/v1/datasets").json() == []  # nothing refused was stored
    cloud.assert_serving()


def test_retention_deleting_a_frozen_datasets_samples_makes_its_export_refuse(captured: Cloud):
    cloud = captured
    cloud.client.put("/api/v1/fleets/lab/capture", json={"retention_days": 1})
    assert cloud.client.post("/api/v1/datasets", json={"name": "lab", "fleet": "lab"}).status_code == 201
    assert cloud.client.post("/api/v1/datasets", json={"name": "yard", "fleet": "yard"}).status_code == 201
    retention = Retention(cloud.server.sessions, RetentionSettings(captures_days=30))
    deleted = retention.run_once(now=time.time() + 2 * 86400)
    assert deleted["captures"] == 12  # lab keeps 1 day, yard the 30-day default
    answer = cloud.client.get("/api/v1/datasets/lab/1/export")
    assert answer.status_code == 409 and "12 of its 12 samples were deleted by capture retention" in answer.text
    assert cloud.client.get("/api/v1/datasets/lab/1").json()["samples"] == 12  # the record stays
    assert export(cloud, "yard/1")[0]["y"].tolist() == [int(DIGITS.target[20])]


def test_the_dataset_commands(captured: Cloud, tmp_path):
    env = {"EDGEFLEET_CLOUD": captured.server.url, "EDGEFLEET_TOKEN": captured.token, "COLUMNS": "200",
           "PATH": "/usr/bin:/bin"}

    def edgefleet(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "edgefleet.cli.main", "dataset", *args], capture_output=True,
                              text=True, env=env, cwd=tmp_path, timeout=120)

    made = edgefleet("create", "lab-digits", "--fleet", "lab", "--model", "digits", "--labelled-only",
                     "--since", "2020-01-01T00:00:00")
    assert made.returncode == 0 and "lab-digits:1: 5 samples (5 labelled)" in made.stdout, made
    assert edgefleet("create", "lab-digits", "--fleet", "lab").returncode == 0
    listed = edgefleet("list")
    assert listed.returncode == 0 and "lab-digits:2" in listed.stdout and "2 dataset versions" in listed.stdout
    shown = json.loads(edgefleet("show", "lab-digits:1").stdout)
    assert shown["version"] == 1 and shown["filter"]["labelled_only"] is True
    assert json.loads(edgefleet("show", "lab-digits").stdout)["version"] == 2
    exported = edgefleet("export", "lab-digits:1", str(tmp_path / "out"))
    assert exported.returncode == 0, exported
    record = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert record["fingerprint"] == shown["fingerprint"] and record["slices"] == {"day": 3, "night": 2}
    assert len(record["members"]) == 5 and record["first_captured_at"] <= record["last_captured_at"]
    assert read_data(tmp_path / "out" / "dataset.npz", "heldout", PIXELS).count == 5
    (tmp_path / "file").write_text("x")
    for args, fragment in [(("show", "nope"), "404"), (("show", "lab-digits:x"), "must be a number"),
                           (("show", "../x"), "dataset name"), (("create", "d", "--since", "yesterday"), "ISO 8601"),
                           (("create", "d", "--version", "1"), "needs the model name"),
                           (("create", "d", "--fleet", "nowhere"), "no captured sample matches"),
                           (("export", "lab-digits:1", str(tmp_path / "file")), "not a directory")]:
        bad = edgefleet(*args)
        assert bad.returncode == 2 and fragment in bad.stderr and "Traceback" not in bad.stderr, (args, bad.stderr)
        assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
