"""Imported models through the real fleet path (issue 12: "push and deploy all work on it").

A user's own files, imported with reference data: an ONNX regression MLP (tests/compilers/import_kit.py,
a retrained release of it as v2) and the converter's .tflite CNN (tests/fixtures/tflite: the int8 file as
v1, the float one as v2). Each goes up with `edgefleet push` to a real cloud (HTTP, SQLite) and out with
`edgefleet deploy` in waves over a real Mosquitto to real device agents, which download it through the
signed URL, verify it, self-test it on the bundle's own backend (onnxruntime, litert), switch, pass the
health window, and then answer on their local HTTP API exactly as the source runtime does on the file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")
pytest.importorskip("onnxruntime")

from ai_edge_litert.interpreter import Interpreter  # noqa: E402
from sqlalchemy import select  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from edgefleet.cli.main import app  # noqa: E402 - registers push and deploy
from edgefleet.cloud.db import DeviceStatus  # noqa: E402
from edgefleet.cloud.server import CloudServer  # noqa: E402
from edgefleet.cloud.settings import load_settings  # noqa: E402
from edgefleet.compilers.import_model import import_model  # noqa: E402
from edgefleet.core.signing import SigningKey  # noqa: E402
from edgefleet.edge_runtime.agent import DeviceAgent  # noqa: E402
from edgefleet.edge_runtime.device_config import DeviceConfig, MqttConfig  # noqa: E402
from edgefleet.edge_runtime.sim import register_device  # noqa: E402
from tests.cloud.rollout_kit import wait_until  # noqa: E402
from tests.compilers import import_kit as kit  # noqa: E402
from tests.mosquitto import free_port  # noqa: E402

TFLITE = Path(__file__).resolve().parents[1] / "fixtures" / "tflite"
FINAL = ("completed", "aborted")
STAGES = ["received", "downloading", "verifying", "self_testing", "switching", "health_check", "active"]


class Fleet:
    """A cloud on a real Mosquitto, the CLI pointed at it, and the device agents started against it."""

    def __init__(self, tmp_path: Path, mosquitto, public_key: Path) -> None:  # noqa: ANN001 - the fixture
        settings = load_settings(data_dir=tmp_path / "cloud", port=0, mqtt_url=mosquitto.url,
                                 trusted_keys=[public_key], rollout_interval_seconds=0.2)
        self.cloud = CloudServer(settings).start()
        self.token = self.cloud.new_admin_token
        self.client = httpx.Client(base_url=self.cloud.url, headers={"Authorization": f"Bearer {self.token}"},
                                   timeout=30)
        self.env = {"EDGEFLEET_CLOUD": self.cloud.url, "EDGEFLEET_TOKEN": self.token}
        self.broker, self.public_key, self.workdir = mosquitto, public_key, tmp_path / "devices"
        self.agents: list[DeviceAgent] = []

    def cli(self, *args: str) -> str:
        result = CliRunner().invoke(app, list(args), env=self.env)
        assert result.exit_code == 0, (args, result.output, result.exception)
        return result.output

    def device(self, device: str, fleet: str, bundle: Path) -> DeviceAgent:
        """A real agent (registered, MQTT, local HTTP) that starts on `bundle`, its backends the bundle's own."""
        credentials = register_device(self.cloud.url, self.token, device, fleet)
        config = DeviceConfig(device=device, fleet=fleet, bundle=bundle, trusted_keys=(self.public_key,),
                              data_dir=self.workdir / device, threads=1, window_seconds=1.0, http_port=free_port(),
                              mqtt=MqttConfig(self.broker.url, credentials["username"], credentials["password"]))
        agent = DeviceAgent(config).start()
        self.agents.append(agent)
        wait_until(lambda: agent.transport.connected, f"{device} connected")
        return agent

    def deploy(self, name: str, version: int, fleet: str) -> dict:
        """`edgefleet deploy` in waves of half the fleet, then everyone; returns the finished deployment."""
        printed = self.cli("deploy", name, str(version), "--fleet", fleet, "--waves", "50,100", "--success", "1",
                           "--health-window", "1", "--wave-timeout", "60")
        deployment_id = re.search(r"deployment (d-\S+):", printed).group(1)
        path = f"/api/v1/deployments/{deployment_id}"
        wait_until(lambda: self.client.get(path).json()["state"] in FINAL, f"{deployment_id} finished", 90)
        return self.client.get(path).json()

    def statuses(self, deployment_id: str, device: str) -> list[dict]:
        """The OTA status messages the cloud got from `device` for the deployment, in the device's order."""
        with self.cloud.sessions() as session:
            payloads = session.execute(select(DeviceStatus.payload).where(
                DeviceStatus.deployment_id == deployment_id, DeviceStatus.device_id == device)
                .order_by(DeviceStatus.seq)).scalars().all()
        return [json.loads(p) for p in payloads]

    def close(self) -> None:
        for agent in self.agents:
            agent.stop()
        self.client.close()
        self.cloud.stop()


@pytest.fixture
def key(tmp_path: Path) -> tuple[SigningKey, Path]:
    signing = SigningKey.generate()
    _, public = signing.save(tmp_path / "keys", "release")
    return signing, public


@pytest.fixture
def fleet(tmp_path: Path, mosquitto, key) -> Iterator[Fleet]:
    running = Fleet(tmp_path, mosquitto, key[1])
    try:
        yield running
    finally:
        running.close()


def served(agent: DeviceAgent, inputs: np.ndarray) -> tuple[dict, dict]:
    """(GET /healthz, POST /v1/predict's answer) from the device's local HTTP API."""
    health = httpx.get(agent.http_url + "/healthz", timeout=10).json()
    answer = httpx.post(agent.http_url + "/v1/predict", json={"inputs": inputs.tolist()}, timeout=10)
    assert answer.status_code == 200, answer.text
    return health, answer.json()


