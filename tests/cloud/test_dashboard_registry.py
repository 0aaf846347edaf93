"""The dashboard's registry pages, device backend and OTA history, and live rollout progress over plain HTTP,
against a cloud on a real Mosquitto with real bundles: the digits CNN as trained, and as a release pipeline
makes it (quantized by run_recipe with its compression report, compiled for onnxruntime-cpu and native),
signed and pushed through the API like any bundle."""

from __future__ import annotations

import html
import json
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest

from edgefleet.core.bundle import Bundle, read_manifest, sign, write_manifest
from edgefleet.core.ota import Status
from edgefleet.core.signing import SigningKey
from tests.cloud.api_kit import GZIP
from tests.cloud.cloud_process import cloud_servers
from tests.cloud.dashboard_kit import Publisher, register, released_bundle
from tests.cloud.test_dashboard_http import signed_in
from tests.mosquitto import MosquittoBroker
from tests.waiting import until

pytestmark = pytest.mark.timeout(600)

HOSTILE = '<script>window.__pwned=1</script><img src=x onerror="alert(1)">'
SHOWN = "&lt;script&gt;window.__pwned=1&lt;/script&gt;&lt;img src=x onerror=&#34;alert(1)&#34;&gt;"  # as escaped
CLASSES = [HOSTILE, "$\\alpha^2$", *(str(i) for i in range(2, 10))]  # matplotlib math text and markup


@pytest.fixture(scope="module")
def stage(tmp_path_factory, digits_bundle, digits_splits):
    tmp = tmp_path_factory.mktemp("dashboard-registry")
    released = released_bundle(digits_bundle, digits_splits, tmp / "release", version=2, class_names=CLASSES,
                               card={"intended_use": f"digits {HOSTILE}", "limitations": "8x8 scans only"})
    odd = Path(shutil.copytree(digits_bundle.root, tmp / "odd"))
    manifest = read_manifest(odd)
    manifest.update(name="digits-odd", model_card={"notes": ["a", "list"], "owner": "lab"},
                    metrics={"compression": {"steps": "not a list"}, "eval": {"accuracy": 0.5, "per_class": []}},
                    lineage={"steps": [7, {"stage": "export", "numeric_error": "big"}], "parent": "x"})
    write_manifest(odd, manifest)
    sign(odd, SigningKey.load(digits_bundle.private_key))
    broker = MosquittoBroker(tmp / "mosquitto").start()
    try:
        with cloud_servers() as start:
            server, admin = start({"data_dir": tmp / "data", "port": 0, "mqtt_url": broker.url,
                                   "trusted_keys": [digits_bundle.public_key], "rollout_interval_seconds": 0.2})
            for root in (digits_bundle.root, released, odd):
                archive = Bundle.open(root).pack(tmp / f"{root.name}.tar.gz")
                answer = admin.post("/api/v1/bundles", content=archive.read_bytes(), headers=GZIP)
                assert answer.status_code == 201, answer.text
            yield server, admin, broker
    finally:
        broker.stop()


def token(admin) -> str:  # noqa: ANN001
    return admin.headers["Authorization"].removeprefix("Bearer ")


def cells(page: str, table_id: str, header: bool = True) -> list[list[str]]:
    """The text of each row's cells of one table (tags stripped, entities decoded), after its header row."""
    table = re.search(rf'<table[^>]*id="{table_id}".*?</table>', page, re.S).group(0)
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S)[int(header):]
    return [[html.unescape(re.sub(r"<[^>]+>", "", cell)).strip()
             for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)] for row in rows]


def test_a_bundle_page_shows_card_metrics_report_targets_and_lineage(stage):
    server, admin, _ = stage
    with signed_in(server.url, token(admin)) as client:
        listing = client.get("/bundles").text
        assert [row[:2] for row in cells(listing, "bundles")] == [["digits-cnn", "2"], ["digits-cnn", "1"],
                                                                  ["digits-odd", "1"]]
        assert cells(listing, "bundles")[0][4] == "onnx, onnxruntime-cpu, native"  # the source, then compiled
        page = client.get("/bundles/digits-cnn/2")
        assert page.status_code == 200
        text = page.text
        assert HOSTILE not in text and SHOWN in text  # shown as text
        card = dict(re.findall(r"<dt>(.*?)</dt><dd[^>]*>(.*?)</dd>", text, re.S))
        assert html.unescape(card["intended use"]) == f"digits {HOSTILE}" and card["limitations"] == "8x8 scans only"
        per_class = cells(text, "metrics-per_class")
        measured = {row[0]: row[1] for row in per_class}  # the first split: the int8 model's evaluation
        assert set(CLASSES) <= set(measured)  # every class under the name the bundle gives it
        assert all(re.fullmatch(r"\d\.\d{3} \(n=\d+\)", measured[name]) for name in CLASSES)
        per_slice = cells(text, "metrics-per_slice")
        assert [row[0] for row in per_slice] == ["heavy_ink", "light_ink"]  # as the signed manifest sorts them
        assert all(re.fullmatch(r"\d\.\d{3} \(n=\d+\)", cell) for row in per_slice for cell in row[1:])
        steps = cells(text, "compression-steps")
        assert [row[0] for row in steps] == ["digits-cnn v1 (baseline)", "1 quantize_static"]
        assert steps[1][2].endswith(" pt") and steps[1][9] != "-"  # change against the float model, agreement
        targets = {row[0]: row for row in cells(text, "targets")}
        for target in ("onnxruntime-cpu", "native"):
            assert targets[target][5] == "yes" and targets[target][7] != "-"  # checked, with its max |err|
            assert "top1_agreement" in targets[target][11]  # the task's quality against the golden outputs
        stages = re.findall(r'class="stage">(.*?)</strong>', text)
        assert stages == ["export", "quantize", "compile", "compile"]
        assert 'id="compression-plot" src="/bundles/digits-cnn/2/compression.png"' in text


