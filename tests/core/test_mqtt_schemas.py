"""The published MQTT payload schemas (docs/schemas/, draft 2020-12) agree with the code: the examples in
docs/mqtt-payloads.md and the payloads edgefleet produces validate, and payloads the parsers refuse are
refused by the schema too wherever a schema can say so."""

from __future__ import annotations

import json
import queue
import re
import time
from dataclasses import replace
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from jsonschema import Draft202012Validator

from edgefleet.core.labels import LABELS_OP, label_command, parse_label_command
from edgefleet.core.ota import BundleRef, Command, OtaError, Status, parse_command, parse_status
from edgefleet.core.presence import PresenceError, death_payload, parse_presence
from edgefleet.core.telemetry import OutputCounts, TelemetryError, parse_telemetry
from edgefleet.core.topics import topic
from edgefleet.edge_runtime.mqtt import MqttTransport
from edgefleet.edge_runtime.outbox import Outbox
from tests.core.test_telemetry import window

DOCS = Path(__file__).resolve().parents[2] / "docs"
KINDS = ("telemetry", "birth", "death", "status", "cmd")


def parse_cmd(payload: bytes | str) -> object:
    """As the device reads its cmd topic: labels (edge_runtime/feedback.py) apart from update commands."""
    data = json.loads(payload)
    return parse_label_command(data, OtaError) if data.get("op") == LABELS_OP else parse_command(payload)


PARSERS = {"telemetry": parse_telemetry, "birth": parse_presence, "death": parse_presence, "status": parse_status,
           "cmd": parse_cmd}
REFUSALS = (TelemetryError, PresenceError, OtaError)


def validator(kind: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads((DOCS / "schemas" / f"{kind}.json").read_text()))


def doc_examples() -> list[tuple[str, str]]:
    text = (DOCS / "mqtt-payloads.md").read_text()
    return re.findall(r"<!-- example: (\w+) -->\s*```json\n(.*?)```", text, re.DOTALL)


def assert_valid(kind: str, payload: bytes | str) -> None:
    errors = [e.message for e in validator(kind).iter_errors(json.loads(payload))]
    assert not errors, f"{kind}: {errors}"
    PARSERS[kind](payload)  # and the code takes it


@pytest.mark.parametrize("kind", KINDS)
def test_every_schema_is_a_valid_draft_2020_12_schema(kind):
    schema = json.loads((DOCS / "schemas" / f"{kind}.json").read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def test_the_docs_show_an_example_of_every_kind_and_each_is_valid():
    examples = doc_examples()
    assert {kind for kind, _ in examples} == set(KINDS)
    for kind, example in examples:
        assert_valid(kind, example)


def test_payloads_the_code_produces_are_valid():
    assert_valid("telemetry", json.dumps(window()))
    assert_valid("telemetry", json.dumps(window(dropped={"windows": 2, "first_seq": 3, "last_seq": 4})))
    regression = replace(parse_telemetry(json.dumps(window()).encode()), predictions=(), confidence=(),
                         outputs=(OutputCounts("price", ((3, 2, 1, 0),)),
                                  OutputCounts("embedding", ((1, 4, 1, 0), (2, 2, 2, 0)))))
    assert_valid("telemetry", regression.to_payload())
    assert_valid("telemetry", json.dumps({k: v for k, v in window().items() if k != "outputs"}))
    assert_valid("status", Status("lab", "d1", "c-1", "dep-1", "downloading", seq=3, at=5.0).to_payload())
    assert_valid("status", Status("lab", "d1", "c-1", "dep-1", "failed", BundleRef("m", 2), "bundle_mismatch",
                                  {"expected": 2}, 6.0, 4).to_payload())
    install = Command("c-1", "install", "dep-1", BundleRef("m", 2, "https://cloud/x", "ab" * 32, 100), max_bytes=100,
                      mode="canary", canary_fraction=0.25, latency_budget_ms=40.0, issued_at=1.0)
    assert_valid("cmd", install.to_payload())
    assert_valid("cmd", Command("c-2", "rollback", "dep-1", BundleRef("m", 2), reason="abort").to_payload())
    assert_valid("cmd", label_command("l-1", [{"request_id": "r-1", "label": 3}, {"timestamp": 5.5, "value": 1.5}],
                                      10.0))
    assert_valid("death", death_payload("lab", "d1", 12345))


def test_the_presence_a_real_device_leaves_on_the_broker_is_valid(mosquitto, tmp_path):
    """Birth and death as MqttTransport publishes them (stamped, retained), read back from Mosquitto."""
    birth = json.dumps({"schema": "edgefleet.birth", "v": 1, "fleet": "lab", "device": "d1", "online": True,
                        "model": {"name": "digits-cnn", "version": 3}, "agent_version": "0.1.0",
                        "backend": "native", "at": time.time()}).encode()
    got: queue.Queue = queue.Queue()
    reader = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="schema-reader", protocol=mqtt.MQTTv311)
    reader.on_message = lambda client, userdata, message: got.put(bytes(message.payload))
    reader.connect("127.0.0.1", mosquitto.port)
    reader.loop_start()
    reader.subscribe(topic("lab", "d1", "presence"), qos=1)
    outbox = Outbox(tmp_path / "outbox.sqlite")
    transport = MqttTransport(mosquitto.url, fleet="lab", device="d1", outbox=outbox, birth=lambda: birth).start()
    try:
        assert_valid("birth", got.get(timeout=10))
    finally:
        transport.stop()
        outbox.close()
    try:
        assert_valid("death", got.get(timeout=10))
    finally:
        reader.loop_stop()
        reader.disconnect()


