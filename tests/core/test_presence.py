"""Presence payloads (birth and death): what the cloud accepts from the presence topic and the old
birth/death topics, and one precise refusal per kind of bad payload."""

from __future__ import annotations

import json

import pytest

from edgefleet.core.presence import Presence, PresenceError, death_payload, parse_presence, stamped

BIRTH = {"schema": "edgefleet.birth", "v": 1, "fleet": "lab", "device": "d1", "online": True, "connection": 5,
         "model": {"name": "digits-cnn", "version": 3}, "agent_version": "0.1.0", "runtime": {"any": ["thing"]}}


def refused(data: dict | bytes, reason: str, topic_kind: str = "presence") -> str:
    payload = data if isinstance(data, bytes) else json.dumps(data).encode()
    with pytest.raises(PresenceError) as caught:
        parse_presence(payload, topic_kind)
    assert caught.value.reason == reason, str(caught.value)
    return str(caught.value)


def test_birth_and_death_on_the_presence_topic():
    assert parse_presence(json.dumps(BIRTH)) == Presence("birth", "lab", "d1", 5, "digits-cnn", 3, "0.1.0")
    assert parse_presence(death_payload("lab", "d1", 5)) == Presence("death", "lab", "d1", 5)


def test_a_birth_says_its_backend_and_a_bounded_summary_of_its_runtime():
    runtime = {"backend": "native", "target": "native", "format": "edgefleet-graph", "precision": "x" * 500,
               "path": 7, "extra": {"deep": [1]}, "fallbacks": [{"entry": "e", "reason": "r"}] * 20 + ["odd"]}
    got = parse_presence(json.dumps({**BIRTH, "backend": "native", "runtime": runtime}))
    assert got.backend == "native"
    assert got.runtime == {"target": "native", "format": "edgefleet-graph", "precision": "x" * 200,
                           "fallbacks": [{"entry": "e", "reason": "r"}] * 8}
    assert parse_presence(json.dumps({**BIRTH, "runtime": "text"})).runtime is None


def test_old_topics_say_the_kind_and_the_schema_may_be_missing():
    assert parse_presence(b'{"online": false}', "death") == Presence("death", None, None, None)
    assert parse_presence(json.dumps(BIRTH), "birth").kind == "birth"
    refused(BIRTH, "wrong_schema", "death")


def test_stamped_adds_the_connection():
    assert json.loads(stamped(b'{"a": 1}', 9)) == {"a": 1, "connection": 9}
    assert stamped(b"not json", 9) == b"not json"


@pytest.mark.parametrize(
    ("changes", "reason", "fragment"),
    [
        ({"schema": None}, "wrong_schema", "edgefleet.birth or edgefleet.death"),
        ({"v": 2}, "unknown_version", "version 2"),
        ({"online": False}, "bad_field", "a birth must say online: true"),
        ({"model": {"name": "m", "version": "x"}}, "bad_field", "model.version must be a non-negative integer"),
        ({"model": {"name": "m", "version": 2**40}}, "number_out_of_range", "model.version"),
        ({"model": {"name": "m" * 200, "version": 1}}, "bad_field", "model.name"),
        ({"model": "digits"}, "bad_field", "model must be an object"),
        ({"agent_version": {"a": 1}}, "bad_field", "agent_version"),
        ({"backend": "b" * 65}, "bad_field", "backend must be a string of 1 to 64"),
        ({"backend": 3}, "bad_field", "backend"),
        ({"connection": "now"}, "bad_field", "connection"),
        ({"connection": -1}, "bad_field", "connection"),
        ({"device": "a/b"}, "bad_field", "device 'a/b'"),
    ],
)
def test_bad_births(changes, reason, fragment):
    assert fragment in refused({**BIRTH, **changes}, reason)


def test_bounded_parsing():
    refused(b"[" * 3000 + b"]" * 3000, "too_deep")
    refused(json.dumps(BIRTH).replace('"connection": 5', '"connection": ' + "1" * 400).encode(),
            "number_out_of_range")
    refused(b"x" * (65 * 1024), "too_large")
    refused(b"[1]", "not_object")