def finished_everywhere(fleet: Fleet, done: dict, waves: list[int], golden: int) -> None:
    """Completed in these waves; every device went through each stage and reported its self-test passed
    on all `golden` examples."""
    assert done["state"] == "completed", done
    assert [w["size"] for w in done["waves"]] == waves
    assert {d["state"] for d in done["devices"]} == {"active"}, done["devices"]
    for row in done["devices"]:
        statuses = fleet.statuses(done["id"], row["device"])
        assert [s["state"] for s in statuses] == STAGES, statuses
        assert statuses[-1]["detail"]["self_test"] | {"max_abs_error": 0} == {
            "passed": True, "examples": golden, "max_abs_error": 0}, statuses[-1]


@pytest.mark.slow
def test_an_imported_onnx_model_rolls_out_in_waves_and_answers_like_onnxruntime(tmp_path: Path, fleet, key):
    import onnxruntime as ort

    rows = np.random.default_rng(12).standard_normal((64, 8)).astype(np.float32)
    sources = {version: kit.mlp_onnx(tmp_path / f"prices-v{version}.onnx", seed=version) for version in (1, 2)}
    bundles = {version: import_model(source, tmp_path / f"prices-v{version}", name="house-prices", version=version,
                                     task="regression", reference_data={"features": rows}, signing_key=key[0])
               for version, source in sources.items()}
    for version, bundle in bundles.items():
        assert f"pushed house-prices v{version}" in fleet.cli("push", str(bundle.root))
    shops = [fleet.device(f"shop-{i}", "shops", bundles[1].root) for i in range(2)]

    done = fleet.deploy("house-prices", 2, "shops")

    finished_everywhere(fleet, done, [1, 1], golden=8)
    request = rows[:5]
    source = {version: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        ["value"], {"features": request})[0] for version, path in sources.items()}
    assert not np.allclose(source[1], source[2], atol=1e-3)  # v2 is another model: its answers show it arrived
    for shop in shops:
        health, answer = served(shop, request)
        assert health["model"] == {"name": "house-prices", "version": 2} and health["backend"] == "onnxruntime"
        assert answer["task"] == "regression"
        np.testing.assert_allclose(np.asarray(answer["outputs"]["value"], np.float32), source[2], rtol=1e-6,
                                   atol=1e-7)


@pytest.mark.slow
def test_an_imported_tflite_model_is_deployed_and_served_on_litert(tmp_path: Path, fleet, key):
    with np.load(TFLITE / "reference.npz") as recorded:
        rows, float_logits, int8_logits = recorded["pixels"], recorded["float_logits"], recorded["int8_logits"]
    classes = [f"digit{i}" for i in range(10)]
    bundles = {version: import_model(TFLITE / f"{file}.tflite", tmp_path / f"digits-v{version}", name="digits-tflite",
                                     version=version, class_names=classes, reference_data={"pixels": rows},
                                     signing_key=key[0])
               for version, file in ((1, "cnn_int8"), (2, "cnn_float"))}
    for version, bundle in bundles.items():
        assert f"pushed digits-tflite v{version}" in fleet.cli("push", str(bundle.root))
    camera = fleet.device("cam-0", "cams", bundles[1].root)
    health, answer = served(camera, rows)
    assert health["backend"] == "litert"
    np.testing.assert_array_equal(np.asarray(answer["outputs"]["logits"], np.float32), int8_logits)

    done = fleet.deploy("digits-tflite", 2, "cams")

    finished_everywhere(fleet, done, [1], golden=len(rows))
    interpreter = Interpreter(model_path=str(TFLITE / "cnn_float.tflite"), num_threads=1)
    interpreter.allocate_tensors()
    (tensor_in,), (tensor_out,) = interpreter.get_input_details(), interpreter.get_output_details()
    bare = []
    for row in rows:
        interpreter.set_tensor(tensor_in["index"], row[None])
        interpreter.invoke()
        bare.append(interpreter.get_tensor(tensor_out["index"]))
    health, answer = served(camera, rows)
    assert health["model"] == {"name": "digits-tflite", "version": 2} and health["backend"] == "litert"
    logits = np.asarray(answer["outputs"]["logits"], np.float32)
    np.testing.assert_array_equal(logits, np.concatenate(bare))
    np.testing.assert_array_equal(logits, float_logits)  # what the converter environment's LiteRT answered
    assert [p["class"] for p in answer["predictions"]] == [classes[i] for i in float_logits.argmax(1)]
    assert camera.aggregator is not None  # imported with reference data: it has a drift profile

    # v3: the same CNN from a file without a SignatureDef, imported without reference data (generated
    # golden examples, no reference profile): it deploys the same way and is served with telemetry off.
    unprofiled = import_model(TFLITE / "cnn_nosig.tflite", tmp_path / "digits-v3", name="digits-tflite", version=3,
                              class_names=classes, signing_key=key[0])
    assert not (unprofiled.root / "profile.json").exists()
    assert "pushed digits-tflite v3" in fleet.cli("push", str(unprofiled.root))
    done = fleet.deploy("digits-tflite", 3, "cams")
    finished_everywhere(fleet, done, [1], golden=8)
    health, answer = served(camera, rows)
    assert health["model"] == {"name": "digits-tflite", "version": 3} and health["backend"] == "litert"
    output = unprofiled.outputs[0].name  # the file's tensor name: it has no signature to name it "logits"
    np.testing.assert_array_equal(np.asarray(answer["outputs"][output], np.float32), float_logits)
    assert camera.aggregator is None
