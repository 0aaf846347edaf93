"""The freshness report end to end: a device uploads captured digits through the real cloud API (SQLite,
Mosquitto; tests/cloud/test_captures.py's helpers) over 20 days after the model was trained, each day's
images brighter than the last; their labels arrive later through the feedback API; the dataset is frozen
and exported with `edgefleet dataset export`, and `edgefleet loop stage freshness` reads that directory."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from edgefleet.cloud.digits import load_splits
from edgefleet.cloud.loop.freshness import DAY
from edgefleet.edge_runtime.capture import encode_arrays
from tests.cloud.api_kit import Cloud
from tests.cloud.test_captures import register, sample, upload

SAMPLES, ROWS = 20, 10  # uploads, one a day, of 10 images each
TRAINED_AT = 1_780_000_000.0  # 2026-05-28: every capture below lies in the 20 days after it


def test_captured_data_exported_by_the_cloud_gives_the_freshness_report(cloud: Cloud, kit, tmp_path):
    splits = load_splits()
    auth = register(cloud, "cam-1")
    samples = []
    for day in range(SAMPLES):
        rows = slice(day * ROWS, (day + 1) * ROWS)
        pixels = np.clip(splits.x_test[rows] + 0.04 * day, 0, 1).astype(np.float32)
        samples.append(sample("cam-1", f"req-{day}", captured_at=TRAINED_AT + (day + 0.5) * DAY,
                              inputs=encode_arrays({"pixels": pixels}),
                              outputs=encode_arrays({"logits": np.zeros((ROWS, 10), np.float32)})))
    assert upload(cloud, auth, samples).json()["stored"] == SAMPLES
    for day in range(SAMPLES):
        labels = [int(v) for v in splits.y_test[day * ROWS:(day + 1) * ROWS]]
        answer = cloud.client.post("/api/v1/feedback", json={"device": "cam-1", "request_id": f"req-{day}",
                                                             "label": labels})
        assert answer.status_code == 202, answer.text
    made = cloud.client.post("/api/v1/datasets", json={"name": "aging", "fleet": "lab", "labelled_only": True})
    assert made.status_code == 201, made.text

    env = {"EDGEFLEET_CLOUD": cloud.server.url, "EDGEFLEET_TOKEN": cloud.token, "COLUMNS": "200",
           "PATH": "/usr/bin:/bin"}

    def edgefleet(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "edgefleet.cli.main", *args], capture_output=True, text=True,
                              env=env, cwd=tmp_path, timeout=300)

    exported = edgefleet("dataset", "export", "aging:1", str(tmp_path / "aging"))
    assert exported.returncode == 0, exported.stderr
    result = edgefleet("loop", "stage", "freshness", "--serving", str(kit.bundles["serving"]), "--dataset",
                       str(tmp_path / "aging"), "--out", str(tmp_path / "report.json"), "--trust",
                       str(kit.public_key), "--trained-at", "2026-05-28T20:26:40", "--bucket", "2d",
                       "--min-rows", "10", "--min-accuracy", "0.8")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["trained_at"] == TRAINED_AT and report["rows"] == SAMPLES * ROWS
    assert [b["count"] for b in report["buckets"]] == [2 * ROWS] * (SAMPLES // 2)
    assert [b["mean_age_days"] for b in report["buckets"]] == [2 * i + 1.0 for i in range(SAMPLES // 2)]
    assert report["buckets"][0]["ci95"][0] > report["buckets"][-1]["ci95"][1]
    assert report["trend"]["state"] == "falling" and report["verdict"]["update_every_days"] > 0
    assert "expected to fall below 0.8 about" in " ".join(result.stdout.split())
