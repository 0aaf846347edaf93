"""Telemetry per task on real bundles: a regression MLP, an embedding encoder, a detector, a GRU with its
state; windows summed over requests equal the reference profile's counts on the same data, exactly."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgefleet.compilers.export import export_torch
from edgefleet.compilers.import_model import import_model
from edgefleet.core.bundle import Bundle
from edgefleet.core.signing import SigningKey
from edgefleet.core.telemetry import TelemetryWindow
from edgefleet.edge_runtime.agent import DeviceAgent
from edgefleet.edge_runtime.device_config import DeviceConfig
from edgefleet.edge_runtime.predictor import Predictor
from edgefleet.edge_runtime.telemetry import TelemetryAggregator
from tests.compilers import import_kit as kit
from tests.mosquitto import free_port

REFERENCE = 300  # quantile positions fall between samples: no edge equals a reference value
CHUNK = 256  # the exporter's: the device sees the same batches, so the outputs are bit-identical


class TinyDetector(nn.Module):
    """SSD-style head on a tabular embedding: 6 anchors, each a box [4] and an objectness score."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(12, 32), nn.ReLU())
        self.boxes, self.scores = nn.Linear(32, 6 * 4), nn.Linear(32, 6)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.boxes(h).reshape(-1, 6, 4), torch.sigmoid(self.scores(h))


