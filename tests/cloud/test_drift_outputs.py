"""Drift of per-output summaries (regression values, embedding norm and projections, detections) on real data.

The profiles are written here in the fixed format of bundle.reference_profile()["outputs"], binned with
core.profile's own quantile_edges and bin_counts, from data that ships with scikit-learn:

- regression: a linear model of the diabetes data (442 patients, 10 columns); the reference is two thirds
  of it, the held-out third is clean traffic, and its predictions scaled by 1.3 are drifted traffic;
- embedding: the 1,797 digits projected on 16 principal components (fitted on the reference part), the
  norm and 8 projections of the normalised vector on fixed directions; scaled embeddings move the norm;
- detections: the bright pixels of a digit (intensity >= 0.75) as its detections, their intensity as
  score, so the score row counts detections while the count row counts images.

Windows travel as telemetry payloads (to_payload, parse_telemetry) before they are evaluated; the last
test sends them through a real Mosquitto and the ingest into SQLite, where the drift monitor reads them.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from rich.console import Console
from sklearn.datasets import load_diabetes, load_digits
from sklearn.linear_model import LinearRegression
from sqlalchemy import select

from edgefleet.cli.fleet_commands import drift_table
from edgefleet.cloud.api.drift import DriftOut
from edgefleet.cloud.db import Alert, Device, TelemetryRecord, make_engine, make_sessions
from edgefleet.cloud.drift import (
    DRIFT,
    INSUFFICIENT,
    OK,
    CountsMismatch,
    WindowCounts,
    cleared,
    evaluate,
    merge_windows,
)
from edgefleet.cloud.drift_monitor import DriftMonitor
from edgefleet.cloud.ingest import Ingest
from edgefleet.core.profile import bin_counts, quantile_edges
from edgefleet.core.telemetry import LATENCY_EDGES_MS, FeatureCounts, OutputCounts, TelemetryWindow, parse_telemetry
from edgefleet.core.topics import topic
from tests.cloud import test_ingest
from tests.cloud.test_ingest import publish, wait_for

publisher = test_ingest.publisher  # the fixture: a device's MQTT client on the test's Mosquitto
PROJECTIONS = 8
T0 = 1_764_230_400.0
SIGNAL = "progression.progression[0]"


def held_out(count: int) -> np.ndarray:
    """Every third sample: the held-out split (deterministic, no random draw)."""
    return np.arange(count) % 3 == 0


def section(output: str, summary: str, names: list[str], values: np.ndarray, **extra) -> dict:
    """One entry of profile["outputs"]: quantile edges and counts per row, as core/profile.py bins features."""
    edges = quantile_edges(values)
    return {"output": output, "summary": summary, "names": names, "edges": edges.tolist(),
            "counts": bin_counts(values, edges).tolist(), **extra}


def rows(profile_section: dict, values: np.ndarray) -> tuple[tuple[int, ...], ...]:
    counts = bin_counts(values, np.asarray(profile_section["edges"]))
    return tuple(tuple(int(v) for v in row) for row in counts)


def as_telemetry(samples: int, *, features: tuple[FeatureCounts, ...] = (), outputs: tuple[OutputCounts, ...] = (),
                 device: str = "d1", seq: int = 1, start: float = T0, model: str = "diabetes") -> TelemetryWindow:
    latency = [0] * (len(LATENCY_EDGES_MS) + 2)
    latency[3] = samples
    return TelemetryWindow("lab", device, seq, model, 1, start, start + 60.0, samples, samples, 0, tuple(latency),
                           features, outputs=outputs)


def received(window: TelemetryWindow) -> WindowCounts:
    """The counts as the cloud sees them: through the payload and its parser."""
    return WindowCounts.from_telemetry(parse_telemetry(window.to_payload()))


class Regression:
    """A linear model of the diabetes progression; its profile has the inputs and the `values` output."""

    def __init__(self) -> None:
        data = load_diabetes()
        self.x, self.names = data.data, list(data.feature_names)
        self.held = held_out(len(self.x))
        self.model = LinearRegression().fit(self.x[~self.held], data.target[~self.held])
        reference = self.x[~self.held]
        edges = quantile_edges(reference)
        self.profile = {
            "count": len(reference), "bins": 10,
            "features": [{"input": "x", "kind": "elements", "names": self.names, "edges": edges.tolist(),
                          "counts": bin_counts(reference, edges).tolist()}],
            "outputs": [section("progression", "values", ["progression[0]"], self.predict(reference))],
        }

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.model.predict(x)[:, None]

    def window(self, x: np.ndarray, *, scale: float = 1.0, **where) -> TelemetryWindow:
        features = (FeatureCounts("x", rows(self.profile["features"][0], x)),)
        outputs = (OutputCounts("progression", rows(self.profile["outputs"][0], self.predict(x) * scale)),)
        return as_telemetry(len(x), features=features, outputs=outputs, **where)


class Embedding:
    """Digits embedded on 16 principal components; the profile summarises the output `emb`."""

    def __init__(self) -> None:
        x = load_digits().data / 16.0
        self.held = held_out(len(x))
        self.x = x
        reference = x[~self.held]
        self.mean = reference.mean(axis=0)
        self.components = np.linalg.svd(reference - self.mean, full_matrices=False)[2][:16]
        # fixed unit directions, as the bundle stores them ("projections"); orthonormal here, any fixed set works
        self.directions = np.linalg.qr(np.cos(np.outer(np.arange(1, 17), np.arange(1, PROJECTIONS + 1))))[0].T
        names = ["norm"] + [f"proj{i}" for i in range(PROJECTIONS)]
        self.profile = {"count": len(reference), "bins": 10, "features": [],
                        "outputs": [section("emb", "embedding", names, self.summary(self.embed(reference)),
                                            projections=self.directions.tolist())]}

    def embed(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) @ self.components.T

    def summary(self, embedding: np.ndarray) -> np.ndarray:
        norm = np.linalg.norm(embedding, axis=1)
        return np.column_stack([norm, (embedding / norm[:, None]) @ self.directions.T])

    def window(self, x: np.ndarray, *, scale: float = 1.0) -> TelemetryWindow:
        values = self.summary(self.embed(x) * scale)
        return as_telemetry(len(x), outputs=(OutputCounts("emb", rows(self.profile["outputs"][0], values)),),
                            model="digits-embedding")


@pytest.fixture(scope="module")
def regression() -> Regression:
    return Regression()


@pytest.fixture(scope="module")
def embedding() -> Embedding:
    return Embedding()


# regression values ------------------------------------------------------------------------------------------
def test_held_out_regression_traffic_is_ok_and_its_output_is_a_prediction_signal(regression):
    x = regression.x[regression.held]
    report = evaluate(received(regression.window(x)), regression.profile)
    json.dumps(report, allow_nan=False)  # stored as JSON in DriftResult.report
    assert report["verdict"] == OK, json.dumps(report)[:2000]
    prediction = report["prediction_drift"]
    assert set(prediction["signals"]) == {SIGNAL} and prediction["alpha"] == pytest.approx(0.01)
    signal = prediction["signals"][SIGNAL]
    assert (signal["n"], signal["m"]) == (len(x), len(regression.x) - len(x)) == (148, 294)
    assert signal["ks"] is not None and signal["ks"]["p"] > 0.05  # rows are ordered bins: KS applies
    assert signal["psi"] < signal["psi_threshold"] and signal["chi2"]["p"] > 0.1
    assert set(report["data_drift"]["signals"]) == set(regression.names)


def test_predictions_scaled_by_1_3_drift_and_the_report_names_the_output_row(regression):
    report = evaluate(received(regression.window(regression.x[regression.held], scale=1.3)), regression.profile)
    assert report["verdict"] == DRIFT
    assert report["prediction_drift"]["drifting"] == [SIGNAL]
    assert report["data_drift"]["verdict"] == OK  # the inputs did not move, the model's outputs did
    signal = report["prediction_drift"]["signals"][SIGNAL]
    assert signal["psi"] > signal["psi_threshold"] and signal["chi2"]["p"] < 1e-6 and signal["ks"]["p"] < 1e-6


def test_reference_data_against_its_own_profile_is_exactly_ok(regression):
    report = evaluate(received(regression.window(regression.x[~regression.held])), regression.profile)
    signal = report["prediction_drift"]["signals"][SIGNAL]
    assert report["verdict"] == OK and signal["psi"] == pytest.approx(0.0, abs=1e-12) and signal["js"] == 0.0


def test_output_rows_merge_by_adding_counts(regression):
    x = regression.x[regression.held]
    parts = [received(regression.window(part)) for part in (x[:40], x[40:90], x[90:])]
    merged, whole = merge_windows(parts), received(regression.window(x))
    assert merged.samples == len(x)
    np.testing.assert_array_equal(merged.outputs["progression"], whole.outputs["progression"])
    assert evaluate(merged, regression.profile) == evaluate(whole, regression.profile)


def test_output_counts_that_do_not_fit_are_refused(regression):
    x = regression.x[regression.held]
    counts = received(regression.window(x))
    wider = WindowCounts(counts.samples, counts.features, outputs={"progression": np.zeros((1, 12), dtype=np.int64)})
    with pytest.raises(CountsMismatch, match=r"output 'progression': window counts have shape \(1, 12\), the "
                                             r"reference profile \(1, 11\)"):
        evaluate(wider, regression.profile)
    with pytest.raises(CountsMismatch, match="summary rows of output 'progression'"):
        merge_windows([counts, wider])
    other = WindowCounts(counts.samples, counts.features, outputs={"price": counts.outputs["progression"]})
    with pytest.raises(CountsMismatch, match=r"summarise different outputs: \['progression'\] and \['price'\]"):
        merge_windows([counts, other])
    with pytest.raises(CountsMismatch, match=r"outputs \['price'\], the reference profile \['progression'\]"):
        evaluate(other, regression.profile)
    without = {k: v for k, v in regression.profile.items() if k != "outputs"}
    with pytest.raises(CountsMismatch, match=r"outputs \['progression'\], the reference profile \[\]"):
        evaluate(counts, without)


def test_windows_of_an_agent_without_output_summaries_still_give_data_drift(regression):
    """An agent older than per-output summaries sends none: its windows are judged on their inputs, the
    output rows get no counts from them (insufficient, n = 0) rather than refusing the whole window."""
    x = regression.x[regression.held]
    new = received(regression.window(x[:48]))
    old = received(as_telemetry(100, features=regression.window(x[48:]).features))
    assert old.outputs == {}
    alone = evaluate(old, regression.profile)
    assert alone["data_drift"]["verdict"] == OK and alone["prediction_drift"]["verdict"] == INSUFFICIENT
    assert alone["prediction_drift"]["signals"][SIGNAL]["n"] == 0
    mixed = merge_windows([old, new])
    assert mixed.samples == len(x)
    np.testing.assert_array_equal(mixed.outputs["progression"], new.outputs["progression"])
    assert evaluate(mixed, regression.profile)["prediction_drift"]["signals"][SIGNAL]["n"] == 48


def test_a_profile_without_outputs_gives_the_report_it_gave_before(regression):
    without = {k: v for k, v in regression.profile.items() if k != "outputs"}
    counts = received(as_telemetry(148, features=regression.window(regression.x[regression.held]).features))
    report = evaluate(counts, without)
    assert report["prediction_drift"] == {"verdict": None, "alpha": 0.01, "drifting": [], "insufficient": [],
                                          "signals": {}}
    assert report["verdict"] == OK and set(report) == {"verdict", "samples", "reference_samples", "thresholds",
                                                       "data_drift", "prediction_drift"}


def test_a_malformed_output_profile_is_a_profile_error(regression):
    broken = {**regression.profile, "outputs": [{**regression.profile["outputs"][0], "names": ["a", "b"]}]}
    with pytest.raises(ValueError, match="names 2 rows but holds 1"):
        evaluate(received(regression.window(regression.x[regression.held])), broken)


# embeddings -------------------------------------------------------------------------------------------------
def test_held_out_embeddings_are_ok_on_the_norm_and_every_projection(embedding):
    report = evaluate(received(embedding.window(embedding.x[embedding.held])), embedding.profile)
    signals = report["prediction_drift"]["signals"]
    assert list(signals) == ["emb.norm"] + [f"emb.proj{i}" for i in range(PROJECTIONS)]
    assert report["verdict"] == OK and all(s["verdict"] == OK for s in signals.values())
    assert report["prediction_drift"]["alpha"] == pytest.approx(0.01 / 9)  # Bonferroni over the 9 rows


def test_a_norm_shift_is_caught_by_the_norm_row_alone(embedding):
    """Embeddings 25% longer (say an encoder retrained without normalisation) point the same way: the norm
    row drifts, the projections of the normalised vectors do not move at all."""
    x = embedding.x[embedding.held]
    clean, longer = (received(embedding.window(x, scale=s)) for s in (1.0, 1.25))
    report = evaluate(longer, embedding.profile)
    assert report["verdict"] == DRIFT and report["prediction_drift"]["drifting"] == ["emb.norm"]
    np.testing.assert_array_equal(longer.outputs["emb"][1:], clean.outputs["emb"][1:])
    assert report["prediction_drift"]["signals"]["emb.norm"]["psi"] > 1.0


# detections: a row's own total is its n ---------------------------------------------------------------------
class Detector:
    """Digits as a detector's output: a pixel of intensity >= 0.75 is a detection, its intensity the score;
    the profile's rows `count` (per image) and `score` (per detection) are binned on the reference part."""

    def __init__(self) -> None:
        self.x = load_digits().data / 16.0
        self.held = held_out(len(self.x))
        count, score = self.summary(self.x[~self.held])
        self.count_row = section("scores", "detections", ["count"], count)
        self.score_row = section("", "", ["score"], score)
        scores = {**self.count_row, **{key: self.count_row[key] + self.score_row[key]
                                       for key in ("names", "edges", "counts")}}
        self.profile = {"count": int((~self.held).sum()), "features": [], "outputs": [scores]}

    @staticmethod
    def summary(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        bright = images >= 0.75
        return bright.sum(axis=1, keepdims=True).astype(np.float64), images[bright][:, None]

    def telemetry(self, images: np.ndarray, **where) -> TelemetryWindow:
        count, score = self.summary(images)
        counted = rows(self.count_row, count) + rows(self.score_row, score)
        return as_telemetry(len(images), outputs=(OutputCounts("scores", counted),), model="detector", **where)


def test_the_score_row_of_a_detector_is_judged_on_its_detections():
    detector = Detector()
    x, held, profile = detector.x, detector.held, detector.profile
    scores = profile["outputs"][0]
    assert sum(scores["counts"][1]) == int((x[~held] >= 0.75).sum()) > 10 * (~held).sum()  # detections

    def window(images: np.ndarray) -> WindowCounts:
        return received(detector.telemetry(images))

    few = x[held][:10]  # 10 images hold well over 100 detections
    group = evaluate(window(few), profile)["prediction_drift"]
    signals = group["signals"]
    assert signals["scores.count"]["n"] == 10 and signals["scores.count"]["verdict"] == INSUFFICIENT
    assert signals["scores.score"]["n"] == int((few >= 0.75).sum()) >= 100
    assert signals["scores.score"]["verdict"] == OK
    # the short row is insufficient on its own; the group is judged on the row that has its samples
    assert group["verdict"] == OK and group["insufficient"] == ["scores.count"] and not cleared(group)
    whole = evaluate(window(x[held]), profile)
    assert whole["verdict"] == OK and whole["prediction_drift"]["insufficient"] == []
    assert cleared(whole["prediction_drift"])
    brighter = evaluate(window(np.sqrt(few)), profile)["prediction_drift"]  # brighter strokes: scores move up
    assert brighter["verdict"] == DRIFT and brighter["drifting"] == ["scores.score"]
    assert brighter["insufficient"] == ["scores.count"]


def test_an_alert_closes_only_once_the_short_row_is_judged_too(tmp_path):
    """The monitor opens a prediction_drift alert on the score row while the count row is short; clean
    windows then make the group "ok" on the score row alone, which does not close the alert (the count row
    was never judged); once the lookback holds 100 images the group is cleared, and 3 such runs close it."""
    detector = Detector()
    sessions = make_sessions(make_engine(f"sqlite:///{tmp_path / 'cloud.db'}"))
    with sessions.begin() as session:
        session.add(Device(id="cam", fleet="lab", password_hash="x"))
    monitor = DriftMonitor(sessions, lambda name, version: detector.profile if name == "detector" else None,
                           lookback_seconds=300.0, interval_seconds=0.05)
    clean = detector.x[detector.held]

    def run(minute: int, images: np.ndarray) -> dict:
        window = detector.telemetry(images, device="cam", seq=minute + 1, start=T0 + 60.0 * minute)
        with sessions.begin() as session:
            session.add(TelemetryRecord(device_id="cam", fleet="lab", seq=minute + 1, model_name="detector",
                                        model_version=1, window_start=window.start, window_end=window.end,
                                        requests=window.requests, samples=window.samples, errors=0,
                                        payload=window.to_payload().decode(), received_at=window.end))
        (result,) = [r for r in monitor.run_once(window.end + 1.0) if r.scope == "device"]
        return result.report["prediction_drift"]

    def status() -> list[str]:
        with sessions() as session:
            query = select(Alert).where(Alert.kind == "prediction_drift", Alert.scope == "device")
            return [a.status for a in session.scalars(query)]

    first = run(0, np.sqrt(clean[:10]))  # brighter strokes, 10 images
    assert first["verdict"] == DRIFT and first["insufficient"] == ["scores.count"] and status() == ["open"]
    for minute in range(1, 12):  # 10 clean images a minute: at most 50 in the lookback, the count row is short
        group = run(minute, clean[10 * minute:10 * minute + 10])
    assert group["verdict"] == OK and group["insufficient"] == ["scores.count"] and status() == ["open"]
    verdicts = [run(minute, clean[120 + 30 * (minute - 12):150 + 30 * (minute - 12)]) for minute in range(12, 20)]
    judged = [m for m, g in zip(range(12, 20), verdicts, strict=True) if cleared(g)]
    assert judged and status() == ["closed"]
    with sessions() as session:
        (alert,) = session.scalars(select(Alert).where(Alert.kind == "prediction_drift", Alert.scope == "device"))
        assert alert.closed_at == T0 + 60.0 * (judged[0] + 2) + 61.0  # the third cleared run in a row


def test_a_group_with_no_row_judged_stays_insufficient():
    """The rule only lets judged rows decide: with none judged (every row short), the group is insufficient."""
    x = load_digits().data / 16.0
    edges = quantile_edges(x[:, 20:22])
    profile = {"count": len(x), "features": [], "outputs": [
        {"output": "v", "summary": "values", "names": ["v[0]", "v[1]"], "edges": edges.tolist(),
         "counts": bin_counts(x[:, 20:22], edges).tolist()}]}
    counted = tuple(tuple(r) for r in bin_counts(x[:30, 20:22], edges).tolist())
    report = evaluate(received(as_telemetry(30, outputs=(OutputCounts("v", counted),), model="m")), profile)
    group = report["prediction_drift"]
    assert group["verdict"] == INSUFFICIENT and group["insufficient"] == ["v.v[0]", "v.v[1]"]
    assert report["verdict"] == INSUFFICIENT


# through Mosquitto, the ingest and SQLite to the drift monitor --------------------------------------------------
def test_the_ingest_stores_output_summaries_and_the_monitor_reads_them_back(tmp_path, mosquitto, publisher,
                                                                            regression):
    """Two devices send the held-out split in three windows each, then the same with predictions x1.3."""
    sessions = make_sessions(make_engine(f"sqlite:///{tmp_path / 'cloud.db'}"))
    with sessions.begin() as session:
        session.add_all([Device(id=d, fleet="lab", password_hash="x") for d in ("d1", "d2")])
    ingest = Ingest(sessions, mosquitto.url, flush_seconds=0.02)
    ingest.start()
    x = regression.x[regression.held]
    parts = (x[:50], x[50:100], x[100:])
    sent: dict[tuple[str, int], TelemetryWindow] = {}
    try:
        assert ingest.wait_connected(10)
        time.sleep(0.3)  # let the ingest's subscription settle
        for round_ in range(6):
            for device in ("d1", "d2"):
                window = regression.window(parts[round_ % 3], scale=1.0 if round_ < 3 else 1.3, device=device,
                                           seq=round_ + 1, start=T0 + 60.0 * round_)
                sent[(device, round_ + 1)] = window
                publish(publisher, topic("lab", device, "telemetry"), window.to_payload())
        wait_for(lambda: len(stored(sessions)) == len(sent))
    finally:
        ingest.stop()
    assert {key: parse_telemetry(payload).outputs for key, payload in stored(sessions).items()} == {
        key: window.outputs for key, window in sent.items()}

    def profile_for(name: str, version: int):
        return regression.profile if (name, version) == ("diabetes", 1) else None

    monitor = DriftMonitor(sessions, profile_for, lookback_seconds=180.0)
    clean = {(r.scope, r.scope_id): r for r in monitor.run_once(T0 + 3 * 60.0 + 1)}  # rounds 0-2
    assert {key: r.verdict for key, r in clean.items()} == {
        ("device", "d1"): OK, ("device", "d2"): OK, ("fleet", "lab"): OK}
    assert clean[("fleet", "lab")].report["prediction_drift"]["signals"][SIGNAL]["n"] == 2 * len(x)
    drifted = {(r.scope, r.scope_id): r for r in monitor.run_once(T0 + 6 * 60.0 + 1)}  # rounds 3-5: x1.3
    assert {key: r.report["prediction_drift"]["drifting"] for key, r in drifted.items()} == {
        ("device", "d1"): [SIGNAL], ("device", "d2"): [SIGNAL], ("fleet", "lab"): [SIGNAL]}
    with sessions() as session:
        opened = session.scalars(select(Alert)).all()
    assert {(a.scope, a.scope_id, a.kind) for a in opened} == {
        ("device", "d1", "prediction_drift"), ("device", "d2", "prediction_drift"),
        ("fleet", "lab", "prediction_drift")}
    assert all(f"{SIGNAL} PSI" in a.message for a in opened)
    # what GET /api/v1/fleets/lab/drift answers, and the table `edgefleet drift --fleet lab` prints from it
    answer = json.loads(json.dumps([DriftOut.model_validate(drifted[("fleet", "lab")]).model_dump()]))
    assert answer[0]["report"]["prediction_drift"]["signals"][SIGNAL]["verdict"] == DRIFT
    console = Console(record=True, width=160)
    console.print(drift_table(answer, "drift of fleet lab"))
    signal = answer[0]["report"]["prediction_drift"]["signals"][SIGNAL]
    assert f"{SIGNAL} {signal['psi']:.3f} ({signal['psi_threshold']:.3f})" in console.export_text()
    sessions.kw["bind"].dispose()


def stored(sessions) -> dict[tuple[str, int], str]:
    with sessions() as session:
        return {(device, seq): payload for device, seq, payload in session.execute(
            select(TelemetryRecord.device_id, TelemetryRecord.seq, TelemetryRecord.payload))}
