"""The broker fixture itself: a real Mosquitto that carries a QoS 1 message and restarts on its port."""

from __future__ import annotations

import queue

import paho.mqtt.client as mqtt


def roundtrip(port: int) -> bytes:
    got: queue.Queue = queue.Queue()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    sub.on_message = lambda client, userdata, message: got.put(message.payload)
    sub.connect("127.0.0.1", port)
    sub.subscribe("t/#", qos=1)
    sub.loop_start()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    try:
        for _ in range(50):  # until the subscription is active
            pub.publish("t/x", b"hello", qos=1).wait_for_publish(2)
            try:
                return got.get(timeout=0.2)
            except queue.Empty:
                continue
        raise AssertionError("no message came back")
    finally:
        for client in (pub, sub):
            client.loop_stop()
            client.disconnect()


def test_broker_carries_messages_and_restarts_on_the_same_port(mosquitto):
    assert roundtrip(mosquitto.port) == b"hello"
    pid, port = mosquitto.pid, mosquitto.port
    mosquitto.stop()
    assert mosquitto.process.poll() is not None
    mosquitto.start()
    assert mosquitto.pid != pid and mosquitto.port == port
    assert roundtrip(mosquitto.port) == b"hello"