class SentenceEmbedder(nn.Module):
    """Mean of token embeddings through a projection: [batch, 8] features -> [batch, 24] embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 48), nn.Tanh(), nn.Linear(48, 24))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("telemetry-tasks")


@pytest.fixture(scope="module")
def public(key, work) -> Path:
    return key.save(work / "keys", "release")[1]


def served(bundle: Bundle, public: Path, feeds: list[dict]) -> tuple[TelemetryWindow, TelemetryAggregator]:
    """The window a Predictor with telemetry closes after serving the feeds."""
    with Predictor(bundle.root, trusted_keys=[public], threads=1) as predictor:
        aggregator = TelemetryAggregator(predictor.bundle, fleet="lab", device="pi-01")
        predictor.enable_telemetry(aggregator)
        for feed in feeds:
            predictor.predict(feed)
        return aggregator.close_window(), aggregator


def chunks(data: dict[str, np.ndarray], axis: int = 0) -> list[dict]:
    total = next(iter(data.values())).shape[axis]
    return [{k: np.take(v, range(i, min(i + CHUNK, total)), axis=axis) for k, v in data.items()}
            for i in range(0, total, CHUNK)]


def as_lists(window: TelemetryWindow) -> tuple[list, list]:
    return ([[list(r) for r in f.counts] for f in window.features],
            [[list(r) for r in o.counts] for o in window.outputs])


@pytest.fixture(scope="module")
def regression(work, key) -> tuple[Bundle, np.ndarray]:
    torch.manual_seed(0)
    x = np.random.default_rng(1).normal(size=(REFERENCE, 8)).astype(np.float32)
    names = ["age", "income", "debt", "rooms", "area", "floor", "year", "distance"]
    bundle = export_torch(kit.RegressionMLP(), x[:4], work / "mlp", name="price", version=1, reference_data=x,
                          input_names=["features"], output_names=["price"], task="regression", feature_names=names,
                          signing_key=key)
    return bundle, x


def test_regression_windows_equal_the_profile_and_name_the_columns(regression, key, public):
    bundle, x = regression
    profile = bundle.reference_profile()
    assert profile["features"][0]["names"][:2] == ["age", "income"]
    (entry,) = profile["outputs"]
    assert (entry["output"], entry["summary"], entry["names"]) == ("price", "values", ["price[0]"])
    assert bundle.manifest["interface"]["profiled_inputs"] == ["features"]
    window, _ = served(bundle, public, chunks({"features": x}))
    features, outputs = as_lists(window)
    assert features == [profile["features"][0]["counts"]]
    assert window.outputs[0].output == "price" and outputs == [entry["counts"]]
    assert window.samples == REFERENCE and window.to_dict()["outputs"][0]["output"] == "price"


def test_a_shifted_input_moves_the_values_histogram(regression, key, public):
    bundle, x = regression
    reference = np.asarray(bundle.reference_profile()["outputs"][0]["counts"][0][:-1], dtype=float)
    window, _ = served(bundle, public, chunks({"features": x * 4.0}))
    live = np.asarray(window.outputs[0].counts[0][:-1], dtype=float)
    share_ref, share_live = reference / reference.sum(), live / live.sum()
    outer = [0, len(live) - 1]  # the tails below the lowest and above the highest reference decile
    assert share_ref[outer].sum() == pytest.approx(0.2, abs=0.01)
    assert share_live[outer].sum() > 0.5
    psi = np.sum((share_live - share_ref) * np.log((share_live + 1e-4) / (share_ref + 1e-4)))
    assert psi > 0.5


def test_embedding_model_exported_without_task_is_other_and_gets_no_classes(work, key):
    torch.manual_seed(0)
    x = np.random.default_rng(2).normal(size=(64, 8)).astype(np.float32)
    other = export_torch(SentenceEmbedder(), x[:4], work / "emb-other", name="emb", version=1, reference_data=x,
                         output_names=["embedding"])
    assert other.manifest["interface"]["task"] == "other"
    assert other.manifest["interface"]["postprocess"] == "none"
    profile = other.reference_profile()
    assert "predictions" not in profile and "confidence" not in profile and "outputs" not in profile
    embedding = export_torch(SentenceEmbedder(), x[:4], work / "emb", name="emb", version=1, reference_data=x,
                             output_names=["embedding"], task="embedding")
    (entry,) = embedding.reference_profile()["outputs"]
    assert entry["summary"] == "embedding" and np.asarray(entry["projections"]).shape == (8, 24)


def test_imported_encoder_embedding_window_equals_its_profile(work, key, public):
    rng = np.random.default_rng(4)
    ids = rng.integers(1, 64, size=(REFERENCE, 16)).astype(np.int64)
    mask = (rng.random((REFERENCE, 16)) < 0.9).astype(np.int64)
    data = {"input_ids": ids, "attention_mask": mask}
    bundle = import_model(kit.encoder_onnx(work / "encoder.onnx"), work / "encoder", name="enc", version=1,
                          reference_data=data, task="embedding", signing_key=key)
    profile = bundle.reference_profile()
    assert bundle.manifest["interface"]["profiled_inputs"] == [] and profile["features"] == []
    assert [u["input"] for u in profile["unprofiled"]] == ["input_ids", "attention_mask"]
    (entry,) = profile["outputs"]
    assert entry["output"] == "pooled" and np.asarray(entry["counts"]).sum(axis=1).tolist() == [REFERENCE] * 9
    window, aggregator = served(bundle, public, chunks(data))
    assert window.features == () and window.samples == REFERENCE and window.requests == 2
    assert as_lists(window)[1] == [entry["counts"]]
    assert not aggregator.fast_path


def test_detector_counts_detections_and_bins_their_scores(work, key, public):
    torch.manual_seed(3)
    model = TinyDetector().eval()
    x = np.random.default_rng(5).normal(size=(REFERENCE, 12)).astype(np.float32)
    bundle = export_torch(model, x[:4], work / "det", name="det", version=1, reference_data=x, input_names=["x"],
                          output_names=["boxes", "scores"], signing_key=key)
    interface = bundle.manifest["interface"]
    assert interface["task"] == "detection"  # one *box* and one *score* output
    assert interface["detection"] == {"layout": "boxes+scores", "scores": "scores", "boxes": "boxes",
                                      "score_threshold": 0.5}
    (entry,) = bundle.reference_profile()["outputs"]
    counts = np.asarray(entry["counts"])
    with torch.no_grad():
        kept = model(torch.from_numpy(x))[1].numpy() >= 0.5
    assert entry["names"] == ["count", "score"] and counts[0].sum() == REFERENCE
    assert counts[1].sum() == kept.sum() > 0  # one score per detection at or above the threshold
    window, _ = served(bundle, public, chunks({"x": x}))
    assert as_lists(window)[1] == [entry["counts"]]


def test_gru_profiles_its_sequence_not_its_state(work, key, public):
    torch.manual_seed(0)
    rng = np.random.default_rng(6)
    x = rng.normal(size=(5, REFERENCE, 8)).astype(np.float32)
    state = rng.normal(size=(2, REFERENCE, 16)).astype(np.float32)
    axes = {"x": {0: None, 1: "batch"}, "state": {0: None, 1: "batch"}}
    bundle = export_torch(kit.RecurrentStep(), (torch.from_numpy(x[:, :3]), torch.from_numpy(state[:, :3])),
                          work / "gru", name="gru", version=1, reference_data={"x": x, "state": state},
                          input_names=["x", "state"], output_names=["y", "next_state"], dynamic_axes=axes,
                          task="regression", signing_key=key)
    profile = bundle.reference_profile()
    assert bundle.manifest["interface"]["profiled_inputs"] == ["x"]
    assert profile["unprofiled"] == [{"input": "state", "reason": "a recurrent state (it pairs with output "
                                                                  "'next_state')"}]
    assert profile["count"] == REFERENCE and profile["features"][0]["kind"] == "channel_stats"
    window, _ = served(bundle, public, chunks({"x": x, "state": state}, axis=1))
    features, outputs = as_lists(window)
    assert [f.input for f in window.features] == ["x"] and features == [profile["features"][0]["counts"]]
    assert outputs == [e["counts"] for e in profile["outputs"]] and window.samples == REFERENCE


class RateScaled(nn.Module):
    """Features scaled by a sample rate given as a 0-d tensor (one value for every sample of a request)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
        return self.net(x * (rate / 16000.0))