def test_the_compression_plot_is_drawn_by_the_server_and_needs_a_session(stage):
    server, admin, _ = stage
    with signed_in(server.url, token(admin)) as client:
        first = client.get("/bundles/digits-cnn/2/compression.png")
        assert first.status_code == 200 and first.headers["content-type"] == "image/png"
        assert first.content.startswith(b"\x89PNG\r\n\x1a\n") and len(first.content) > 20_000
        assert client.get("/bundles/digits-cnn/2/compression.png").content == first.content  # cached
        none = client.get("/bundles/digits-cnn/1/compression.png")
        assert none.status_code == 404 and "has no compression report" in none.text
        assert 'id="no-compression"' in client.get("/bundles/digits-cnn/1").text
    anonymous = httpx.get(f"{server.url}/bundles/digits-cnn/2/compression.png")
    assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/login")


def test_odd_free_form_parts_are_shown_as_missing_never_a_500(stage):
    server, admin, _ = stage
    with signed_in(server.url, token(admin)) as client:
        page = client.get("/bundles/digits-odd/1")
        assert page.status_code == 200, page.text
        assert "compression report is not of the expected shape" in page.text
        assert re.findall(r'class="stage">(.*?)</strong>', page.text) == ["export"]
        assert re.findall(r"<dt>(.*?)</dt>", page.text) == ["owner"]  # the list is no text section
        plot = client.get("/bundles/digits-odd/1/compression.png")
        assert plot.status_code == 422 and "not of the expected shape" in plot.text
        assert client.get("/bundles/nope/1").status_code == 404
        assert client.get("/bundles/digits-cnn/0").status_code == 422  # a version the registry cannot hold
        assert client.get("/bundles").status_code == 200  # still serving


def test_a_device_page_shows_its_backend_and_ota_history_and_a_rollout_updates_live(stage):
    server, admin, broker = stage
    register(admin, "lab", "cam-9")
    publisher = Publisher(broker.port)
    try:
        device = publisher.device("lab", "cam-9")
        device.publish("presence", {"schema": "edgefleet.birth", "v": 1, "fleet": "lab", "device": "cam-9",
                                    "online": True, "connection": time.time_ns(), "model": {"name": "digits-cnn",
                                    "version": 1}, "backend": "native",
                                    "runtime": {"backend": "native", "target": "native", "precision": "fp32",
                                                "fallbacks": [{"entry": "openvino-cpu", "reason": HOSTILE}]}})
        until(lambda: admin.get("/api/v1/devices/cam-9").json()["backend"] == "native", "the birth's backend")
        plan = admin.post("/api/v1/deployments", json={"target": {"devices": ["cam-9"]},
                                                        "bundle": {"name": "digits-cnn", "version": 2}})
        assert plan.status_code == 201, plan.text
        deployment = plan.json()["id"]
        command = until(lambda: admin.get(f"/api/v1/deployments/{deployment}").json()["devices"][0]["command"],
                        "the install command")
        with signed_in(server.url, token(admin)) as client:
            progress = client.get(f"/rollouts/{deployment}/progress").json()
            assert progress["open"] and [d["device"] for d in progress["devices"]] == ["cam-9"]
            for seq, (state, reason) in enumerate((("downloading", None), ("failed", "self_test_failed")), start=1):
                device.publish("status", json.loads(Status("lab", "cam-9", command, deployment, state, reason=reason,
                                                           at=time.time(), seq=seq).to_payload()))
            final = until(lambda: (p := client.get(f"/rollouts/{deployment}/progress").json())["devices"][0]["state"]
                          == "failed" and p, "the failure in the progress")
            assert final["devices"][0]["reason"] == "self_test_failed"
            assert final["waves"][0]["finished"] == 1 and final["waves"][0]["counts"] == {"failed": 1}
            page = client.get("/devices/cam-9").text
            assert cells(page, "device-facts", header=False)[3][0] == "native"
            assert "target native · precision fp32" in page and SHOWN in page and HOSTILE not in page
            ota = cells(page, "ota-deployments")
            assert ota[0][:2] == [deployment, "digits-cnn v2"] and ota[0][4:6] == ["failed", "self_test_failed"]
            events = [row[1:4] for row in cells(page, "ota-events")]
            assert events == [["2", deployment, "failed"], ["1", deployment, "downloading"]]
            assert '<p class="empty" id="accuracy-chart">No data yet.</p>' in page  # no telemetry: nothing to chart
            fleet = client.get("/", params={"q": "cam-9"}).text
            assert cells(fleet, "devices")[0][5] == "native"  # the fleet overview's backend column
            rollout = client.get(f"/rollouts/{deployment}")
            assert "script-src 'self'" in rollout.headers["content-security-policy"]
            assert "'unsafe-inline'" not in rollout.headers["content-security-policy"].split("script-src")[1]
            script = client.get("/static/dashboard/rollout.js")
            assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
            assert "innerHTML" not in script.text and "textContent" in script.text
    finally:
        publisher.close()
