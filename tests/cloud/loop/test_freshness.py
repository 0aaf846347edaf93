"""The data-freshness report (cloud/loop/freshness.py, `edgefleet loop stage freshness`) on the project's digits
CNN (eval_kit.py's serving bundle, trained on clean scikit-learn digits) and captured rows whose condition
grows with their age: every pixel brightens by 0.04 a day after training, so the digits wash out. The same
rows without brightening are the stationary stream. Rows carry `captured_at` as `edgefleet dataset export`
writes it (tests/cloud/test_datasets.py checks the export's times against the cloud's captures)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgefleet.cloud.digits import load_splits
from edgefleet.cloud.loop.freshness import DAY, FreshnessOptions, freshness
from edgefleet.core.bundle import Bundle
from edgefleet.core.canonical import parse_time
from edgefleet.core.signing import TrustStore
from tests.cli.test_bundle_commands import assert_user_error, edgefleet

BRIGHTENING = 0.04  # added to every pixel (0..1) per day of age


def trained_at(kit) -> float:
    return parse_time(Bundle.open(kit.bundles["serving"]).manifest["created_at"]).timestamp()


def stream(kit, path, rate: float, rows: int = 900, days: float = 20.0):
    """Digits (test split, then the training split's tail) captured uniformly over `days` after training."""
    splits = load_splits()
    x = np.concatenate([splits.x_test, splits.x_train[::-1]])[:rows]
    y = np.concatenate([splits.y_test, splits.y_train[::-1]])[:rows]
    age = np.random.default_rng(0).uniform(0, days, len(y))
    pixels = np.clip(x + rate * age[:, None, None, None], 0, 1).astype(np.float32)
    np.savez(path, pixels=pixels, y=y, captured_at=trained_at(kit) + age * DAY)
    return path


def run(kit, dataset, out, *extra: str):
    return edgefleet("loop", "stage", "freshness", "--serving", str(kit.bundles["serving"]), "--dataset",
                     str(dataset), "--out", str(out), "--trust", str(kit.public_key), *extra)


def test_accuracy_falls_with_the_datas_age_and_the_report_says_when_it_crosses(kit, tmp_path):
    dataset = tmp_path / "export"
    dataset.mkdir()
    stream(kit, dataset / "dataset.npz", BRIGHTENING)
    result = run(kit, dataset, tmp_path / "report.json", "--bucket", "2d", "--min-accuracy", "0.8",
                 "--plot", str(tmp_path / "freshness.png"))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    buckets = report["buckets"]
    assert [b["from_days"] for b in buckets] == list(range(0, 20, 2)) and sum(b["count"] for b in buckets) == 900
    first, last = buckets[0], buckets[-1]
    assert first["ci95"][0] > last["ci95"][1]  # the youngest data's accuracy is above the oldest's beyond noise
    assert first["value"] > 0.85 and last["value"] < 0.5
    trend = report["trend"]
    assert trend["state"] == "falling" and trend["slope_ci95"][1] < 0
    low, high = trend["crossing_ci95"]
    assert low <= trend["crossing_days"] <= high
    # the fitted crossing lies between the last bucket measured above 0.8 and the first measured below it
    above = max(b["from_days"] for b in buckets if b["value"] >= 0.8)
    below = min(b["to_days"] for b in buckets if b["value"] < 0.8)
    assert above <= trend["crossing_days"] <= below
    verdict = report["verdict"]
    assert verdict["update_every_days"] == trend["crossing_days"]
    assert f"expected to fall below 0.8 about {trend['crossing_days']:.1f} days after training" in verdict["text"]
    assert " ".join(verdict["text"].split()) in " ".join(result.stdout.split())  # printed, wrapped at the width
    assert "18 to 20" in result.stdout and (tmp_path / "freshness.png").read_bytes()[:4] == b"\x89PNG"


def test_a_stationary_stream_is_not_falling(kit, tmp_path):
    path = stream(kit, tmp_path / "stationary.npz", 0.0)
    report = freshness(kit.bundles["serving"], path, trust=TrustStore.from_paths([kit.public_key]),
                       options=FreshnessOptions(bucket_s=2 * DAY, min_accuracy=0.8))
    trend = report["trend"]
    assert trend["state"] == "not falling" and trend["slope_ci95"][1] >= 0
    assert "crossing_days" not in trend and report["verdict"]["update_every_days"] is None
    assert report["verdict"]["text"].startswith("accuracy is not falling")
    assert all(b["value"] > 0.8 for b in report["buckets"])


def test_rows_before_training_are_shown_but_left_out_of_the_trend(kit, tmp_path):
    path = stream(kit, tmp_path / "stream.npz", BRIGHTENING)
    shifted = trained_at(kit) + 2 * DAY  # a later training time: the first two days of data predate it
    report = freshness(kit.bundles["serving"], path, trust=TrustStore.from_paths([kit.public_key]),
                       options=FreshnessOptions(bucket_s=DAY, trained_at=shifted))
    with np.load(path) as npz:
        before = int((npz["captured_at"] < shifted).sum())
    assert report["before_training"] == before > 0
    assert [b["from_days"] for b in report["buckets"][:2]] == [-2, -1]
    assert report["trend"]["rows"] == 900 - before
    assert report["trend"]["state"] == "falling" and "pass --min-accuracy" in report["verdict"]["text"]


def test_too_few_labelled_rows_says_so(kit, tmp_path):
    path = stream(kit, tmp_path / "few.npz", BRIGHTENING, rows=30)
    result = run(kit, path, tmp_path / "report.json", "--min-accuracy", "0.8", "--bucket", "1d")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["trend"]["state"] == "too little data" and "slope_per_day" not in report["trend"]
    assert report["verdict"]["text"].startswith("too little data: 30 labelled rows captured after training fill 0")
    assert "too little data" in result.stdout


@pytest.mark.parametrize(("change", "extra", "message"), [
    ("no_times", (), "lacks 'captured_at', each row's capture time"),
    ("no_labels", (), "has no labels 'y'"),
    ("bad_times", (), "'captured_at' must hold one finite Unix time per row (900)"),
    ("missing", (), "no such file"),
    (None, ("--bucket", "0d"), "--bucket: expected a duration above zero"),
    (None, ("--bucket", "daily"), "--bucket: expected a duration above zero"),
    (None, ("--max-mae", "0.5"), "--max-mae is for a regression model; this is a classifier"),
    (None, ("--trained-at", "yesterday"), "--trained-at: expected Unix seconds or an ISO 8601"),
])
def test_bad_inputs_exit_2_with_one_line(kit, tmp_path, change, extra, message):
    path = stream(kit, tmp_path / "stream.npz", BRIGHTENING)
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    if change == "no_times":
        del arrays["captured_at"]
    elif change == "no_labels":
        del arrays["y"]
    elif change == "bad_times":
        arrays["captured_at"] = arrays["captured_at"][:-1]
    if change == "missing":
        path = tmp_path / "absent"
    elif change is not None:
        np.savez(path, **arrays)
    assert_user_error(run(kit, path, tmp_path / "report.json", *extra), message)
    assert not (tmp_path / "report.json").exists()