def test_an_input_without_batch_axis_is_declared_unprofiled_and_telemetry_runs(work, key, public):
    torch.manual_seed(0)
    x = np.random.default_rng(8).normal(size=(REFERENCE, 4)).astype(np.float32)
    rate = np.array(16000.0, np.float32)
    bundle = export_torch(RateScaled(), (torch.from_numpy(x[:4]), torch.tensor(16000.0)), work / "rate",
                          name="rate", version=1, reference_data={"x": x, "rate": rate}, input_names=["x", "rate"],
                          output_names=["y"], task="regression", signing_key=key)
    profile = bundle.reference_profile()
    assert bundle.manifest["interface"]["profiled_inputs"] == ["x"]
    assert profile["unprofiled"] == [{"input": "rate", "reason": "no batch axis: one value serves every sample"}]
    assert profile["outputs"][0]["names"] == ["y[0]", "y[1]", "y[2]"]
    window, _ = served(bundle, public, [{"x": c["x"], "rate": rate} for c in chunks({"x": x})])
    assert as_lists(window) == ([profile["features"][0]["counts"]], [profile["outputs"][0]["counts"]])
    assert window.samples == REFERENCE


def test_a_bundle_without_reference_profile_is_served_with_telemetry_off(work, key, tmp_path, caplog, public):
    bundle = import_model(kit.mlp_onnx(work / "plain.onnx"), work / "plain", name="plain", version=1,
                          task="regression", signing_key=key)
    assert bundle.reference_profile() is None
    path = tmp_path / "device.toml"
    path.write_text(f'[device]\nid = "pi-02"\nfleet = "lab"\ndata_dir = "{tmp_path / "device"}"\n'
                    f'[model]\nbundle = "{bundle.root}"\ntrusted_keys = ["{public}"]\nthreads = 1\n'
                    f'[http]\nport = {free_port()}\n')
    with caplog.at_level(logging.INFO, logger="edgefleet.edge_runtime.agent"), \
            DeviceAgent(DeviceConfig.load(path), serve_http=False) as agent:
        answer = agent.predict(np.ones((2, 8), np.float32))
        assert answer["value"].shape == (2, 1) and agent.aggregator is None
        assert agent.close_window() is None
    said = [r.getMessage() for r in caplog.records if "telemetry is off" in r.getMessage()]
    assert said == ["telemetry is off for plain v1: bundle plain v1 has no reference profile (it was made without "
                    "reference data): export or import it with reference data to enable telemetry"]