def status(**changes) -> dict:
    return {**json.loads(Status("lab", "d1", "c-1", "dep-1", "active", seq=3).to_payload()), **changes}


def install(**changes) -> dict:
    command = Command("c-1", "install", "dep-1", BundleRef("m", 2, "https://cloud/x", "ab" * 32, 100), max_bytes=100)
    return {**json.loads(command.to_payload()), **changes}


def birth(**changes) -> dict:
    return {"schema": "edgefleet.birth", "v": 1, "fleet": "lab", "device": "d1", "online": True, "connection": 1,
            "model": {"name": "m", "version": 1}, **changes}


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        ("telemetry", window(schema="edgefleet.other")),
        ("telemetry", window(v=2)),
        ("telemetry", window(seq=-1)),
        ("telemetry", window(seq=True)),
        ("telemetry", window(seq=2**31)),
        ("telemetry", window(device="a/b")),
        ("telemetry", window(model=None)),
        ("telemetry", window(model={"name": "m" * 129, "version": 1})),
        ("telemetry", window(latency_ms=[1, 2])),
        ("telemetry", window(predictions=[1, -1])),
        ("telemetry", window(dropped={"windows": "x"})),
        ("telemetry", {k: v for k, v in window().items() if k != "window"}),
        ("telemetry", window(outputs=[{"output": "p", "counts": []}])),
        ("telemetry", window(outputs=[{"output": "", "counts": [[1, 2]]}])),
        ("telemetry", window(outputs=[{"output": "a\0b", "counts": [[1, 2]]}])),
        ("telemetry", window(outputs=[{"output": "p", "counts": [[5]]}])),
        ("telemetry", window(outputs=[{"output": "p", "counts": [[1, -2]]}])),
        ("telemetry", window(outputs=[{"counts": [[1, 2]]}])),
        ("telemetry", window(outputs=[{"output": "p", "counts": [[1, 2]] * 257}])),
        ("telemetry", window(outputs=[{"output": f"o{i}", "counts": [[1, 2]]} for i in range(65)])),
        ("birth", birth(model={"name": "m", "version": "x"})),
        ("birth", birth(model={"name": "m", "version": 2**40})),
        ("birth", birth(online=False)),
        ("death", {**json.loads(death_payload("lab", "d1", 1)), "online": True}),
        ("status", status(state="bogus")),
        ("status", status(seq=2**40)),
        ("status", status(command="")),
        ("status", status(deployment="d" * 65)),
        ("cmd", install(op="reboot")),
        ("cmd", {k: v for k, v in install().items() if k != "bundle"}),
        ("cmd", install(bundle={**install()["bundle"], "url": "ftp://cloud/x"})),
        ("cmd", install(canary_fraction=2.0)),
        ("cmd", install(mode="yolo")),
        ("cmd", install(timeout_seconds=1e9)),
    ],
)
def test_payloads_the_code_refuses_are_refused_by_the_schema(kind, payload):
    errors = list(validator(kind).iter_errors(payload))
    assert errors, f"the {kind} schema accepts {payload}"
    with pytest.raises(REFUSALS):
        check = PARSERS[kind](json.dumps(payload).encode())
        if kind == "status":  # the ingest's column limits (cloud/ingest.py) on top of the parser
            from edgefleet.cloud.ingest import _checked_status

            _checked_status(check)
