"""The fleet dashboard in a real Chromium (Debian's, through chromedriver) against `edgefleet cloud up` on a
real Mosquitto: a small fleet announces itself and sends telemetry of the real digits model over MQTT, the
real drift monitor opens an alert, and an operator signs in, looks and acts. Screenshots of each page go to
the test's tmp folder; with EDGEFLEET_UPDATE_SCREENSHOTS=1 they are also copied to docs/img/dashboard-*.png
(the README's pictures), so an ordinary test run leaves the work tree as it was. The registry holds the digits
bundle and a release of it (quantized with its compression report, compiled, with hostile class names and
model-card text), and one test drives a rollout whose progress the page shows without reloading."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

pytest.importorskip("selenium", reason="the browser tests need the browser-test extra (make test installs it)")
from selenium.webdriver.common.by import By

from edgefleet.core.bundle import Bundle
from edgefleet.core.ota import Status
from edgefleet.edge_runtime import Predictor
from tests.cloud.api_kit import GZIP
from tests.cloud.cloud_process import cloud_up
from tests.cloud.dashboard_kit import (
    Publisher,
    chromium,
    click_through,
    latency_counts,
    register,
    released_bundle,
    sign_in,
    viewer_token,
    wait_for,
)
from tests.cloud.test_drift import Traffic, brightness, sample
from tests.mosquitto import MosquittoBroker

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
HOSTILE = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
FILLER = 52  # devices beside the named four: 56 in all, two pages of 50
CLASSES = [HOSTILE, *(str(i) for i in range(1, 10))]  # the release's class names


@dataclasses.dataclass
class Stage:
    url: str
    admin: httpx.Client
    admin_token: str
    viewer_token: str
    alert_id: int
    to_approve: str
    to_abort: str
    shots: Path
    mqtt_port: int


@pytest.fixture(scope="module")
def stage(tmp_path_factory, digits_bundle, digits_splits):
    tmp = tmp_path_factory.mktemp("dashboard")
    broker = MosquittoBroker(tmp / "mosquitto").start()
    env = {"EDGEFLEET_DRIFT_INTERVAL_SECONDS": "1", "EDGEFLEET_ROLLOUT_INTERVAL_SECONDS": "0.5"}
    try:
        with cloud_up(tmp, "--mqtt-url", broker.url, "--trust", str(digits_bundle.public_key), "--data",
                      str(tmp / "data"), env=env) as (_process, _lines, url, startup):
            token = next(line.split(": ", 1)[1] for line in startup.splitlines() if line.startswith("admin token: "))
            with httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {token}"}) as admin:
                yield _populate(tmp, url, admin, token, broker, digits_bundle, digits_splits)
    finally:
        broker.stop()


def _populate(tmp: Path, url: str, admin: httpx.Client, token: str, broker: MosquittoBroker, digits_bundle,
              digits_splits) -> Stage:
    release = released_bundle(digits_bundle, digits_splits, tmp / "release", version=2, class_names=CLASSES,
                              card={"intended_use": f"digits {HOSTILE}", "limitations": "8x8 scans only"})
    for root in (digits_bundle.root, release):
        archive = Bundle.open(root).pack(tmp / f"{root.name}.tar.gz")
        assert admin.post("/api/v1/bundles", content=archive.read_bytes(), headers=GZIP).status_code == 201
    named = ["cam-1", "cam-2", "cam-3", "spare-1", "spare-2", "spare-3"]
    for device in named:
        register(admin, "lab", device, "canary" if device.startswith("cam") else None)
    for index in range(FILLER - 2):
        register(admin, "yard", f"unit-{index:03d}")
    publisher = Publisher(broker.port)
    rng = np.random.default_rng(0)
    try:
        cams = {name: publisher.device("lab", name) for name in ("cam-1", "cam-2", "cam-3")}
        for name in ("cam-1", "cam-2"):  # what the agent's birth says: its backend and what it loaded
            cams[name].birth("digits-cnn", backend="onnxruntime",
                             runtime={"target": "onnx", "format": "onnx", "precision": "fp32"})
        cams["cam-3"].birth(HOSTILE)
        with Predictor(digits_bundle.root, trusted_keys=[digits_bundle.public_key]) as predictor:
            traffic = Traffic(predictor)
            first = time.time() - 120  # consecutive 10 s windows, seq by seq, ending about now

            def send(name: str, drifted: bool, slow: bool = False) -> None:
                device = cams[name]
                device.seq += 1
                x = sample(digits_splits, 150, rng)
                end = first + 10 * device.seq
                window = traffic.telemetry(brightness(x, rng) if drifted else x, fleet="lab", device=name,
                                           seq=device.seq, start=end - 10, end=end)
                window = dataclasses.replace(window, latency_ms=latency_counts(rng, 150, slow), errors=int(slow) * 3)
                device.window(window.to_payload())

            for _ in range(3):
                send("cam-1", False)
                send("cam-2", False)
            wait_for(lambda: len(admin.get("/api/v1/devices/cam-1/drift").json()) >= 2, "drift results of cam-1")
            for _ in range(8):
                send("cam-1", True, slow=True)
            alerts = wait_for(lambda: [a for a in admin.get("/api/v1/alerts").json()
                                       if a["scope_id"] == "cam-1" and a["kind"] == "data_drift"],
                              "the data drift alert of cam-1")
            wait_for(lambda: len(admin.get("/api/v1/devices/cam-1/drift").json()) >= 4, "more drift results")
    finally:
        publisher.close()
    plans = []
    waves = {"kind": "waves", "waves": [50, 100], "pause_for_approval": True}
    for devices, strategy in ((["spare-1", "spare-2"], waves), (["spare-3"], {})):
        response = admin.post("/api/v1/deployments", json={
            "target": {"devices": devices}, "bundle": {"name": "digits-cnn", "version": 1}, "strategy": strategy})
        assert response.status_code == 201, response.text
        plans.append(response.json()["id"])
    shots = tmp / "screenshots"
    shots.mkdir()
    return Stage(url, admin, token, viewer_token(tmp / "data"), alerts[0]["id"], plans[0], plans[1], shots,
                 broker.port)


@pytest.fixture(scope="module")
def browser(stage):
    with chromium(stage.shots.parent) as driver:
        yield driver


def screenshot(driver, stage: Stage, name: str) -> None:
    """The whole page (up to 1,600 px high) as PNG, in the test's folder (and in docs/img when asked)."""
    path = stage.shots / f"{name}.png"
    width, height = driver.get_window_size()["width"], driver.get_window_size()["height"]
    page_height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(max(page_height + 100, 400), 1600))
    try:
        assert driver.save_screenshot(str(path))
    finally:
        driver.set_window_size(width, height)
    assert path.stat().st_size > 1000
    if os.environ.get("EDGEFLEET_UPDATE_SCREENSHOTS") == "1":
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS_IMG / f"dashboard-{name}.png")