def test_integer_bool_and_half_inputs_are_binned_like_the_profile(work, key, public):
    rng = np.random.default_rng(7)
    data = {"ids": rng.integers(0, 1000, (REFERENCE, 4)).astype(np.int64), "flags": rng.random((REFERENCE, 4)) < 0.3,
            "half": rng.normal(size=(REFERENCE, 4)).astype(np.float16),
            "q": rng.integers(-128, 128, (REFERENCE, 4)).astype(np.int8),
            "pixels": rng.integers(0, 256, (REFERENCE, 4)).astype(np.uint8)}
    bundle = import_model(kit.dtypes_onnx(work / "dtypes.onnx"), work / "dtypes", name="dtypes", version=1,
                          reference_data=data, signing_key=key)
    profile = bundle.reference_profile()
    assert bundle.manifest["interface"]["profiled_inputs"] == list(data)
    window, _ = served(bundle, public, chunks(data))
    assert [f.input for f in window.features] == list(data)
    assert as_lists(window)[0] == [f["counts"] for f in profile["features"]]


def test_a_profile_output_entry_of_the_wrong_shape_is_one_precise_error(regression, tmp_path):
    import json
    import shutil

    from edgefleet.core.errors import EdgefleetError

    bundle, _ = regression
    copy = Path(shutil.copytree(bundle.root, tmp_path / "copy"))
    profile = json.loads((copy / "profile.json").read_text())
    profile["outputs"][0]["edges"] = [[3.0, 1.0]]  # not sorted
    (copy / "profile.json").write_text(json.dumps(profile))
    with pytest.raises(EdgefleetError, match=r"bundle price v1: profile output 'price': edges must be 1 sorted rows"):
        TelemetryAggregator(Bundle.open(copy), fleet="lab", device="pi-01")
    profile["outputs"][0] = {"output": "price", "summary": "values", "names": ["a", "b"], "edges": [[0.0], [0.0]]}
    (copy / "profile.json").write_text(json.dumps(profile))
    with pytest.raises(EdgefleetError, match="profile output 'price': 2 element rows for an output of 1 elements"):
        TelemetryAggregator(Bundle.open(copy), fleet="lab", device="pi-01")
    profile["outputs"][0] = {"output": "nope", "summary": "values", "names": ["x"], "edges": [[0.0]]}
    (copy / "profile.json").write_text(json.dumps(profile))
    with pytest.raises(EdgefleetError, match="profile output entry 'nope' is not a batched output of the model"):
        TelemetryAggregator(Bundle.open(copy), fleet="lab", device="pi-01")


def test_a_regression_agent_reports_its_value_histogram_through_mosquitto(regression, public, tmp_path, mosquitto):
    from sqlalchemy import select

    from edgefleet.cloud.db import Device, TelemetryRecord, make_engine, make_sessions
    from edgefleet.cloud.ingest import Ingest
    from edgefleet.core.telemetry import parse_telemetry

    bundle, x = regression
    sessions = make_sessions(make_engine(f"sqlite:///{tmp_path / 'cloud.db'}"))
    with sessions.begin() as session:
        session.add(Device(id="pi-03", fleet="lab", password_hash="x"))
    path = tmp_path / "device.toml"
    path.write_text(f'[device]\nid = "pi-03"\nfleet = "lab"\ndata_dir = "{tmp_path / "device"}"\n'
                    f'[model]\nbundle = "{bundle.root}"\ntrusted_keys = ["{public}"]\nthreads = 1\n'
                    f'[mqtt]\nurl = "{mosquitto.url}"\n[telemetry]\nwindow_seconds = 0.3\n')
    ingest = Ingest(sessions, mosquitto.url, flush_seconds=0.02)
    ingest.start()
    assert ingest.wait_connected(10)
    with DeviceAgent(DeviceConfig.load(path), serve_http=False) as agent:
        for feed in chunks({"features": x}):
            agent.predict(feed)
    deadline, rows = time.monotonic() + 10, []
    while time.monotonic() < deadline:
        with sessions() as session:
            rows = session.scalars(select(TelemetryRecord)).all()
        if sum(r.samples for r in rows) >= REFERENCE:
            break
        time.sleep(0.1)
    ingest.stop()
    windows = [parse_telemetry(r.payload) for r in rows]
    with_outputs = [w for w in windows if w.outputs]
    assert sum(w.samples for w in windows) == REFERENCE
    total = np.sum([np.asarray(w.outputs[0].counts) for w in with_outputs], axis=0)
    assert {w.outputs[0].output for w in with_outputs} == {"price"}
    assert total.tolist() == bundle.reference_profile()["outputs"][0]["counts"]
