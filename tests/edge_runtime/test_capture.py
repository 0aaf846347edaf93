"""Data capture's limits on the device, with the real digits CNN and a real SQLite spool: off by default, the
sample rate, the rate limit, bytes per sample, bytes in the spool, a full disk (a real 1 MiB tmpfs), the
low-confidence filter, the privacy switch (model card and fleet) and the policy surviving a restart."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from edgefleet.core.answers import task_answer
from edgefleet.core.bundle import Bundle
from edgefleet.edge_runtime.capture import CapturePolicy, CapturePolicyError, Capturer
from edgefleet.edge_runtime.capture_spool import CaptureSpool
from edgefleet.edge_runtime.predictor import Predictor

ON = CapturePolicy(enabled=True, sample_rate=1.0, max_per_second=1000.0)


@pytest.fixture(scope="module")
def served(digits_bundle, digits_splits):
    """(bundle, [(inputs, outputs, answer)]) for 200 real test digits."""
    bundle = Bundle.open(digits_bundle.root)
    predictor = Predictor(bundle, backends=["onnxruntime"], trusted_keys=[digits_bundle.public_key])
    requests = []
    for row in digits_splits.x_test[:200]:
        inputs = {bundle.inputs[0].name: row[None].astype(np.float32)}
        outputs = predictor.predict(inputs)
        requests.append((inputs, outputs, task_answer(bundle.manifest["interface"], bundle.outputs, outputs)))
    predictor.close()
    return bundle, requests


def capturer(tmp_path: Path, policy: CapturePolicy | None = None, spool_bytes: int = 2**20) -> Capturer:
    made = Capturer(CaptureSpool(tmp_path / "capture.sqlite", spool_bytes), fleet="lab", device="cam-1",
                    state_path=tmp_path / "capture-policy.json")
    if policy is not None:
        made.apply(policy)
    return made


def offer_all(made: Capturer, served, count: int | None = None) -> None:
    bundle, requests = served
    for index, (inputs, outputs, answer) in enumerate(requests[:count]):
        made.offer(f"req-{index}", bundle, inputs, outputs, answer)
    assert made.flush(30)


def stored(made: Capturer) -> list[dict]:
    return [json.loads(payload) for _, payload in made.spool.batch(max_bytes=2**30)]


def test_capture_is_off_by_default_and_a_sample_holds_the_whole_request(tmp_path, served):
    made = capturer(tmp_path)
    offer_all(made, served)
    assert len(made.spool) == 0 and made.describe(None)["mode"] == "off"
    made.apply(ON)
    offer_all(made, served, 3)
    samples = stored(made)
    assert [s["request_id"] for s in samples] == ["req-0", "req-1", "req-2"]
    bundle, requests = served
    first = samples[0]
    assert first["model"] == {"name": bundle.name, "version": bundle.version} and first["device"] == "cam-1"
    assert first["confidence"] == pytest.approx(requests[0][2]["predictions"][0]["confidence"])
    name = bundle.inputs[0].name
    sent = first["inputs"][name]
    pixels = np.frombuffer(__import__("base64").b64decode(sent["data"]), sent["dtype"]).reshape(sent["shape"])
    assert np.array_equal(pixels, requests[0][0][name])
    made.close()


def test_the_sample_rate_draws_a_share(tmp_path, served):
    made = capturer(tmp_path, CapturePolicy(enabled=True, sample_rate=0.25, max_per_second=1000.0))
    for _ in range(5):
        offer_all(made, served)  # 1,000 requests
    # binomial(1000, 0.25): mean 250, sd 13.7; six sds either side
    assert 168 <= made.counts["captured"] <= 332, made.counts
    made.close()


def test_the_rate_limit_holds_whatever_the_traffic(tmp_path, served):
    made = capturer(tmp_path, CapturePolicy(enabled=True, sample_rate=1.0, max_per_second=5.0))
    started = time.monotonic()
    offer_all(made, served)
    elapsed = time.monotonic() - started
    allowed = 5 + 5.0 * elapsed  # the burst, then the refill over the time it took
    assert 1 <= made.counts["captured"] <= allowed + 1, (made.counts, elapsed)
    assert made.counts["captured"] + made.counts["rate_limited"] == 200
    made.close()


def test_bytes_per_sample_and_in_the_spool_are_bounded(tmp_path, served):
    small = capturer(tmp_path / "a", CapturePolicy(enabled=True, sample_rate=1.0, max_per_second=1000.0,
                                                   max_sample_bytes=200))
    offer_all(small, served, 20)
    assert len(small.spool) == 0 and small.counts["too_large"] == 20  # a digit's sample is ~1.4 KB
    small.close()
    size = len(json.dumps(stored_one(tmp_path / "b", served)))
    full = capturer(tmp_path / "c", CapturePolicy(enabled=True, sample_rate=1.0, max_per_second=1000.0,
                                                  max_spool_bytes=4096))
    offer_all(full, served, 50)
    assert full.spool.pending_bytes <= 4096 and len(full.spool) == 4096 // size, (size, full.counts)
    assert full.counts["spool_full"] == 50 - len(full.spool)
    full.close()


def stored_one(path: Path, served) -> dict:
    made = capturer(path, ON)
    offer_all(made, served, 1)
    (sample,) = stored(made)
    made.close()
    return sample


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A real 1 MiB file system (tmpfs), so the spool meets a full disk; skipped where mounting is not allowed."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_drops_samples_and_serving_goes_on(tiny_disk, served):
    made = capturer(tiny_disk, CapturePolicy(enabled=True, sample_rate=1.0, max_per_second=1000.0))
    for _ in range(5):
        offer_all(made, served)  # 1,000 samples of ~1.4 KB: more than 1 MiB
    assert made.counts["disk_full"] > 0 and made.counts["captured"] > 0, made.counts
    assert made.counts["captured"] + made.counts["disk_full"] == 1000
    kept = len(made.spool)
    assert kept == made.counts["captured"]  # every sample counted as captured is there, whole
    assert made.spool.delete([sid for sid, _ in made.spool.batch(max_bytes=2**30)]) == kept
    offer_all(made, served, 5)  # room again (SQLite reuses the freed pages)
    assert made.counts["captured"] == kept + 5
    made.close()


def test_low_confidence_only(tmp_path, served):
    _, requests = served
    threshold = float(np.median([a["predictions"][0]["confidence"] for _, _, a in requests]))
    made = capturer(tmp_path, CapturePolicy(enabled=True, sample_rate=1.0, max_per_second=1000.0,
                                            low_confidence_below=threshold))
    offer_all(made, served)
    samples = stored(made)
    assert 0 < len(samples) < 200 and made.counts["low_confidence"] == 200 - len(samples)
    assert all(s["confidence"] < threshold and s["reason"] == "low_confidence" for s in samples)
    made.close()


def test_only_during_drift(tmp_path, served):
    made = capturer(tmp_path, CapturePolicy(enabled=True, sample_rate=1.0, max_per_second=1000.0,
                                            only_during_drift=True))
    offer_all(made, served, 10)
    assert len(made.spool) == 0
    made.apply(CapturePolicy(enabled=True, sample_rate=1.0, max_per_second=1000.0, only_during_drift=True,
                             drift_alert_open=True))
    offer_all(made, served, 10)
    assert len(made.spool) == 10
    made.close()


def test_the_privacy_switch_wins_deletes_the_spool_and_survives_a_restart(tmp_path, served):
    made = capturer(tmp_path, ON)
    offer_all(made, served, 10)
    assert len(made.spool) == 10
    made.apply(CapturePolicy(enabled=True, sample_rate=1.0, never_capture=True))
    assert len(made.spool) == 0 and made.spool.pending_bytes == 0
    offer_all(made, served, 10)
    assert len(made.spool) == 0 and made.describe(None)["mode"].startswith("never")
    made.close()
    made.spool.close()
    again = capturer(tmp_path)  # restarted without the cloud: the persisted switch holds
    assert again.policy.never_capture
    offer_all(again, served, 10)
    assert len(again.spool) == 0
    again.close()


def test_a_model_card_that_forbids_capture_wins(tmp_path, served):
    bundle, requests = served
    forbidding = type("Card", (), {"name": bundle.name, "version": bundle.version,
                                   "manifest": {**bundle.manifest, "model_card": {"data_capture": "never"}}})()
    made = capturer(tmp_path, ON)
    for index, (inputs, outputs, answer) in enumerate(requests[:10]):
        made.offer(f"r{index}", forbidding, inputs, outputs, answer)
    assert made.flush(30) and len(made.spool) == 0 and made.counts["privacy"] == 10
    assert made.describe(forbidding)["mode"] == "never (the model card's data_capture)"
    made.close()


@pytest.mark.parametrize("bad", [{"sample_rate": 2}, {"sample_rate": float("nan")}, {"enabled": "yes"},
                                 {"max_spool_bytes": 10}, {"max_per_second": -1}, [], {"low_confidence_below": 3}])
def test_settings_out_of_range_are_refused(bad):
    with pytest.raises(CapturePolicyError):
        CapturePolicy.from_cloud(bad)