def keep(png: bytes, stage: Stage, name: str) -> None:
    """An element's screenshot, kept like a page's."""
    path = stage.shots / f"{name}.png"
    path.write_bytes(png)
    assert path.stat().st_size > 1000
    if os.environ.get("EDGEFLEET_UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(path, DOCS_IMG / f"dashboard-{name}.png")


def texts(driver, selector: str) -> list[str]:
    return [element.text for element in driver.find_elements(By.CSS_SELECTOR, selector)]


def session_cookie(driver) -> dict:
    return next(c for c in driver.get_cookies() if c["name"] == "edgefleet_session")


def test_a_page_without_the_cookie_redirects_to_sign_in_and_back(browser, stage):
    browser.delete_all_cookies()
    browser.get(f"{stage.url}/rollouts")
    assert browser.current_url == f"{stage.url}/login?next=%2Frollouts"
    screenshot(browser, stage, "login")
    browser.find_element(By.ID, "token").send_keys(stage.admin_token)
    click_through(browser, browser.find_element(By.ID, "sign-in"))
    assert browser.current_url == f"{stage.url}/rollouts"
    cookie = session_cookie(browser)
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert stage.admin_token not in cookie["value"] and stage.admin_token not in browser.page_source
    assert stage.admin_token not in browser.current_url
    assert browser.execute_script("return document.cookie") == ""  # HttpOnly: no script reads it


def test_fleet_overview_pages_and_searches_on_the_server(browser, stage):
    sign_in(browser, stage.url, stage.admin_token)
    browser.get(f"{stage.url}/")
    assert browser.find_element(By.ID, "total").text == f"{FILLER + 4} device(s) · page 1 of 2"
    rows = browser.find_elements(By.CSS_SELECTOR, "#devices tr")[1:]
    assert len(rows) == 50
    cam1 = next(row for row in rows if "cam-1" in row.text)
    assert "online" in cam1.text and "digits-cnn v1" in cam1.text
    assert cam1.find_element(By.CSS_SELECTOR, "td.backend").text == "onnxruntime"
    assert cam1.find_elements(By.CSS_SELECTOR, "td.alert")[0].text == str(len(cam1_alerts(stage)))  # open ones
    assert cam1.find_element(By.CSS_SELECTOR, "td.rpm").text == "900"  # 150 requests in its last 10 s window
    screenshot(browser, stage, "fleet")
    click_through(browser, browser.find_element(By.ID, "next"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#devices tr")) - 1 == FILLER + 4 - 50
    browser.get(f"{stage.url}/?q=cam")
    assert texts(browser, "a.device") == ["cam-1", "cam-2", "cam-3"]


def test_a_device_with_a_drift_alert_shows_it_on_its_chart(browser, stage):
    sign_in(browser, stage.url, stage.admin_token)
    browser.get(f"{stage.url}/devices/cam-1")
    chart = browser.find_element(By.CSS_SELECTOR, "svg#drift-chart")
    markers = chart.find_elements(By.CSS_SELECTOR, "g.alert-marker")
    marked = {m.get_attribute("data-alert") for m in markers}  # data drift, and sequential drift if it opened
    assert str(stage.alert_id) in marked and marked == {str(a["id"]) for a in cam1_alerts(stage)}
    assert chart.find_elements(By.CSS_SELECTOR, "line.threshold")
    lines = chart.find_elements(By.CSS_SELECTOR, "polyline.series")
    assert 1 <= len(lines) <= 8 and all(len(line.get_attribute("points").split()) >= 2 for line in lines)
    latency = browser.find_element(By.CSS_SELECTOR, "svg#latency-chart")
    assert [p.get_attribute("data-name") for p in latency.find_elements(By.CSS_SELECTOR, "polyline")] == ["p50", "p99"]
    assert browser.find_element(By.CSS_SELECTOR, "svg#traffic-chart")
    assert texts(browser, f"#alert-{stage.alert_id} td.alert") == ["open"]
    screenshot(browser, stage, "device")


def test_a_device_page_charts_its_accuracy_estimated_without_labels(browser, stage):
    sign_in(browser, stage.url, stage.viewer_token)
    browser.get(f"{stage.url}/devices/cam-2")  # three 10 s windows of clean digits, no labels
    chart = browser.find_element(By.CSS_SELECTOR, "svg#accuracy-chart")
    lines = {line.get_attribute("data-name"): line.get_attribute("points").split()
             for line in chart.find_elements(By.CSS_SELECTOR, "polyline.series")}
    assert lines["measured"] == [] and len(lines["estimated"]) == 3  # one point per window, none measured
    reference = chart.find_element(By.CSS_SELECTOR, "line.threshold title").get_attribute("textContent")
    assert reference.startswith("reference 0.")  # the calibration data's accuracy, drawn as the line to compare


def test_an_alert_is_acknowledged_with_its_evidence(browser, stage):
    sign_in(browser, stage.url, stage.admin_token)
    browser.get(f"{stage.url}/alerts")
    row = browser.find_element(By.ID, f"alert-{stage.alert_id}")
    assert "signals" in row.find_element(By.CSS_SELECTOR, "details pre").get_attribute("textContent")
    screenshot(browser, stage, "alerts")
    click_through(browser, row.find_element(By.CSS_SELECTOR, "button.ack"))
    assert browser.find_element(By.ID, "flash").text == "Alert acknowledged."
    assert "acknowledged by admin" in browser.find_element(By.ID, f"alert-{stage.alert_id}").text


def cam1_alerts(stage: Stage) -> list[dict]:
    return [a for a in stage.admin.get("/api/v1/alerts?status=open").json() if a["scope_id"] == "cam-1"]


def deployment(stage: Stage, deployment_id: str) -> dict:
    return stage.admin.get(f"/api/v1/deployments/{deployment_id}").json()


def test_a_viewer_sees_no_buttons_and_its_posts_are_refused(browser, stage):
    sign_in(browser, stage.url, stage.viewer_token)
    browser.get(f"{stage.url}/rollouts")
    assert browser.find_element(By.ID, f"rollout-{stage.to_approve}")
    assert not browser.find_elements(By.CSS_SELECTOR, "button.approve, button.abort")
    csrf = browser.find_element(By.CSS_SELECTOR, "form[action='/logout'] input[name=csrf]").get_attribute("value")
    cookies = {"edgefleet_session": session_cookie(browser)["value"]}
    unacknowledged = [a["id"] for a in stage.admin.get("/api/v1/alerts").json() if a["id"] != stage.alert_id]
    assert unacknowledged  # the fleet's alert: an admin would see its button
    browser.get(f"{stage.url}/alerts")
    assert browser.find_element(By.ID, f"alert-{unacknowledged[0]}")
    assert not browser.find_elements(By.CSS_SELECTOR, "button.ack")
    with httpx.Client(base_url=stage.url, cookies=cookies) as viewer:
        for action in (f"/rollouts/{stage.to_approve}/approve", f"/rollouts/{stage.to_approve}/abort",
                       f"/alerts/{unacknowledged[0]}/acknowledge"):
            answer = viewer.post(action, data={"csrf": csrf}, headers={"Origin": stage.url})
            assert answer.status_code == 403 and "viewer" in answer.text
    browser.get(f"{stage.url}/alerts")
    assert "acknowledged" not in browser.find_element(By.ID, f"alert-{unacknowledged[0]}").text
    refused = httpx.post(f"{stage.url}/api/v1/deployments/{stage.to_approve}/approve",
                         headers={"Authorization": f"Bearer {stage.viewer_token}"})
    assert refused.status_code == 403
    assert deployment(stage, stage.to_approve)["approved"] is False


def test_cross_site_posts_are_refused(browser, stage):
    sign_in(browser, stage.url, stage.admin_token)
    browser.get(f"{stage.url}/rollouts")
    csrf = browser.find_element(By.CSS_SELECTOR, "form[action='/logout'] input[name=csrf]").get_attribute("value")
    cookies = {"edgefleet_session": session_cookie(browser)["value"]}
    target = f"/rollouts/{stage.to_abort}/abort"
    with httpx.Client(base_url=stage.url, cookies=cookies) as client:
        for headers, data in (({}, {"csrf": csrf}), ({"Origin": "http://evil.example"}, {"csrf": csrf}),
                              ({"Origin": stage.url}, {}), ({"Origin": stage.url}, {"csrf": "forged"})):
            answer = client.post(target, data=data, headers=headers)
            assert answer.status_code == 403, (headers, data, answer.text)
    # a page of another origin that posts the form: the browser sends no SameSite=Strict cookie
    browser.get("data:text/html,<form id=f method=post action='" + stage.url + target + "'>"
                "<input name=csrf value=x></form><script>document.getElementById('f').submit()</script>")
    wait_for(lambda: browser.current_url.startswith(stage.url) and browser.find_elements(By.ID, "error"),
             "the answer to the cross-site form post")
    assert browser.find_element(By.ID, "error").text == "not signed in"
    assert deployment(stage, stage.to_abort)["state"] != "aborted"


def test_an_admin_approves_and_aborts_rollouts(browser, stage):
    sign_in(browser, stage.url, stage.admin_token)
    browser.get(f"{stage.url}/rollouts")
    click_through(browser, browser.find_element(By.CSS_SELECTOR, f"#rollout-{stage.to_approve} button.approve"))
    assert browser.find_element(By.ID, "flash").text == "Deployment approved."
    assert deployment(stage, stage.to_approve)["approved"] is True
    click_through(browser, browser.find_element(By.CSS_SELECTOR, f"#rollout-{stage.to_abort} button.abort"))
    assert browser.find_element(By.ID, "flash").text == "Deployment aborted."
    assert deployment(stage, stage.to_abort)["state"] == "aborted"
    assert "aborted" in browser.find_element(By.CSS_SELECTOR, f"#rollout-{stage.to_abort} td.state").text
    screenshot(browser, stage, "rollouts")
    click_through(browser, browser.find_element(By.CSS_SELECTOR, f"#rollout-{stage.to_approve} a.rollout"))
    plan = deployment(stage, stage.to_approve)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#waves tr")) - 1 == len(plan["waves"]) == 2
    rows = [row.text.split()[:3] for row in browser.find_elements(By.CSS_SELECTOR, "#rollout-devices tr")[1:]]
    assert rows == [[d["device"], str(d["wave"]), d["state"]] for d in plan["devices"]]
    screenshot(browser, stage, "rollout")


def test_a_hostile_model_name_is_shown_as_text(browser, stage):
    sign_in(browser, stage.url, stage.admin_token)
    for page, selector in ((f"{stage.url}/?q=cam-3", "#devices td.model"), (f"{stage.url}/devices/cam-3", "td.model")):
        browser.get(page)
        assert texts(browser, selector) == [f"{HOSTILE} v1"]
        assert not browser.find_elements(By.CSS_SELECTOR, "main script, main img")
        assert browser.execute_script("return window.__pwned === undefined")
    logs = browser.get_log("browser")
    blocked = [entry["message"] for entry in logs if "Content Security Policy" in entry["message"]]
    assert blocked == []  # nothing was even tried: the markup arrived as text, not held back by the policy


def test_sign_out_ends_the_session(browser, stage):
    sign_in(browser, stage.url, stage.admin_token)
    old = session_cookie(browser)["value"]
    click_through(browser, browser.find_element(By.ID, "logout"))
    assert browser.find_element(By.ID, "flash").text == "Signed out."
    answer = httpx.get(f"{stage.url}/alerts", cookies={"edgefleet_session": old})
    assert answer.status_code == 303 and answer.headers["location"] == "/login?next=%2Falerts"


def test_a_bundle_shows_its_model_card_and_compression_report_with_hostile_text_as_text(browser, stage):
    sign_in(browser, stage.url, stage.viewer_token)  # reading the registry needs no admin
    browser.get(f"{stage.url}/bundles")
    assert [row.text.split()[:2] for row in browser.find_elements(By.CSS_SELECTOR, "#bundles tr")[1:]] == [
        ["digits-cnn", "2"], ["digits-cnn", "1"]]
    screenshot(browser, stage, "registry")
    click_through(browser, browser.find_element(By.CSS_SELECTOR, "a.bundle[href='/bundles/digits-cnn/2']"))
    assert browser.find_element(By.ID, "bundle-id").text == "digits-cnn v2"
    card = dict(zip(texts(browser, "#model-card dt"), texts(browser, "#model-card dd"), strict=True))
    assert card["intended use"] == f"digits {HOSTILE}" and card["limitations"] == "8x8 scans only"
    classes = texts(browser, "#metrics-per_class td.group")
    assert HOSTILE in classes  # the class name as the letters it is
    assert not browser.find_elements(By.CSS_SELECTOR, "main script, main img:not(#compression-plot)")
    assert browser.execute_script("return window.__pwned === undefined")
    plot = browser.find_element(By.ID, "compression-plot")
    wait_for(lambda: browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", plot),
             "the compression plot to load")
    assert browser.execute_script("return arguments[0].naturalWidth", plot) >= 1000  # the server's PNG, drawn
    browser.execute_script("arguments[0].scrollIntoView()", plot)
    keep(plot.screenshot_as_png, stage, "compression")
    assert [row.text.split()[0] for row in browser.find_elements(By.CSS_SELECTOR, "#compression-steps tr")[1:]] == [
        "digits-cnn", "1"]
    targets = {row.find_element(By.TAG_NAME, "td").text: row
               for row in browser.find_elements(By.CSS_SELECTOR, "tr.target")}
    assert {"onnxruntime-cpu", "native"} <= set(targets)
    assert "top1_agreement" in targets["native"].find_element(By.CSS_SELECTOR, "td.quality").text
    assert texts(browser, "#lineage .stage") == ["export", "quantize", "compile", "compile"]
    screenshot(browser, stage, "bundle")
    blocked = [e["message"] for e in browser.get_log("browser") if "Content Security Policy" in e["message"]]
    assert blocked == []


def test_rollout_progress_updates_without_reload_and_the_device_page_shows_backend_and_ota_history(browser, stage):
    register(stage.admin, "lab", "live-1")
    publisher = Publisher(stage.mqtt_port)
    try:
        device = publisher.device("lab", "live-1")
        device.birth("digits-cnn", backend="openvino", runtime={"target": "openvino-cpu", "precision": "int8"})
        wait_for(lambda: stage.admin.get("/api/v1/devices/live-1").json()["backend"] == "openvino", "the birth")
        plan = stage.admin.post("/api/v1/deployments", json={"target": {"devices": ["live-1"]},
                                                             "bundle": {"name": "digits-cnn", "version": 2}})
        assert plan.status_code == 201, plan.text
        deployment = plan.json()["id"]
        command = wait_for(lambda: deployment_of(stage, deployment)["devices"][0]["command"], "the install command")
        sign_in(browser, stage.url, stage.admin_token)
        browser.get(f"{stage.url}/rollouts/{deployment}")
        browser.execute_script("window.__same_page = 1")  # gone if the page reloads
        row = "#rollout-devices tr[data-device='live-1']"
        wait_for(lambda: int(browser.find_element(By.ID, "live").get_attribute("data-polls")) >= 1, "a first poll")
        for seq, state in enumerate(("downloading", "verifying"), start=1):
            device.publish("status", json.loads(Status("lab", "live-1", command, deployment, state, at=time.time(),
                                                       seq=seq).to_payload()))
            wait_for(lambda state=state: texts(browser, f"{row} td.state") == [state], f"{state} on the page")
        screenshot(browser, stage, "rollout-live")
        device.publish("status", json.loads(Status("lab", "live-1", command, deployment, "failed",
                                                   reason="self_test_failed", at=time.time(), seq=3).to_payload()))
        wait_for(lambda: texts(browser, f"{row} td.state") == ["failed"], "failed on the page")
        assert texts(browser, f"{row} td.reason") == ["self_test_failed"]
        wait_for(lambda: browser.find_element(By.CSS_SELECTOR, "#summary .state").text == "aborted", "the abort")
        assert browser.find_element(By.CSS_SELECTOR, "#wave-1 .finished").text == "1 of 1"
        assert not browser.find_element(By.CSS_SELECTOR, "form.abort").is_displayed()  # nothing left to abort
        assert browser.execute_script("return window.__same_page") == 1  # updated in place, never reloaded
        assert browser.find_element(By.ID, "live").text == "finished: aborted"
    finally:
        publisher.close()
    click_through(browser, browser.find_element(By.CSS_SELECTOR, f"{row} a"))
    assert browser.find_element(By.ID, "backend").text == "openvino"
    assert browser.find_element(By.ID, "runtime").text == "target openvino-cpu · precision int8"
    ota = browser.find_elements(By.CSS_SELECTOR, "#ota-deployments tr")[1:]
    assert [cell.text for cell in ota[0].find_elements(By.TAG_NAME, "td")][:6] == [
        deployment, "digits-cnn v2", "aborted", "1", "failed", "self_test_failed"]
    assert [row.find_element(By.CSS_SELECTOR, "td.state").text
            for row in browser.find_elements(By.CSS_SELECTOR, "#ota-events tr")[1:]] == ["failed", "verifying",
                                                                                          "downloading"]
    assert browser.find_element(By.ID, "accuracy-chart").text == "No data yet."  # it sent no telemetry
    screenshot(browser, stage, "device-ota")
    browser.get(f"{stage.url}/?q=live-1")
    assert texts(browser, "#devices td.backend") == ["openvino"]


def deployment_of(stage: Stage, deployment_id: str) -> dict:
    return stage.admin.get(f"/api/v1/deployments/{deployment_id}").json()
